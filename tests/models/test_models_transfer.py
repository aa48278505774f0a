"""Cross-domain learners: protocol shapes, purity, checkpoints and a planted transfer problem."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from models.base import REGISTRY, ItemBank, LearnerConfig, SupportBatch, create
from models.checkpoint import load, save
from models.training import UserHistory
from models.transfer import TRANSFER_LEARNERS
from models.transfer.learners import SOURCE, TARGET
from models.transfer.training import fit_transfer, split_by_domain

GROUPS, PER_GROUP = 4, 12  # planted taste groups; items per group per domain


def planted(n_users: int = 160, seed: int = 0) -> tuple[ItemBank, list[UserHistory], Tensor]:
    """Source items 0..G*P-1, target items after them; a user of group g rates items of group g
    in both domains (high) and a few random items of other groups (low). No content features,
    so the only route from source to target is what the model learned from overlapping users."""
    gen = torch.Generator().manual_seed(seed)
    n_src = GROUPS * PER_GROUP
    n = 2 * n_src
    domains = torch.cat([torch.full((n_src,), SOURCE), torch.full((n_src,), TARGET)])
    bank = ItemBank(torch.arange(n), torch.zeros(n, 8), torch.zeros(n), domains)
    histories, groups = [], torch.randint(0, GROUPS, (n_users,), generator=gen)
    for g in groups.tolist():
        src = g * PER_GROUP + torch.randperm(PER_GROUP, generator=gen)[:6]
        tgt = n_src + g * PER_GROUP + torch.randperm(PER_GROUP, generator=gen)[:6]
        noise = torch.randint(0, n, (2,), generator=gen)
        items = torch.cat([src, tgt, noise])
        ratings = torch.cat([torch.full((12,), 5.0), torch.full((2,), 1.0)])
        histories.append(UserHistory(items, (ratings - 0.5) / 4.5, ratings, torch.zeros(4)))
    return bank, histories, groups



def config(**extra) -> LearnerConfig:
    return LearnerConfig(n_items=2 * GROUPS * PER_GROUP, feature_dim=8, attribute_dim=4, dim=16,
                         extra={"domains": ["src", "tgt"], **extra})


def support_of(histories: list[UserHistory], bank: ItemBank, target_events: int) -> SupportBatch:
    """Source events + the first ``target_events`` target events of every user."""
    rows = []
    for h in histories:
        r, n_s, _ = split_by_domain(h, bank.domains)
        rows.append(r.items[: n_s + target_events])
    s = max(len(r) for r in rows)
    items = torch.zeros(len(rows), s, dtype=torch.long)
    mask = torch.zeros(len(rows), s, dtype=torch.bool)
    for i, r in enumerate(rows):
        items[i, : len(r)] = r
        mask[i, : len(r)] = True
    ratings = torch.where(mask, 5.0, math.nan)
    return SupportBatch(items, mask.float(), ratings, mask)


@pytest.mark.parametrize("name", TRANSFER_LEARNERS)
def test_shapes_and_no_parameter_mutation(name: str) -> None:
    bank, histories, _ = planted(20)
    learner = create(name, config())
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    prepared = learner.prepare(bank)
    state = learner.init_state(torch.zeros(5, 4))
    support = support_of(histories[:5], bank, 1)
    adapted = learner.adapt(state, support, prepared)
    scores = learner.score(adapted, prepared)
    assert scores.shape == (5, bank.size) and torch.isfinite(scores).all()
    ratings = learner.predict_rating(adapted, prepared, support.items[:, :3])
    assert ratings.shape == (5, 3)
    assert ((ratings >= 0.5) & (ratings <= 5.0)).all()
    # the support moved the user
    assert any(not torch.equal(adapted[key], state[key]) for key in state)
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} mutated {k} while adapting"


@pytest.mark.parametrize("name", TRANSFER_LEARNERS)
def test_empty_support_keeps_prior(name: str) -> None:
    bank, _, _ = planted(10)
    learner = create(name, config())
    prepared = learner.prepare(bank)
    state = learner.init_state(torch.zeros(3, 4))
    adapted = learner.adapt(state, SupportBatch.empty(3), prepared)
    assert all(torch.equal(adapted[key], state[key]) for key in state)


def test_target_only_ignores_source_events() -> None:
    bank, histories, _ = planted(10)
    learner = create("cd-target", config())
    prepared = learner.prepare(bank)
    state = learner.init_state(torch.zeros(4, 4))
    adapted = learner.adapt(state, support_of(histories[:4], bank, 0), prepared)
    assert torch.equal(adapted["u"], state["u"])
    assert torch.equal(adapted["rate_off"], state["rate_off"])


def test_adversarial_gradient_reversal_flips_the_tower_gradient() -> None:
    from models.transfer.learners import grad_reverse

    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -1.0))


@pytest.mark.parametrize("name", ["cd-shared", "emcdr", "ptupcdr", "cd-adversarial", "lightgcn",
                                  "cd-graph"])
def test_transfer_beats_target_only_at_zero_target_events(name: str) -> None:
    torch.set_num_threads(1)
    bank, histories, groups = planted(200)
    train, test, test_groups = histories[:160], histories[160:], groups[160:]
    n_src = GROUPS * PER_GROUP

    def precision(model_name: str) -> float:
        learner, report = fit_transfer(model_name, train, bank, config(), steps=120, seed=1,
                                       batch_users=32, lr=0.03)
        assert report["cross_users"] == 160
        prepared = learner.prepare(bank)
        state = learner.adapt(learner.init_state(torch.zeros(len(test), 4)),
                              support_of(test, bank, 0), prepared)
        scores = learner.score(state, prepared)[:, n_src:]  # target items only
        top = scores.topk(PER_GROUP // 2, dim=1).indices // PER_GROUP
        return float((top == test_groups[:, None]).float().mean())

    transfer, baseline = precision(name), precision("cd-target")
    assert baseline < 0.5  # target-only has nothing to go on at 0 target events (chance = 0.25)
    assert transfer > 0.8, f"{name}: precision {transfer:.2f} vs target-only {baseline:.2f}"


@pytest.mark.parametrize("name", TRANSFER_LEARNERS)
def test_checkpoint_round_trip(name: str, tmp_path) -> None:
    bank, histories, _ = planted(30)
    learner, _ = fit_transfer(name, histories, bank, config(), steps=3, seed=0)
    vocab = [f"i{n}" for n in range(bank.size)]
    save(learner, tmp_path / name, vocab=vocab, version="v1")
    loaded, vocab2, meta = load(tmp_path / name)
    assert type(loaded) is REGISTRY[name] and vocab2 == vocab
    assert meta["config"]["extra"]["domains"] == ["src", "tgt"]
    support = support_of(histories[:4], bank, 1)
    outs = []
    for m in (learner, loaded):
        prepared = m.prepare(bank)
        outs.append(m.score(m.adapt(m.init_state(torch.zeros(4, 4)), support, prepared), prepared))
    assert torch.allclose(outs[0], outs[1])


def test_feature_transfer_option_switches_content_off() -> None:
    bank, histories, _ = planted(10)
    noisy = ItemBank(bank.id_index, torch.randn(bank.size, 8), bank.popularity, bank.domains)
    support = support_of(histories[:3], bank, 0)

    def scores(features: bool, b: ItemBank) -> Tensor:
        learner = create("emcdr", config(features=features))
        prepared = learner.prepare(b)
        return learner.score(learner.adapt(learner.init_state(torch.zeros(3, 4)), support,
                                           prepared), prepared)

    assert torch.equal(scores(False, bank), scores(False, noisy))  # content ignored
    assert not torch.allclose(scores(True, bank), scores(True, noisy))  # content shared
