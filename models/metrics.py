"""Ranking metrics on tensors: the one NDCG implementation of the project.

:mod:`evaluation.metrics` (reports), :func:`models.training.first_n_ndcg` (calibration on
training users) and :func:`models.pretrain.evaluate_objective` all score lists with
:func:`ndcg_at_k`, so a number called NDCG@K means the same thing everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ndcg_at_k(hits: Tensor, n_relevant: Tensor, k: int) -> Tensor:
    """Per-row NDCG@``k`` with binary gains.

    Parameters
    ----------
    hits : Tensor
        (B, K') bool or float, ``hits[b, i]``: the ``i``-th ranked item (best first) of row ``b``
        is relevant. Only the first ``k`` columns count; a shorter list counts as misses.
    n_relevant : Tensor
        (B,) number of distinct relevant items per row.
    k : int
        Cut-off.

    Returns
    -------
    Tensor
        (B,) float64 ``DCG@k / IDCG@k`` with ``DCG = Σ_i hit_i / log2(i + 1)`` and ``IDCG`` the
        DCG of ``min(k, n_relevant)`` hits on top; 0 for a row with no relevant item.

    Examples
    --------
    >>> ndcg_at_k(torch.tensor([[False, True], [True, False]]), torch.tensor([1, 3]), 2)
    tensor([0.6309, 0.6131], dtype=torch.float64)
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    h = hits[:, :k].to(torch.float64)
    if h.shape[1] < k:
        h = torch.nn.functional.pad(h, (0, k - h.shape[1]))
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    ideal = torch.cat([torch.zeros(1, dtype=torch.float64), discount.cumsum(0)])
    idcg = ideal[n_relevant.long().clamp(min=0, max=k)]
    dcg = (h * discount).sum(1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), torch.zeros_like(dcg))
