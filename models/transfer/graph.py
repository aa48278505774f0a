"""``cd-graph``: the target popularity prior plus the audience of the user's support items.

Why not a learned user vector
-----------------------------
On Douban books/music the learned transfer models (shared embeddings, EMCDR, PTUPCDR,
adversarial, LightGCN) fit the ~1,250 overlap users' episodes almost perfectly (NDCG@10 .72 on
training users at 300 steps, .10 at step 0) while held-out users fall from the popularity level
(.09) to .05-.07: the user·item term grows to 1.3-2.4 times the spread of the item bias and is
memorised noise. ``kindling transfer --diagnose`` prints these figures. This learner has no free
per-item or per-user parameters: what it knows is the training interaction graph and a handful of
hyper-parameters chosen on held-out training users (:func:`fit_graph`).

The score (one graph hop through the training users, then a Dirichlet prior)
-----------------------------------------------------------------------------
For a user with support items ``S`` (bank rows) and an item ``j`` of domain ``d``::

    w_u   = Σ_{i ∈ S} x_ui · deg(i)^-α · deg_e(u)^-β · (1 if dom(i) ≠ d else η)
    M_j   = Σ_u w_u · x_uj                      (the support's audience, weighted)
    s_j   = log(M_j + λ·T·P_d(j))  + 1e-6 · log(1 + count_j)   (the count breaks ties)

``x`` is the training user × item graph (both domains), ``deg(i)`` an item's degree, ``deg_e(u)``
the bridging user's degree in the domain of the evidence item ``i`` (a user who rated 500 books
says less about any one of them), ``η`` weighs same-domain evidence (a target event) against
cross-domain evidence (a source event), ``P_d`` is the domain's popularity distribution (over
all training users, or only those active in both domains) and ``T`` the mean mass one source
event sends to the target domain in this graph, so ``λ`` reads as "the prior weighs as much as λ
source events" whatever the graph's size and the exponents.

* 0 events: ``M = 0`` and the ranking is the popularity prior.
* Source events only: the target items the support's audience consumed, mixed with the prior in
  proportion to the evidence mass (gating by evidence strength is the formula itself: 3 obscure
  books move the ranking less than 20 books with a large shared audience).
* Target events: item-to-item co-occurrence within the target domain (weight ``η``), which is
  item-kNN through users.
* ``smooth`` > 0 first spreads the source profile over its source-domain neighbours
  (``q + smooth·q·RᵀR``, ``R`` the degree-normalised source graph of *all* training users,
  source-only ones included), which densifies short or niche profiles.
* ``target_smooth`` > 0 then spreads the target mass one random-walk step over the target graph
  of all training users (item → its users → their items, mass preserving): ``M + γ·M·W``. The
  cross-domain hop only reaches what ~a thousand bridging users consumed; the walk also reaches
  what the target domain's own audience pairs with it (target-only users included).

Ratings: the item's mean rating shrunk to the global mean (``item_shrink`` pseudo-ratings) plus
``rating_weight`` × the user's shrunk mean residual over every rated support event, both domains
(a generous rater of books tends to rate music generously).

Buffers: the graph's edges (``edge_user``, ``edge_item`` = vocabulary rows) and per-item rating
sums/counts, sized by ``config.extra["graph_users"/"graph_edges"]``; hyper-parameters live in
``config.extra["graph"]``. Both are in the checkpoint, so a saved model serves as trained.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.base import ItemBank, Learner, LearnerConfig, State, SupportBatch, create, register
from models.metrics import ndcg_at_k
from models.training import UserHistory
from models.transfer.episodes import (
    TransferEpisodes,
    blocked,
    relevance,
    transfer_episodes,
)
from models.transfer.learners import TARGET, domain_of

_EPS = 1e-12


@dataclass(frozen=True)
class GraphHyper:
    """Hyper-parameters of :class:`GraphTransferLearner` (module docstring)."""

    alpha: float = 0.5  # support item weight deg(i)^-alpha
    beta: float = 0.5  # bridging user weight deg_e(u)^-beta
    smooth: float = 0.0  # source-profile smoothing through the source item graph
    target_smooth: float = 0.0  # γ: one random-walk step of the target mass over the target graph
    prior: float = 3.0  # λ: the prior weighs as much as this many average source events
    prior_overlap: bool = False  # prior from users active in both domains only
    same_domain: float = 1.0  # η: weight of same-domain support evidence
    rating_weight: float = 1.0  # ρ: weight of the user's rating offset
    rating_shrink: float = 3.0  # pseudo-events shrinking the user's rating offset to 0
    item_shrink: float = 5.0  # pseudo-ratings shrinking an item's mean to the global mean


@register
class GraphTransferLearner(Learner):
    """Popularity prior + one graph hop from the support through the training users."""

    name = "cd-graph"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        n_edges = int(config.extra.get("graph_edges", 0))
        self.n_users = int(config.extra.get("graph_users", 0))
        self.hyper = GraphHyper(**config.extra.get("graph", {}))
        n = max(config.n_items, 1)
        self.register_buffer("edge_user", torch.zeros(n_edges, dtype=torch.long))
        self.register_buffer("edge_item", torch.zeros(n_edges, dtype=torch.long))
        self.register_buffer("rating_sum", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("rating_count", torch.zeros(n, dtype=torch.float64))

    # ---- construction -------------------------------------------------------------------------
    @staticmethod
    def graph_config(config: LearnerConfig, edge_user: Tensor, hyper: GraphHyper) -> LearnerConfig:
        """``config`` with the graph sizes and ``hyper`` in ``extra`` (call before creating)."""
        n_users = int(edge_user.max()) + 1 if edge_user.numel() else 0
        extra = {**config.extra, "graph_edges": int(edge_user.numel()), "graph_users": n_users,
                 "graph": asdict(hyper)}
        return replace(config, extra=extra)

    def set_graph(self, edge_user: Tensor, edge_item: Tensor, rating_sum: Tensor,
                  rating_count: Tensor) -> None:
        """Load the training graph and rating sums (vocabulary rows) once, before serving."""
        if edge_user.shape != self.edge_user.shape or edge_item.shape != self.edge_item.shape:
            raise ValueError("graph size differs from config.extra['graph_edges']")
        with torch.no_grad():
            self.edge_user.copy_(edge_user.long())
            self.edge_item.copy_(edge_item.long())
            self.rating_sum.copy_(rating_sum.double())
            self.rating_count.copy_(rating_count.double())

    # ---- serving protocol ---------------------------------------------------------------------
    def prepare(self, bank: ItemBank) -> State:
        """The graph over the bank's rows: (users × items) sparse matrices and item statistics."""
        with torch.inference_mode():
            return self._prepare(bank)

    def _prepare(self, bank: ItemBank) -> State:
        hp = self.hyper
        n, n_users = bank.size, max(self.n_users, 1)
        dom = domain_of(bank)
        known = bank.id_index >= 0
        row_of_vocab = torch.full((max(self.config.n_items, 1),), -1, dtype=torch.long)
        row_of_vocab[bank.id_index[known]] = torch.arange(n)[known]
        items = row_of_vocab[self.edge_item] if self.edge_item.numel() else self.edge_item
        keep = items >= 0
        users, items = self.edge_user[keep], items[keep]
        is_tgt = dom[items] == TARGET
        ones = torch.ones(users.shape[0], dtype=torch.float32)
        deg_item = torch.zeros(n).index_add_(0, items, ones)
        deg_src = torch.zeros(n_users).index_add_(0, users, (~is_tgt).float())
        deg_tgt = torch.zeros(n_users).index_add_(0, users, is_tgt.float())
        deg_e = torch.where(is_tgt, deg_tgt[users], deg_src[users]).clamp(min=1.0)
        # evidence in (item -> user): each item's users, weighted by their degree in the
        # item's domain, as CSR rows; audience out (user -> item): a sparse (N, U) matrix
        in_val = deg_e.pow(-hp.beta)
        item_weight = deg_item.clamp(min=1.0).pow(-hp.alpha)
        # T: the target mass one source event sends, averaged over the source edges
        src = ~is_tgt
        sent = item_weight[items[src]] * in_val[src] * deg_tgt[users[src]]
        per_event = max(float(sent.sum() / src.sum().clamp(min=1)) if bool(src.any()) else 1.0,
                        _EPS)
        out: State = {
            **_csr("in", items, users, in_val, n),
            "a_out": _sparse(items, users, ones, (n, n_users)),
            "item_weight": item_weight,
            "domain": dom,
            "prior": hp.prior * per_event * prior_share(users, items, dom, n_users,
                                                        overlap=hp.prior_overlap),
            "tiebreak": 1e-6 * torch.log1p(deg_item),
            "rating_mean": self.rating_means(bank, hp.item_shrink),
            "event_mass": torch.tensor(per_event),
        }
        if hp.smooth > 0:  # R: the source graph of all users, symmetric degree normalisation
            val = (deg_src[users[src]] * deg_item[items[src]]).clamp(min=1.0).rsqrt()
            out.update(_csr("smooth", items[src], users[src], val, n))
            out["smooth_t"] = _sparse(items[src], users[src], val, (n, n_users))
            out["a_in"] = _sparse(users, items, in_val, (n_users, n))
        if hp.target_smooth > 0:
            out.update(target_walk(users[is_tgt], items[is_tgt], deg_item, deg_tgt, n, n_users))
        return out

    def rating_means(self, bank: ItemBank, item_shrink: float) -> Tensor:
        """(N,) item mean ratings shrunk to the global mean by ``item_shrink`` pseudo-ratings."""
        n_rated = float(self.rating_count.sum())
        mid = 0.5 * (self.config.rating_min + self.config.rating_max)
        glob = float(self.rating_sum.sum()) / n_rated if n_rated else mid
        k = item_shrink
        vocab_mean = (self.rating_sum + k * glob) / (self.rating_count + k)
        known = bank.id_index >= 0
        out = torch.full((bank.size,), glob, dtype=torch.float64)
        out[known] = vocab_mean[bank.id_index[known]]
        return out.float()

    def init_state(self, profiles: Tensor) -> State:
        b, u = profiles.shape[0], max(self.n_users, 1)
        return {"w_src": torch.zeros(b, u), "w_tgt": torch.zeros(b, u),
                "rate_off": torch.zeros(b)}

    def adapt(self, state: State, support: SupportBatch, prepared: State) -> State:
        with torch.inference_mode():
            return self._adapt(state, support, prepared)

    def _adapt(self, state: State, support: SupportBatch, prepared: State) -> State:
        if support.items.shape[1] == 0 or not bool(support.mask.any()):
            return dict(state)
        b, n_users = support.batch_size, max(self.n_users, 1)
        mask = support.mask
        items = support.items[mask]
        rows = torch.arange(b)[:, None].expand_as(support.items)[mask]
        weight = prepared["item_weight"][items]
        tgt = prepared["domain"][items] == TARGET
        src = ~tgt
        w_src = _gather(prepared, "in", items[src], weight[src], rows[src], b, n_users)
        w_tgt = _gather(prepared, "in", items[tgt], weight[tgt], rows[tgt], b, n_users)
        if self.hyper.smooth > 0 and "smooth_t" in prepared and bool(src.any()):
            w_src = w_src + self.hyper.smooth * self._smoothed_evidence(
                prepared, items[src], weight[src], rows[src], b, n_users)
        return {"w_src": state["w_src"] + w_src, "w_tgt": state["w_tgt"] + w_tgt,
                "rate_off": rating_offset(support, prepared["rating_mean"],
                                          self.hyper.rating_shrink)}

    @staticmethod
    def _smoothed_evidence(prepared: State, items: Tensor, weight: Tensor, rows: Tensor, b: int,
                           n_users: int) -> Tensor:
        """User weights of the source profile spread over its neighbours, ``q·RᵀR`` (scaled to
        the profile's own mass) pushed through the evidence hop."""
        reach = _gather(prepared, "smooth", items, weight, rows, b, n_users)  # (B, U) = q·Rᵀ
        spread = torch.sparse.mm(prepared["smooth_t"], reach.T)  # (N, B) = (q·RᵀR)ᵀ
        mass = torch.zeros(b).index_add_(0, rows, weight)
        spread = spread * (mass / spread.sum(0).clamp(min=_EPS))[None, :]
        return torch.sparse.mm(prepared["a_in"], spread).T

    def evidence_mass(self, state: State, prepared: State, a_out: Tensor | None = None
                      ) -> tuple[Tensor, Tensor]:
        """``(M_src, M_tgt)``: each user's audience mass over the items from source and from
        target support evidence, (B, N) each (``a_out``: the audience matrix of a subset of the
        items, rows in that order, for a search over one domain)."""
        b = state["w_src"].shape[0]
        both = torch.sparse.mm(prepared["a_out"] if a_out is None else a_out,
                               torch.cat([state["w_src"], state["w_tgt"]]).T).T
        if a_out is None and self.hyper.target_smooth > 0 and "walk_in" in prepared:
            both = both + self.hyper.target_smooth * walk(both, prepared)
        return both[:b], both[b:]

    def score(self, state: State, prepared: State) -> Tensor:
        with torch.inference_mode():
            m_src, m_tgt = self.evidence_mass(state, prepared)
            return self.score_from_mass(m_src, m_tgt, prepared)

    def score_from_mass(self, m_src: Tensor, m_tgt: Tensor, prepared: State) -> Tensor:
        return graph_scores(m_src, m_tgt, prepared["domain"] == TARGET, prepared["prior"],
                            prepared["tiebreak"], self.hyper.same_domain)

    def predict_rating(self, state: State, prepared: State, items: Tensor) -> Tensor:
        with torch.inference_mode():
            pred = prepared["rating_mean"][items] + self.hyper.rating_weight * state["rate_off"][
                :, None]
            return pred.clamp(self.config.rating_min, self.config.rating_max)


def _sparse(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape,
                                   check_invariants=False).coalesce()


def _csr(name: str, rows: Tensor, cols: Tensor, values: Tensor, n_rows: int) -> State:
    """A sparse matrix as CSR parts ``<name>_ptr``, ``<name>_col``, ``<name>_val``: row ``r``'s
    entries are ``[ptr[r], ptr[r + 1])``."""
    order = torch.argsort(rows, stable=True)
    ptr = torch.zeros(n_rows + 1, dtype=torch.long)
    ptr[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return {f"{name}_ptr": ptr, f"{name}_col": cols[order], f"{name}_val": values[order]}


def _gather(prepared: State, name: str, rows: Tensor, weight: Tensor, batch: Tensor, n_batch: int,
            n_cols: int) -> Tensor:
    """Dense (n_batch, n_cols): ``Σ weight · matrix[row]`` per batch row, over the CSR matrix
    ``name`` (:func:`_csr`): cost proportional to the entries touched, not to the matrix."""
    ptr, col, val = prepared[f"{name}_ptr"], prepared[f"{name}_col"], prepared[f"{name}_val"]
    out = torch.zeros(n_batch, n_cols)
    start = ptr[rows]
    length = ptr[rows + 1] - start
    total = int(length.sum()) if rows.numel() else 0
    if total == 0:
        return out
    pick = torch.repeat_interleave(torch.arange(rows.numel()), length)
    entry = torch.arange(total) - (length.cumsum(0) - length)[pick] + start[pick]
    out.index_put_((batch[pick], col[entry]), val[entry] * weight[pick], accumulate=True)
    return out


def graph_scores(m_src: Tensor, m_tgt: Tensor, is_target: Tensor | None, prior: Tensor,
                 tiebreak: Tensor, same_domain: float) -> Tensor:
    """``log(M + prior) + tiebreak`` with ``M`` the cross-domain evidence mass plus
    ``same_domain`` times the same-domain one, per item domain (``is_target`` None: every item
    is a target item). ``m_*`` (B, N) or (B, N_sub) with the other arguments restricted alike."""
    m_src, m_tgt = m_src.double(), m_tgt.double()  # float32 would lose the tie-break at log(ε)
    if is_target is None:
        mass = m_src + same_domain * m_tgt
    else:
        mass = torch.where(is_target[None, :], m_src + same_domain * m_tgt,
                           m_tgt + same_domain * m_src)
    return torch.log(mass + prior.double() + _EPS) + tiebreak.double()


def target_walk(users: Tensor, items: Tensor, deg_item: Tensor, deg_user: Tensor, n: int,
                n_users: int, rows: Tensor | None = None) -> State:
    """The random walk item → user → item over the target edges (``users``, ``items``): the
    ``walk_in`` (U, N) step spreads an item's mass evenly over its users, ``walk_out`` (N, U) a
    user's evenly over their items. ``rows``: renumber items to positions among these rows."""
    cols = items if rows is None else torch.searchsorted(rows, items)
    size = n if rows is None else rows.numel()
    return {
        "walk_in": _sparse(users, cols, deg_item[items].clamp(min=1.0).reciprocal(),
                           (n_users, size)),
        "walk_out": _sparse(cols, users, deg_user[users].clamp(min=1.0).reciprocal(),
                            (size, n_users)),
    }


def walk(mass: Tensor, prepared: State) -> Tensor:
    """One random-walk step (:func:`target_walk`) of every row of ``mass`` (B, N)."""
    return torch.sparse.mm(prepared["walk_out"], torch.sparse.mm(prepared["walk_in"],
                                                                  mass.T.contiguous())).T


def prior_share(users: Tensor, items: Tensor, domain: Tensor, n_users: int, *,
                overlap: bool) -> Tensor:
    """(N,) each item's share of its domain's interactions over the graph's edges (``users``,
    ``items`` = bank rows), counting every user or (``overlap``) only users in both domains."""
    n = domain.shape[0]
    is_tgt = domain[items] == TARGET
    counted = torch.ones(users.shape[0])
    if overlap:
        in_src = torch.zeros(n_users).index_add_(0, users, (~is_tgt).float()) > 0
        in_tgt = torch.zeros(n_users).index_add_(0, users, is_tgt.float()) > 0
        counted = (in_src & in_tgt)[users].float()
    count = torch.zeros(n).index_add_(0, items, counted)
    total = torch.zeros(2).index_add_(0, is_tgt.long(), counted)
    return count / torch.where(domain == TARGET, total[1], total[0]).clamp(min=_EPS)


def rating_offset(support: SupportBatch, rating_mean: Tensor, shrink: float) -> Tensor:
    """(B,) mean residual ``rating - item mean`` over the rated support events (both domains),
    shrunk to 0 by ``shrink`` pseudo-events."""
    rated = support.mask & ~torch.isnan(support.ratings)
    resid = torch.where(rated, torch.nan_to_num(support.ratings) - rating_mean[support.items], 0.0)
    return resid.sum(1) / (rated.sum(1).float() + shrink)


# ------------------------------------------------------------------------------------ fitting


def graph_data(histories: Sequence[UserHistory], bank: ItemBank) -> tuple[Tensor, ...]:
    """``(edge_user, edge_item, rating_sum, rating_count)`` of ``histories`` (vocabulary rows;
    a user's repeated item is one edge; items unknown to the vocabulary are left out)."""
    n_vocab = int(bank.id_index.max()) + 1 if bank.size and bool((bank.id_index >= 0).any()) else 1
    users, items = [], []
    r_sum = torch.zeros(n_vocab, dtype=torch.float64)
    r_cnt = torch.zeros(n_vocab, dtype=torch.float64)
    for u, h in enumerate(histories):
        rows = bank.id_index[h.items]
        ok = rows >= 0
        uniq = torch.unique(rows[ok])
        users.append(torch.full_like(uniq, u))
        items.append(uniq)
        rated = ok & ~torch.isnan(h.ratings)
        r_sum.index_add_(0, rows[rated], h.ratings[rated].double())
        r_cnt.index_add_(0, rows[rated], torch.ones(int(rated.sum()), dtype=torch.float64))
    if not items:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, r_sum, r_cnt
    return torch.cat(users), torch.cat(items), r_sum, r_cnt


def build_graph_learner(histories: Sequence[UserHistory], bank: ItemBank, config: LearnerConfig,
                        hyper: GraphHyper) -> GraphTransferLearner:
    """A ``cd-graph`` learner holding ``histories`` as its graph."""
    eu, ei, r_sum, r_cnt = graph_data(histories, bank)
    n = max(config.n_items, 1)
    if r_sum.shape[0] < n:
        r_sum = torch.cat([r_sum, torch.zeros(n - r_sum.shape[0], dtype=torch.float64)])
        r_cnt = torch.cat([r_cnt, torch.zeros(n - r_cnt.shape[0], dtype=torch.float64)])
    learner = create(GraphTransferLearner.name,
                     GraphTransferLearner.graph_config(config, eu, hyper))
    assert isinstance(learner, GraphTransferLearner)
    learner.set_graph(eu, ei, r_sum[:n], r_cnt[:n])
    return learner


#: The hyper-parameter grid :func:`fit_graph` searches.
GRID: dict[str, tuple[Any, ...]] = {
    "alpha": (0.0, 0.5),
    "beta": (0.25, 0.5, 0.75),
    "smooth": (0.0, 1.0),
    "target_smooth": (0.0, 0.5, 2.0),
    "prior": (0.0, 1.0, 3.0, 10.0, 30.0),
    "prior_overlap": (False, True),
    "same_domain": (0.25, 1.0, 4.0, 16.0, 64.0),
    "rating_weight": (0.0, 0.5, 1.0),
    "rating_shrink": (1.0, 3.0, 10.0),
    "item_shrink": (2.0, 5.0, 10.0),
}


def fit_graph(
    histories: Sequence[UserHistory],
    bank: ItemBank,
    config: LearnerConfig,
    *,
    seed: int = 0,
    capacity: int = 20,
    shots: Sequence[int] = (0, 1, 3),
    inner_folds: int = 3,
    grid: dict[str, tuple[Any, ...]] | None = None,
) -> tuple[GraphTransferLearner, dict[str, Any]]:
    """Choose the hyper-parameters on held-out *training* users, then build on all of them.

    The users of ``histories`` active in both domains are split into ``inner_folds`` folds; for
    each, a graph of every other history scores the fold's transfer episodes (the serving
    situation: last ``capacity - k`` source events + first ``k`` target events, query = the later
    target events) at every ``k`` in ``shots``. Stage 1 picks ``alpha``, ``beta``, ``smooth`` and
    ``prior``, then ``target_smooth``, ``prior`` and ``prior_overlap`` around them, by NDCG@10 at
    the smallest ``k`` (0: pure transfer); stage 2 picks ``same_domain`` (what a target event
    weighs) by the mean over ``shots`` of NDCG@10 relative to the popularity prior alone (each
    ``k`` counts the same); stage 3 the rating hyper-parameters by MAE over the same episodes.
    ``histories`` must hold no event of an evaluation's test users: what is chosen here never
    sees them.
    """
    t0 = time.perf_counter()
    grid = {**GRID, **(grid or {})}
    domain = domain_of(bank)
    both = [u for u, h in enumerate(histories)
            if bool((domain[h.items] == TARGET).any()) and bool((domain[h.items] != TARGET).any())]
    report: dict[str, Any] = {"learner": GraphTransferLearner.name, "train_users": len(histories),
                              "cross_users": len(both)}
    hyper = GraphHyper()
    if len(both) >= 2 * inner_folds and inner_folds >= 2:
        rng = np.random.default_rng(seed)
        fold_of = {u: i % inner_folds for i, u in enumerate(rng.permutation(both).tolist())}
        folds = [_InnerFold(histories, bank, config, domain, [u for u in both if fold_of[u] == f],
                            [h for u, h in enumerate(histories) if fold_of.get(u, -1) != f],
                            shots, capacity)
                 for f in range(inner_folds)]
        hyper, search = _search(folds, grid, shots)
        report.update(search)
    learner = build_graph_learner(histories, bank, config, hyper)
    learner.eval()
    report["hyper"] = asdict(learner.hyper)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return learner, report


class _InnerFold:
    """One inner validation fold: a graph without the fold's users, and their episodes. Scores
    are computed over the target items only (columns = positions among them)."""

    def __init__(self, histories, bank, config, domain, held, kept, shots, capacity) -> None:
        self.bank = bank
        self.target = domain == TARGET
        self.base = build_graph_learner(kept, bank, config, GraphHyper())
        rows = torch.nonzero(self.target).flatten()
        prepared = self.base.prepare(bank)
        self.a_out = prepared["a_out"].index_select(0, rows).coalesce()
        self.tiebreak = prepared["tiebreak"][rows].double()
        self.episodes = {k: transfer_episodes(histories, domain, k, capacity, users=held)
                         for k in shots}
        every = torch.ones(rows.numel(), dtype=torch.bool)
        self.local = {}  # k -> (relevance (B, N_t), tie-break + -inf where hidden (B, N_t))
        self.ratings = {}  # k -> padded query rows, ratings, rated mask, for the MAE search
        for k, ep in self.episodes.items():
            local = _local_episodes(ep, self.target)
            offset = torch.where(blocked(local, every), -math.inf, self.tiebreak[None, :])
            self.local[k] = (relevance(local, rows.numel()), offset)
            width = max((len(q) for q in ep.query), default=0)
            q_rows = torch.zeros(len(ep.query), width, dtype=torch.long)
            q_rat = torch.full((len(ep.query), width), math.nan)
            for i, (q, r) in enumerate(zip(ep.query, ep.query_ratings, strict=True)):
                q_rows[i, : len(q)], q_rat[i, : len(q)] = q, r
            self.ratings[k] = (q_rows, torch.nan_to_num(q_rat), ~torch.isnan(q_rat))
        users, items = _bank_edges(self.base, bank)
        n_users = max(self.base.n_users, 1)
        self.shares = {o: prior_share(users, items, domain, n_users, overlap=o)[rows].double()
                       for o in (False, True)}
        is_tgt = domain[items] == TARGET
        deg_item = torch.zeros(bank.size).index_add_(0, items, torch.ones(items.shape[0]))
        deg_tgt = torch.zeros(n_users).index_add_(0, users, is_tgt.float())
        self.walk = target_walk(users[is_tgt], items[is_tgt], deg_item, deg_tgt, bank.size,
                                n_users, rows=rows)
        self.combo: tuple[float, float, float] | None = None
        # k -> (M_src, M_tgt, walked M_src, walked M_tgt) on the target items, float64
        self.masses: dict[int, tuple[Tensor, ...]] = {}
        self.event_mass = 1.0
        self.popularity = {k: self._ndcg(torch.log(self.shares[False] + _EPS)[None], k)
                           for k, ep in self.episodes.items() if ep.users}

    def mass(self, combo: tuple[float, float, float], k: int) -> tuple[Tensor, ...] | None:
        """Evidence masses on the target items at ``k`` for (alpha, beta, smooth), raw and
        walked one target step; only the current combo's are kept (the search visits one combo
        at a time)."""
        if combo != self.combo:
            hyper = GraphHyper(alpha=combo[0], beta=combo[1], smooth=combo[2])
            self._learner = _with_hyper(self.base, hyper)
            self._prepared = self._learner.prepare(self.bank)
            self.event_mass = float(self._prepared["event_mass"])
            self.combo, self.masses = combo, {}
        if k not in self.masses:
            ep = self.episodes[k]
            if not ep.users:
                return None
            learner = self._learner
            state = learner.adapt(learner.init_state(torch.zeros(len(ep.users), 1)), ep.support,
                                  self._prepared)
            m_src, m_tgt = learner.evidence_mass(state, self._prepared, self.a_out)
            b = m_src.shape[0]
            walked = walk(torch.cat([m_src, m_tgt]), self.walk)
            self.masses[k] = tuple(m.double() for m in (m_src, m_tgt, walked[:b], walked[b:]))
        return self.masses[k]

    def ndcg(self, h: GraphHyper, k: int) -> Tensor | None:
        """Per-user NDCG@10 of ``h`` on the fold's episodes at ``k`` (None: no episode)."""
        masses = self.mass((h.alpha, h.beta, h.smooth), k)
        if masses is None:
            return None
        prior = h.prior * self.event_mass * self.shares[h.prior_overlap]
        mass = masses[0] + prior[None, :] + _EPS
        if h.target_smooth:
            mass.add_(masses[2], alpha=h.target_smooth)
        if h.same_domain and k > 0:
            mass.add_(masses[1], alpha=h.same_domain)
            if h.target_smooth:
                mass.add_(masses[3], alpha=h.same_domain * h.target_smooth)
        return self._ndcg(mass.log_(), k)

    def _ndcg(self, scores: Tensor, k: int, at: int = 10) -> Tensor:
        rel, offset = self.local[k]
        top = torch.topk(scores + offset, at, dim=1).indices
        return ndcg_at_k(rel.gather(1, top), rel.sum(1), at)


def _bank_edges(learner: GraphTransferLearner, bank: ItemBank) -> tuple[Tensor, Tensor]:
    """The learner's edges as (user, bank row) for the items the bank holds."""
    known = bank.id_index >= 0
    row_of_vocab = torch.full((max(learner.config.n_items, 1),), -1, dtype=torch.long)
    row_of_vocab[bank.id_index[known]] = torch.arange(bank.size)[known]
    items = row_of_vocab[learner.edge_item] if learner.edge_item.numel() else learner.edge_item
    keep = items >= 0
    return learner.edge_user[keep], items[keep]


def _local_episodes(ep: TransferEpisodes, target: Tensor) -> TransferEpisodes:
    """``ep`` with bank rows renumbered to positions among the ``target`` items (support items of
    other domains masked out: they are never ranked)."""
    local = torch.full((target.shape[0],), -1, dtype=torch.long)
    local[target] = torch.arange(int(target.sum()))
    items = local[ep.support.items]
    mask = ep.support.mask & (items >= 0)
    support = SupportBatch(items.clamp(min=0), ep.support.targets, ep.support.ratings, mask)
    return TransferEpisodes(ep.users, support, [local[q] for q in ep.query], ep.query_ratings)


def _search(folds: list[_InnerFold], grid: dict[str, tuple[Any, ...]], shots: Sequence[int]
            ) -> tuple[GraphHyper, dict[str, Any]]:
    """The three-stage search of :func:`fit_graph` over the inner ``folds``."""

    def relative(h: GraphHyper, ks: Sequence[int]) -> float:
        rel = []
        for k in ks:
            got, pop = [], []
            for fold in folds:
                ndcg = fold.ndcg(h, k)
                if ndcg is not None:
                    got.append(ndcg)
                    pop.append(fold.popularity[k])
            if got:
                rel.append(float(torch.cat(got).mean() / torch.cat(pop).mean().clamp(min=_EPS)))
        return float(np.mean(rel)) if rel else -math.inf

    first = [min(shots)]
    best, stage1 = GraphHyper(), -math.inf
    # 1a: the source side with the prior's weight; 1b: the target side and the prior around it
    for source_side in _product({k: grid[k] for k in ("alpha", "beta", "smooth")}):
        for prior in grid["prior"]:
            h = GraphHyper(**source_side, prior=prior)
            score = relative(h, first)
            if score > stage1:
                best, stage1 = h, score
    chosen = best
    for target_side in _product({k: grid[k] for k in ("target_smooth", "prior",
                                                      "prior_overlap")}):
        h = replace(chosen, **target_side)
        score = relative(h, first)
        if score > stage1:
            best, stage1 = h, score
    chosen, stage2 = best, -math.inf
    for eta in grid["same_domain"]:
        h = replace(chosen, same_domain=eta)
        score = relative(h, shots)
        if score > stage2:
            best, stage2 = h, score
    best, mae = _fit_ratings(best, folds, grid)
    return best, {"inner_ndcg_vs_popularity_k0": round(stage1, 4),
                  "inner_ndcg_vs_popularity": round(stage2, 4), "inner_mae": round(mae, 4)}


def _fit_ratings(h: GraphHyper, folds: list[_InnerFold], grid: dict[str, tuple[Any, ...]]
                 ) -> tuple[GraphHyper, float]:
    """The rating hyper-parameters with the lowest MAE over the folds' episodes."""
    best, best_mae = h, math.inf
    lo, hi = folds[0].base.config.rating_min, folds[0].base.config.rating_max
    for item_shrink in grid["item_shrink"]:
        means = [fold.base.rating_means(fold.bank, item_shrink) for fold in folds]
        for combo in _product({k: grid[k] for k in ("rating_weight", "rating_shrink")}):
            err, n = 0.0, 0
            for fold, mean in zip(folds, means, strict=True):
                for k, ep in fold.episodes.items():
                    if not ep.users:
                        continue
                    off = rating_offset(ep.support, mean, combo["rating_shrink"])
                    rows, ratings, rated = fold.ratings[k]
                    pred = (mean[rows] + combo["rating_weight"] * off[:, None]).clamp(lo, hi)
                    err += float(torch.where(rated, (pred - ratings).abs(), 0.0).sum())
                    n += int(rated.sum())
            mae = err / n if n else math.inf
            if mae < best_mae:
                best, best_mae = replace(h, item_shrink=item_shrink, **combo), mae
    return best, best_mae


def _product(space: dict[str, tuple[Any, ...]]):
    """Every combination of ``space``'s values, as dicts."""
    keys = list(space)
    for values in itertools.product(*(space[k] for k in keys)):
        yield dict(zip(keys, values, strict=True))


def _with_hyper(learner: GraphTransferLearner, hyper: GraphHyper) -> GraphTransferLearner:
    """The same graph (buffers shared, not copied) with other hyper-parameters."""
    clone = GraphTransferLearner.__new__(GraphTransferLearner)
    clone.__dict__.update(learner.__dict__)
    clone.hyper = hyper
    return clone


__all__ = ["GRID", "GraphHyper", "GraphTransferLearner", "build_graph_learner", "fit_graph",
           "graph_data", "graph_scores", "prior_share", "rating_offset"]
