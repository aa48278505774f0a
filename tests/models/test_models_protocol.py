"""Protocol conformance of every registered learner."""

from __future__ import annotations

import math

import pytest
import torch

from models import learners  # noqa: F401  (populate REGISTRY)
from models.base import REGISTRY, Learner, SupportBatch, create
from models.transfer.graph import GraphHyper, GraphTransferLearner, build_graph_learner

NAMES = sorted(REGISTRY)


def test_builtin_learners_registered() -> None:
    assert {"fomaml", "maml", "proto", "matching", "sequence"} <= set(NAMES)


def _support(b: int, s: int, n: int, seed: int = 0) -> SupportBatch:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, n, (b, s), generator=g)
    ratings = torch.full((b, s), math.nan)
    ratings[:, 0] = 4.0
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, s - 1] = False  # ragged row
    mask[1] = False  # a user with no events in the padded batch
    return SupportBatch(items, torch.ones(b, s), ratings, mask)


def _learner(name: str, planted) -> Learner:
    """A fresh learner; ``cd-graph`` has no parameters to initialise, only a training graph, so
    it is built on the planted training users (an empty graph ignores every support)."""
    if name == GraphTransferLearner.name:
        return build_graph_learner(planted.train, planted.bank, planted.config(), GraphHyper())
    return create(name, planted.config())


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name: str, planted) -> None:
    learner = _learner(name, planted)
    n, b = planted.bank.size, 3
    prep = learner.prepare(planted.bank)
    state = learner.init_state(torch.zeros(b, 4))
    assert all(v.shape[0] == b for v in state.values())
    state = learner.adapt(state, _support(b, 5, n), prep)
    assert all(v.shape[0] == b for v in state.values())
    scores = learner.score(state, prep)
    assert scores.shape == (b, n) and torch.isfinite(scores).all()
    items = torch.randint(0, n, (b, 7))
    r = learner.predict_rating(state, prep, items)
    assert r.shape == (b, 7)
    assert float(r.min()) >= 0.5 and float(r.max()) <= 5.0


@pytest.mark.parametrize("name", NAMES)
def test_empty_support_is_prior(name: str, planted) -> None:
    learner = _learner(name, planted)
    prep = learner.prepare(planted.bank)
    prior = learner.init_state(torch.zeros(3, 4))
    s0 = learner.score(prior, prep)
    s1 = learner.score(learner.adapt(prior, SupportBatch.empty(3), prep), prep)
    torch.testing.assert_close(s0, s1)
    # an all-masked row inside a non-empty batch also keeps its prior
    s2 = learner.score(learner.adapt(prior, _support(3, 5, planted.bank.size), prep), prep)
    torch.testing.assert_close(s2[1], s0[1])
    assert not torch.allclose(s2[0], s0[0])


def test_untrained_prior_is_popularity(planted) -> None:
    """At initialisation an un-adapted user ranks by the popularity prior."""
    learner = create("fomaml", planted.config())
    prep = learner.prepare(planted.bank)
    s = learner.score(learner.init_state(torch.zeros(1, 4)), prep)[0]
    top = set(torch.topk(s, 10).indices.tolist())
    top_pop = set(torch.topk(planted.bank.popularity, 10).indices.tolist())
    assert len(top & top_pop) >= 8


@pytest.mark.parametrize("name", NAMES)
def test_fast_weights_are_separate(name: str, planted) -> None:
    learner = _learner(name, planted)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    ptrs = {k: p.data_ptr() for k, p in learner.named_parameters()}
    prep = learner.prepare(planted.bank)
    prior = learner.init_state(torch.zeros(3, 4))
    prior_copy = {k: v.clone() for k, v in prior.items()}
    adapted = learner.adapt(prior, _support(3, 5, planted.bank.size), prep)
    learner.score(adapted, prep)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), f"global parameter {k} changed during adapt"
    assert ptrs == {k: p.data_ptr() for k, p in learner.named_parameters()}
    for k, v in prior.items():  # the input state is not mutated in place
        assert torch.equal(v, prior_copy[k])
    assert not all(torch.equal(adapted[k], prior[k]) for k in prior if k in adapted)


@pytest.mark.parametrize("name", NAMES)
def test_new_items_scored_from_features(name: str, planted) -> None:
    from models.base import ItemBank

    bank = planted.bank
    id_index = bank.id_index.clone()
    id_index[:5] = -1  # items never seen in training
    bank2 = ItemBank(id_index, bank.features, bank.popularity)
    learner = _learner(name, planted)
    s = learner.score(learner.init_state(torch.zeros(2, 4)), learner.prepare(bank2))
    assert torch.isfinite(s).all()
