"""LightGCN-style relation transfer (He et al., 2020) with plain ``torch.sparse`` ops.

The training users' interactions in *both* domains form one bipartite graph. Item id embeddings
are smoothed over item → user → item hops with the symmetric LightGCN normalisation
``1/sqrt(deg_u·deg_i)`` and averaged over layers, so a target item ends up close to the source
items its audience also rated: the co-occurrence bridge through overlapping users. A new user is
one more hop: the weighted mean of the propagated vectors of their support items (the closed-form
rule of :class:`~models.transfer.learners.CrossDomainLearner`), so nothing user-specific needs a
trained row and a user with only source events is placed in the shared space at once.

The graph is stored as two long buffers (``edge_user``, ``edge_item`` = id-embedding rows) whose
sizes come from ``config.extra["graph_users"]``/``["graph_edges"]``, so checkpoints round-trip.
No graph library: a sparse COO matrix and ``torch.sparse.mm`` are all LightGCN needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models.base import ItemBank, LearnerConfig, State, register
from models.transfer.learners import CrossDomainLearner


@register
class LightGCNLearner(CrossDomainLearner):
    name = "lightgcn"

    def __init__(self, config: LearnerConfig) -> None:
        super().__init__(config)
        n_edges = int(config.extra.get("graph_edges", 0))
        self.n_graph_users = int(config.extra.get("graph_users", 0))
        self.layers = int(config.extra.get("layers", 2))
        self.register_buffer("edge_user", torch.zeros(n_edges, dtype=torch.long))
        self.register_buffer("edge_item", torch.zeros(n_edges, dtype=torch.long))

    @staticmethod
    def graph_config(extra: dict, edge_user: Tensor, edge_item: Tensor) -> dict:
        """``extra`` with the graph sizes for :meth:`__init__` (call before creating)."""
        n_users = int(edge_user.max()) + 1 if edge_user.numel() else 0
        return {**extra, "graph_edges": int(edge_user.numel()), "graph_users": n_users}

    def set_graph(self, edge_user: Tensor, edge_item: Tensor) -> None:
        """Load the training graph (once, before training; not part of adaptation)."""
        if edge_user.shape != self.edge_user.shape or edge_item.shape != self.edge_item.shape:
            raise ValueError("graph size differs from config.extra['graph_edges']")
        with torch.no_grad():
            self.edge_user.copy_(edge_user.long())
            self.edge_item.copy_(edge_item.long())

    def propagated(self) -> Tensor:
        """(n_items, d) layer-mean of the propagated id embeddings."""
        emb = self.tower.id_emb
        if self.edge_user.numel() == 0 or self.layers == 0:
            return emb
        n_items = emb.shape[0]
        ones = torch.ones_like(self.edge_user, dtype=emb.dtype)
        deg_u = torch.zeros(self.n_graph_users, dtype=emb.dtype).index_add_(0, self.edge_user, ones)
        deg_i = torch.zeros(n_items, dtype=emb.dtype).index_add_(0, self.edge_item, ones)
        val = (deg_u[self.edge_user] * deg_i[self.edge_item]).rsqrt()
        idx = torch.stack([self.edge_user, self.edge_item])
        adj = torch.sparse_coo_tensor(
            idx, val, (self.n_graph_users, n_items), check_invariants=False
        ).coalesce()
        adj_t = adj.t().coalesce()
        x, total = emb, emb
        for _ in range(self.layers):
            x = torch.sparse.mm(adj_t, torch.sparse.mm(adj, x))
            total = total + x
        return total / (self.layers + 1)

    def item_vectors(self, bank: ItemBank) -> State:
        out = dict(self.tower(bank))
        known = bank.id_index >= 0
        rows = bank.id_index.clamp(min=0)
        delta = (self.propagated() - self.tower.id_emb)[rows]
        out["H"] = out["H"] + delta * known.to(delta.dtype)[:, None]
        return out
