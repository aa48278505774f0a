"""The transfer learner through the training pipeline and the retrain rule: the settings name the
domains, users active in both domains are held out, promotion is by their transfer NDCG@10."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

from engine.bundle import latest_version
from engine.catalog import Catalog
from engine.features import HashingFeaturizer
from engine.retrain import read_outcomes, retrain_from_snapshot, write_snapshot
from engine.settings import Settings
from engine.support import UserSupport
from engine.trainer import (
    histories_from_events,
    learner_config,
    overlap_users,
    promote_transfer_if_better,
    train_bundle,
    transfer_score,
)
from evaluation.synthetic import PLANTED_SOURCE as SOURCE
from evaluation.synthetic import PLANTED_TARGET as TARGET
from evaluation.synthetic import planted_cross_domain, planted_item
from schemas import Interaction, Item, encode


def settings(tmp_path, **changes) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), transfer_source_domain=SOURCE,
                    transfer_target_domain=TARGET, learner="cd-graph", retrain_min_users=20,
                    retrain_steps=1).replace(**changes)


def catalog() -> Catalog:
    return Catalog(HashingFeaturizer(64, 32))


def with_other_users(events: list[Interaction]) -> list[Interaction]:
    """The planted log plus 300 users who only read (more source than target events: inferring
    the domains from counts would still get them right; the settings name them anyway)."""
    extra = [Interaction(f"x{u}-{j}", f"x{u}", planted_item(SOURCE, u % 4, j), "rate", 4.0,
                         1e5 + 10 * u + j, SOURCE) for u in range(300) for j in range(3)]
    return events + extra


def test_settings_name_the_domains_and_held_out_users_are_cross_domain(tmp_path) -> None:
    s = settings(tmp_path, transfer_source_domain=TARGET, transfer_target_domain=SOURCE)
    events = with_other_users(planted_cross_domain(150))
    result = train_bundle(s, events, catalog(), steps=1)
    # the settings win over the counts (the planted source domain has more events)
    assert result.bundle.learner.config.extra["domains"] == [TARGET, SOURCE]
    assert result.report["domains"] == [TARGET, SOURCE]
    both = set(overlap_users(events, [SOURCE, TARGET]))
    assert len(both) == 150 and result.heldout_users and set(result.heldout_users) <= both
    assert 0 <= result.report["heldout_ndcg"] <= 1
    assert learner_config(s, 5, "cd-graph").extra["domains"] == [TARGET, SOURCE]
    assert "domains" not in learner_config(s, 5, "fomaml").extra
    with pytest.raises(ValueError, match="both"):
        learner_config(s.replace(transfer_source_domain=SOURCE, transfer_target_domain=SOURCE),
                       5, "cd-graph")


def test_transfer_score_ranks_target_items_for_any_learner(tmp_path) -> None:
    s = settings(tmp_path)
    events = planted_cross_domain(200)
    cat = catalog()
    trained = train_bundle(s, events, cat, steps=1, seed=0)
    held = [h for u, h in histories_from_events(events, cat, s).items()
            if u in set(trained.heldout_users)]
    good = transfer_score(trained.bundle, held, cat, [SOURCE, TARGET], s.support_capacity)
    # a single-domain learner without training ranks by its popularity prior
    plain = train_bundle(s.replace(learner="fomaml"), events, cat, steps=0, seed=0).bundle
    other = transfer_score(plain, held, cat, [SOURCE, TARGET], s.support_capacity)
    # planted: 5 of the group's 10 movies are relevant, so ~.7 is the group found, in any order
    assert good > 0.6 and 0 <= other < good - 0.2


def _snapshot(tmp_path, s: Settings, events: list[Interaction]):
    supports: dict[str, UserSupport] = defaultdict(UserSupport)
    for e in events:
        supports[e.user_id].add(e, s.support_capacity, s.dedup_window)
    items = sorted({(e.item_id, e.domain) for e in events})
    return write_snapshot(tmp_path / "snap", sorted((u, x.to_bytes()) for u, x in supports.items()),
                          [encode(Item(i, d)) for i, d in items], [], dict(items),
                          max_users=10_000)[0]


def test_retrain_promotes_by_transfer_ndcg_and_rejects_a_worse_candidate(tmp_path) -> None:
    torch.set_num_threads(1)
    s = settings(tmp_path)
    root = _snapshot(tmp_path, s, planted_cross_domain(200))
    first = retrain_from_snapshot(s, root, seed=1)
    assert first.promoted and first.version.startswith("v1-cd-graph")
    assert first.metric == "heldout_ndcg" and first.candidate_loss > 0.6
    # retrain_steps 0: an untrained candidate (no graph: the prior alone) ranks worse
    worse = retrain_from_snapshot(s.replace(retrain_steps=0), root, seed=2)
    assert not worse.promoted and worse.candidate_loss < worse.incumbent_loss
    assert "transfer NDCG@10 below" in worse.reason
    assert latest_version(s.data_dir).name == first.version
    outcomes = read_outcomes(s.data_dir)
    assert [(o["promoted"], o["metric"]) for o in outcomes] == [(True, "heldout_ndcg"),
                                                                (False, "heldout_ndcg")]


def test_promotion_rule_with_a_non_transfer_incumbent(tmp_path) -> None:
    s = settings(tmp_path)
    events = planted_cross_domain(200)
    cat = catalog()
    cand = train_bundle(s, events, cat, steps=1, seed=0)
    held = [h for u, h in histories_from_events(events, cat, s).items()
            if u in set(cand.heldout_users)]
    incumbent = train_bundle(s.replace(learner="fomaml"), events, cat, steps=0, seed=0).bundle
    promoted, scores = promote_transfer_if_better(cand.bundle, incumbent, held, cat, s.data_dir,
                                                  domains=[SOURCE, TARGET],
                                                  capacity=s.support_capacity)
    assert promoted and scores["candidate"] > scores["incumbent"]
    back, scores = promote_transfer_if_better(incumbent, cand.bundle, held, cat, s.data_dir,
                                              domains=[SOURCE, TARGET],
                                              capacity=s.support_capacity)
    assert not back and scores["candidate"] < scores["incumbent"]
