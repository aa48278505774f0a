"""``cd-graph``: the graph hop against a dense reference, the prior at 0 events, gating by the
evidence mass, the rating offset, and the hyper-parameter search on training users only."""

from __future__ import annotations

import math

import pytest
import torch

from models.base import ItemBank, LearnerConfig, SupportBatch
from models.training import UserHistory
from models.transfer.episodes import transfer_episodes
from models.transfer.graph import GRID, GraphHyper, build_graph_learner, fit_graph
from models.transfer.learners import SOURCE, TARGET

N_SRC, N_TGT = 6, 5


def bank() -> ItemBank:
    """Source rows 0..5, target rows 6..10, plus row 11 unknown to the model (a new item)."""
    n = N_SRC + N_TGT + 1
    domains = torch.tensor([SOURCE] * N_SRC + [TARGET] * (N_TGT + 1))
    id_index = torch.cat([torch.arange(n - 1), torch.tensor([-1])])
    return ItemBank(id_index, torch.zeros(n, 4), torch.zeros(n), domains)


def history(items: list[int], ratings: list[float] | None = None) -> UserHistory:
    r = torch.tensor(ratings if ratings is not None else [4.0] * len(items))
    return UserHistory(torch.tensor(items), (r - 0.5) / 4.5, r, torch.zeros(2))


def config(**extra) -> LearnerConfig:
    return LearnerConfig(n_items=N_SRC + N_TGT, feature_dim=4, attribute_dim=2,
                         extra={"domains": ["src", "tgt"], **extra})


GRAPH = [  # users' items: source 0-5, target 6-10
    [0, 1, 6, 7], [0, 2, 6], [1, 2, 7, 8], [3, 4, 9], [3, 5, 9, 10], [4, 5, 10], [2, 6, 7, 8],
    [6, 7], [7, 8], [0, 3],
]


def support(rows: list[list[int]], ratings: list[list[float]] | None = None) -> SupportBatch:
    s = max(len(r) for r in rows)
    items = torch.zeros(len(rows), s, dtype=torch.long)
    rat = torch.full((len(rows), s), math.nan)
    mask = torch.zeros(len(rows), s, dtype=torch.bool)
    for i, r in enumerate(rows):
        items[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
        if ratings is not None:
            rat[i, : len(r)] = torch.tensor(ratings[i])
    return SupportBatch(items, mask.float(), rat, mask)


def dense_reference(h: GraphHyper, rows: list[int]) -> torch.Tensor:
    """The module docstring's formula, computed densely (no smoothing)."""
    n = N_SRC + N_TGT + 1
    x = torch.zeros(len(GRAPH), n)
    for u, items in enumerate(GRAPH):
        x[u, items] = 1.0
    is_tgt = torch.arange(n) >= N_SRC
    deg_item = x.sum(0)
    deg_src, deg_tgt = x[:, ~is_tgt].sum(1), x[:, is_tgt].sum(1)
    w_src, w_tgt = torch.zeros(len(GRAPH)), torch.zeros(len(GRAPH))
    for i in rows:
        own = deg_tgt if is_tgt[i] else deg_src
        w = x[:, i] * deg_item[i].clamp(min=1) ** -h.alpha * own.clamp(min=1) ** -h.beta
        if is_tgt[i]:
            w_tgt += w
        else:
            w_src += w
    m_src, m_tgt = w_src @ x, w_tgt @ x
    return torch.where(is_tgt, m_src + h.same_domain * m_tgt, m_tgt + h.same_domain * m_src)


@pytest.mark.parametrize("rows", [[0], [0, 3], [2, 6], [6, 7, 8], [5, 1, 10]])
def test_evidence_mass_matches_the_dense_formula(rows: list[int]) -> None:
    h = GraphHyper(alpha=0.5, beta=0.75, same_domain=2.0, prior=0.0)
    learner = build_graph_learner([history(r) for r in GRAPH], bank(), config(), h)
    prepared = learner.prepare(bank())
    state = learner.adapt(learner.init_state(torch.zeros(1, 2)), support([rows]), prepared)
    m_src, m_tgt = learner.evidence_mass(state, prepared)
    is_tgt = torch.arange(bank().size) >= N_SRC
    mass = torch.where(is_tgt, m_src + 2.0 * m_tgt, m_tgt + 2.0 * m_src)
    assert torch.allclose(mass[0], dense_reference(h, rows), atol=1e-5)
    assert mass[0, -1] == 0  # the new item has no audience


def test_smoothing_spreads_the_profile_and_keeps_its_mass() -> None:
    plain = build_graph_learner([history(r) for r in GRAPH], bank(), config(), GraphHyper())
    smooth = build_graph_learner([history(r) for r in GRAPH], bank(), config(),
                                 GraphHyper(smooth=1.0))
    masses = []
    for learner in (plain, smooth):
        prepared = learner.prepare(bank())
        state = learner.adapt(learner.init_state(torch.zeros(1, 2)), support([[0]]), prepared)
        masses.append(learner.evidence_mass(state, prepared)[0][0])
    # book 0's users never read book 4, but its neighbours' neighbours did
    assert masses[0][9] == 0 and masses[1][9] > 0
    assert (masses[1] >= masses[0] - 1e-6).all()


def test_no_support_ranks_by_the_prior_and_evidence_is_gated_by_the_prior() -> None:
    histories = [history(r) for r in GRAPH]
    target = slice(N_SRC, N_SRC + N_TGT)
    popular_first = [7, 6, 8, 9, 10]  # target counts 4, 4, 3, 2, 2 (ties: more edges first)
    for h in (GraphHyper(prior=3.0), GraphHyper(prior=0.0)):
        learner = build_graph_learner(histories, bank(), config(), h)
        prepared = learner.prepare(bank())
        scores = learner.score(learner.init_state(torch.zeros(1, 2)), prepared)[0, target]
        assert (torch.argsort(scores, descending=True, stable=True) + N_SRC).tolist()[:3] == \
            popular_first[:3]

    def top_target(h: GraphHyper, rows: list[int]) -> int:
        learner = build_graph_learner(histories, bank(), config(), h)
        prepared = learner.prepare(bank())
        state = learner.adapt(learner.init_state(torch.zeros(1, 2)), support([rows]), prepared)
        return int(learner.score(state, prepared)[0, target].argmax()) + N_SRC

    # books 3-5 are read by the users of albums 9 and 10, never of 6-8
    assert top_target(GraphHyper(prior=0.0), [3, 4, 5]) in (9, 10)
    assert top_target(GraphHyper(prior=1e6), [3, 4, 5]) in (6, 7)  # the prior outweighs
    assert top_target(GraphHyper(prior=1.0), [3, 4, 5]) in (9, 10)


def test_rating_offset_carries_across_domains() -> None:
    histories = [history(r) for r in GRAPH]
    learner = build_graph_learner(histories, bank(), config(), GraphHyper(rating_shrink=1.0))
    prepared = learner.prepare(bank())
    state = learner.adapt(learner.init_state(torch.zeros(2, 2)),
                          support([[0, 1, 2], [0, 1, 2]], [[5.0, 5.0, 5.0], [2.0, 2.0, 2.0]]),
                          prepared)
    pred = learner.predict_rating(state, prepared, torch.tensor([[6, 7], [6, 7]]))
    assert (pred[0] > 4.0).all() and (pred[1] < 4.0).all()  # item means are 4
    unrated = learner.adapt(learner.init_state(torch.zeros(1, 2)), support([[0]]), prepared)
    assert torch.allclose(learner.predict_rating(unrated, prepared, torch.tensor([[6]])),
                          torch.tensor([[4.0]]))


def planted(n_users: int = 120, seed: int = 0) -> tuple[ItemBank, list[UserHistory]]:
    """Two taste groups: group g reads books of group g and listens to albums of group g; the
    popular albums are group 0's, so popularity is wrong for group 1."""
    gen = torch.Generator().manual_seed(seed)
    per = 10
    n = 4 * per
    domains = torch.tensor([SOURCE] * 2 * per + [TARGET] * 2 * per)
    b = ItemBank(torch.arange(n), torch.zeros(n, 4), torch.zeros(n), domains)
    out = []
    for u in range(n_users):
        g = int(u % 3 == 0)  # a third of the users are group 1
        books = g * per + torch.randperm(per, generator=gen)[:5]
        albums = 2 * per + g * per + torch.randperm(per, generator=gen)[:4]
        out.append(history(torch.cat([books, albums]).tolist()))
    return b, out


def test_fit_graph_chooses_on_training_users_and_transfers() -> None:
    b, histories = planted()
    cfg = LearnerConfig(n_items=b.size, feature_dim=4, attribute_dim=2,
                        extra={"domains": ["src", "tgt"]})
    learner, report = fit_graph(histories, b, cfg, seed=0, capacity=20, shots=(0, 1))
    assert report["cross_users"] == 120 and report["inner_ndcg_vs_popularity_k0"] > 1.2
    assert {k: report["hyper"][k] in GRID[k] for k in GRID} == {k: True for k in GRID}
    # a new group-1 reader: transferred albums are group 1's, popularity's would be group 0's
    prepared = learner.prepare(b)
    state = learner.adapt(learner.init_state(torch.zeros(1, 2)), support([[10, 11, 12]]), prepared)
    top = learner.score(state, prepared)[0, 20:].topk(5).indices + 20
    assert (top >= 30).all(), top
    eps = transfer_episodes(histories, b.domains, 1, 20)
    assert len(eps.users) == 120 and all(len(q) == 3 for q in eps.query)


def test_target_smoothing_adds_one_mass_preserving_walk_step() -> None:
    histories = [history(r) for r in GRAPH]
    masses = {}
    for gamma in (0.0, 2.0):
        learner = build_graph_learner(histories, bank(), config(), GraphHyper(target_smooth=gamma))
        prepared = learner.prepare(bank())
        state = learner.adapt(learner.init_state(torch.zeros(1, 2)), support([[0, 3]]), prepared)
        masses[gamma] = learner.evidence_mass(state, prepared)[0][0]
    added = masses[2.0] - masses[0.0]
    assert torch.allclose(added[:N_SRC], torch.zeros(N_SRC))  # only target items move
    # one step keeps the target mass (every target item with mass has users)
    assert added[N_SRC:].sum() == pytest.approx(2.0 * masses[0.0][N_SRC:].sum(), rel=1e-5)
    # the dense walk: item -> its users (1/deg item) -> their target items (1/deg_tgt user)
    x = torch.zeros(len(GRAPH), bank().size)
    for u, items in enumerate(GRAPH):
        x[u, items] = 1.0
    xt = x.clone()
    xt[:, :N_SRC] = 0
    step = (masses[0.0] * (1 / xt.sum(0).clamp(min=1))) @ xt.T
    step = (step / xt.sum(1).clamp(min=1)) @ xt
    assert torch.allclose(added, 2.0 * step, atol=1e-5)
