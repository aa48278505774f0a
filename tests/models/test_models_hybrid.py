"""The hybrid learner: its gates, its choices on held-out users, its rating baseline, its
checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from models.base import ItemBank, LearnerConfig, create
from models.checkpoint import load, save
from models.hybrid import (
    GATE_EDGES,
    Interactions,
    bucket_of,
    combine,
    install,
    interactions,
    rating_baseline,
    select,
    transition_table,
)
from models.training import UserHistory, cold_start_batches, meta_train


def test_buckets_follow_the_gate_edges() -> None:
    n = torch.tensor([0, 1, 2, 3, 4, 6, 7, 10, 11, 15, 16, 100])
    assert bucket_of(n).tolist() == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert len(GATE_EDGES) == 7


def test_mixing_ranks_like_standardised_channels_and_leaves_weight_zero_rows_alone() -> None:
    g = torch.Generator().manual_seed(0)
    personal, itemitem = (torch.randn(3, 50, generator=g) for _ in range(2))
    weights = torch.tensor([0.0, 0.5, 4.0])
    out = combine(weights, personal, itemitem)
    assert torch.equal(out[0], personal[0])
    z = [(x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True) for x in (personal, itemitem)]
    for row in (1, 2):
        expected = z[0][row] + weights[row] * z[1][row]
        assert torch.equal(out[row].argsort(), expected.argsort())
    assert torch.equal(combine(torch.zeros(3), personal, itemitem), personal)


def test_rating_baseline_shrinks_item_offsets_towards_the_mean() -> None:
    data = Interactions(users=torch.tensor([0, 1, 0, 1]), items=torch.tensor([0, 0, 1, 2]),
                        ratings=torch.tensor([5.0, 4.0, 2.0, math.nan]), n_items=3)
    level, offsets = rating_baseline(data, item_shrink=2.0)
    assert level == pytest.approx(11 / 3)
    assert offsets[0].item() == pytest.approx((5 + 4 - 2 * level) / (2 + 2))
    assert offsets[1].item() == pytest.approx((2 - level) / (1 + 2))
    assert offsets[2].item() == 0.0  # no rating


@pytest.fixture(scope="module")
def fitted(planted):
    """A hybrid fitted the way train_bundle does it: probe core without the held-out users,
    choices on them, then the table and baseline on everyone."""
    torch.manual_seed(0)
    config = planted.config(extra={"ii_neighbours": 32})
    held, kept = planted.train[:60], planted.train[60:]
    probe = create("hybrid", config)
    meta_train(probe, kept, planted.bank, steps=60, seed=0)
    episodes = ((n, cs) for n in (1, 2, 3, 5, 8, 12, 20)
                for cs in cold_start_batches(probe, held, planted.bank, n))
    kept_data = interactions(kept, planted.bank.id_index, planted.bank.size)
    selection = select(probe, kept_data, episodes, planted.bank, neighbours=32, max_items=500)
    model = create("hybrid", config)
    meta_train(model, planted.train, planted.bank, steps=60, seed=0)
    install(model, interactions(planted.train, planted.bank.id_index, planted.bank.size),
            selection, neighbours=32, max_items=500)
    return model, selection


def test_choices_are_made_on_held_out_users_and_use_the_item_item_channel(fitted) -> None:
    _, selection = fitted
    report = selection.report
    assert report["held_out_episodes"] > 0
    assert set(report["itemitem"]["ndcg"]) >= {"ease:2", "cosine:0.9"}
    # planted clusters: co-occurrence is the signal, so from a few events on it is used
    weights = {int(k): v["itemitem_weight"] for k, v in report["gates"].items()}
    assert any(w > 0 for n, w in weights.items() if n >= 2), weights
    assert float(selection.gates[0]) == 0.0  # no events: the core alone


def test_hybrid_beats_its_own_core_and_popularity_on_new_users(fitted, planted, tools) -> None:
    model, _ = fitted
    users = planted.test
    prep = model.prepare(planted.bank)
    pop = planted.bank.popularity.expand(len(users), -1).clone()
    for n in (1, 3, 5, 8):
        support = tools.support_from(users, n)
        state = model.adapt(model.init_state(torch.zeros(len(users), 4)), support, prep)
        hybrid = tools.ndcg10(tools.mask_support(model.score(state, prep), support), users, n)
        core = tools.ndcg10(tools.mask_support(model.core.score(state, prep), support), users, n)
        popularity = tools.ndcg10(tools.mask_support(pop, support), users, n)
        # a relative margin: the gates were chosen on other users, so the lift is modest but real
        assert hybrid > 1.01 * core and hybrid > popularity + 0.3, (n, hybrid, core, popularity)


def test_rating_predictions_are_the_shrunk_baseline(fitted, planted, tools) -> None:
    model, selection = fitted
    users = planted.test[:5]
    support = tools.support_from(users, 4)
    prep = model.prepare(planted.bank)
    state = model.adapt(model.init_state(torch.zeros(5, 4)), support, prep)
    items = torch.stack([h.items[4:9] for h in users])
    pred = model.predict_rating(state, prep, items)
    rated = ~torch.isnan(support.ratings)
    resid = torch.where(rated, torch.nan_to_num(support.ratings)
                        - prep["rating_item"][support.items], 0.0)
    user = resid.sum(1) / (rated.sum(1) + selection.user_shrink)
    expected = (prep["rating_item"][items] + user[:, None]).clamp(0.5, 5.0)
    torch.testing.assert_close(pred, expected)


def test_checkpoint_round_trip_serves_identically(fitted, planted, tools, tmp_path) -> None:
    model, _ = fitted
    vocab = [f"i{k}" for k in range(planted.bank.size)]
    save(model, tmp_path / "v", vocab=vocab, version="v1")
    loaded, _, _ = load(tmp_path / "v")
    support = tools.support_from(planted.test[:8], 5)
    out = []
    for learner in (model, loaded):
        prep = learner.prepare(planted.bank)
        state = learner.adapt(learner.init_state(torch.zeros(8, 4)), support, prep)
        out.append(learner.score(state, prep))
    torch.testing.assert_close(out[0], out[1])


def test_transition_table_counts_what_follows_within_the_window() -> None:
    # user 0: 0 1 2 3, user 1: 0 1 4; the user boundary (3 -> 0) is not a transition
    data = Interactions(users=torch.tensor([0]), items=torch.tensor([0]),
                        ratings=torch.tensor([math.nan]), n_items=5,
                        seq_users=torch.tensor([0, 0, 0, 0, 1, 1, 1]),
                        seq_items=torch.tensor([0, 1, 2, 3, 0, 1, 4]))
    idx, val = transition_table(data, 1, neighbours=3, max_items=10)
    dense = torch.zeros(5, 6).scatter_add_(1, idx, val)[:, :5]
    # only items seen at least twice are modelled (0 and 1): 0 -> 1 twice, nothing else
    assert dense[0, 1] == pytest.approx(2 / math.sqrt(2 * 2))
    assert float(dense.sum()) == pytest.approx(float(dense[0, 1]))
    data2 = Interactions(users=torch.tensor([0]), items=torch.tensor([0]),
                         ratings=torch.tensor([math.nan]), n_items=3,
                         seq_users=torch.tensor([0, 0, 0, 1, 1, 1]),
                         seq_items=torch.tensor([0, 1, 2, 0, 1, 2]))
    idx, val = transition_table(data2, 2, neighbours=2, max_items=10)
    dense = torch.zeros(3, 4).scatter_add_(1, idx, val)[:, :3]
    assert dense[0, 1] > 0 and dense[0, 2] > 0 and dense[1, 2] > 0  # forward, within 2
    assert float(dense[1, 0]) == 0.0 and float(dense[2, 0]) == 0.0  # never backwards
    idx, val = transition_table(data2, 1, neighbours=2, max_items=10)
    dense = torch.zeros(3, 4).scatter_add_(1, idx, val)[:, :3]
    assert float(dense[0, 2]) == 0.0  # two steps ahead is outside a window of 1


def _walkers(rng: torch.Generator, n_users: int, n_items: int, length: int) -> list[UserHistory]:
    """Users who walk a ring of items forwards (one or two steps at a time) from a random
    start: what comes next is the item after the last one, which plain co-occurrence (symmetric)
    cannot tell from the item before it."""
    out = []
    for _ in range(n_users):
        start = int(torch.randint(n_items, (1,), generator=rng))
        steps = torch.randint(1, 3, (length,), generator=rng).cumsum(0) - 1
        items = (start + steps) % n_items
        out.append(UserHistory(items=items, targets=torch.ones(length),
                               ratings=torch.full((length,), math.nan), profile=torch.zeros(4)))
    return out


def test_the_transition_channel_is_chosen_for_sequential_data_and_helps(tools, tmp_path) -> None:
    torch.manual_seed(0)
    rng = torch.Generator().manual_seed(0)
    n_items = 120
    train, test = _walkers(rng, 300, n_items, 16), _walkers(rng, 80, n_items, 16)
    bank = ItemBank(id_index=torch.arange(n_items), features=torch.randn(n_items, 8) * 0.1,
                    popularity=torch.zeros(n_items))
    config = LearnerConfig(n_items=n_items, feature_dim=8, attribute_dim=4, dim=16, seed=0,
                           extra={"ii_neighbours": 16})
    held, kept = train[:80], train[80:]
    probe = create("hybrid", config)
    meta_train(probe, kept, bank, steps=30, seed=0)
    episodes = ((n, cs) for n in (1, 2, 3, 5, 8)
                for cs in cold_start_batches(probe, held, bank, n))
    selection = select(probe, interactions(kept, bank.id_index, n_items), episodes, bank,
                       neighbours=16, max_items=500)
    assert selection.transition_window > 0, selection.report["transition"]
    assert selection.tr_gates is not None and bool((selection.tr_gates[1:5] > 0).all())
    model = create("hybrid", config)
    meta_train(model, train, bank, steps=30, seed=0)
    install(model, interactions(train, bank.id_index, n_items), selection, neighbours=16,
            max_items=500)
    assert model.tr_idx.shape[1] > 0
    prep = model.prepare(bank)
    for n in (1, 3, 5):
        support = tools.support_from(test, n)
        state = model.adapt(model.init_state(torch.zeros(len(test), 4)), support, prep)
        with_tr = tools.ndcg10(tools.mask_support(model.score(state, prep), support), test, n)
        without = dict(state)
        without.pop("tr")
        alone = tools.ndcg10(tools.mask_support(model.score(without, prep), support), test, n)
        assert with_tr > 1.1 * alone, (n, with_tr, alone)
    # the channel survives a checkpoint: same tables, same gates, same scores
    save(model, tmp_path / "v", vocab=[f"i{k}" for k in range(n_items)], version="v1")
    loaded, _, _ = load(tmp_path / "v")
    support = tools.support_from(test, 3)
    out = []
    for learner in (model, loaded):
        p = learner.prepare(bank)
        out.append(learner.score(learner.adapt(learner.init_state(torch.zeros(len(test), 4)),
                                               support, p), p))
    torch.testing.assert_close(out[0], out[1])


def test_the_popularity_channel_mixes_by_bucket(fitted, planted, tools) -> None:
    model, _ = fitted
    users = planted.test[:6]
    support = tools.support_from(users, 1)
    pop_gates, item_pop = model.pop_gates.clone(), model.item_pop.clone()
    try:
        with torch.no_grad():
            model.item_pop.copy_(torch.log1p(torch.as_tensor(planted.counts, dtype=torch.float32)))
            model.pop_gates.zero_()
        prep = model.prepare(planted.bank)
        state = model.adapt(model.init_state(torch.zeros(6, 4)), support, prep)
        without = model.score(state, prep)
        with torch.no_grad():
            model.pop_gates[1] = 2.0  # bucket of 1 event
        with_pop = model.score(state, prep)
        core = model.core.score(state, prep)
        pop = prep["pop"].expand(6, -1)
        # weight x (spread of the core / spread of the channel): the channel in the core's units
        scale = 2.0 * core.std(1, unbiased=False) / pop.std(1, unbiased=False)
        torch.testing.assert_close(with_pop, without + scale[:, None] * pop, rtol=1e-4,
                                   atol=1e-4)
        assert not torch.equal(with_pop.argsort(1), without.argsort(1))
        # a user of another bucket is untouched
        state5 = model.adapt(model.init_state(torch.zeros(6, 4)), tools.support_from(users, 5),
                             prep)
        before = model.score(state5, prep)
        with torch.no_grad():
            model.pop_gates[1] = 0.0
        assert torch.equal(before, model.score(state5, prep))
    finally:
        with torch.no_grad():
            model.pop_gates.copy_(pop_gates)
            model.item_pop.copy_(item_pop)


def test_channels_are_scattered_only_for_the_rows_that_weigh_them(fitted, planted,
                                                                  tools) -> None:
    # A batch of users of mixed support sizes, the item-item channel weighted in two buckets
    # only: the served scores equal the dense formula over every row, and the rows of the
    # unweighted buckets are the core's scores bit for bit.
    from models.base import SupportBatch
    from models.itemitem import neighbour_scores

    model, _ = fitted
    users = planted.test[:8]
    full = tools.support_from(users, 12)
    sizes = torch.tensor([1, 2, 3, 5, 8, 12, 1, 6])
    support = SupportBatch(full.items, full.targets, full.ratings,
                           torch.arange(12)[None, :] < sizes[:, None])
    saved = model.gates.clone(), model.pop_gates.clone(), model.tr_gates.clone()
    try:
        with torch.no_grad():
            model.tr_gates.zero_()  # the transition channel: the same code path, tested apart
            model.gates.zero_()
            model.gates[bucket_of(torch.tensor([3]))] = 0.7
            model.gates[bucket_of(torch.tensor([12]))] = 0.3
            model.pop_gates.zero_()
            model.pop_gates[bucket_of(torch.tensor([1]))] = 0.5
        prep = model.prepare(planted.bank)
        init = model.init_state(torch.zeros(8, 4))
        got = model.score(model.adapt(init, support, prep), prep)

        personal = model.core.score(model.core.adapt(init, support, prep), prep)
        row = bucket_of(sizes)
        ii = neighbour_scores(prep["ii_idx"], prep["ii_val"], support.items,
                              support.mask.float(), prep["ii_idx"].shape[0])
        spread = personal.std(1, unbiased=False)
        ii_w = model.gates[row] * spread / ii.std(1, unbiased=False).clamp(min=1e-12)
        pop = prep["pop"].expand(8, -1)
        pop_w = model.pop_gates[row] * spread / pop.std(1, unbiased=False)
        expected = personal + ii_w[:, None] * ii + pop_w[:, None] * pop
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        weighted = (model.gates[row] > 0) | (model.pop_gates[row] > 0)
        assert 0 < int(weighted.sum()) < 8
        assert torch.equal(got[~weighted], personal[~weighted])
        assert not torch.allclose(got[weighted], personal[weighted])
    finally:
        with torch.no_grad():
            model.gates.copy_(saved[0])
            model.pop_gates.copy_(saved[1])
            model.tr_gates.copy_(saved[2])
