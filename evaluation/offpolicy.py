"""Offline evaluation of exploration policies.

Two estimators, two kinds of logs:

* **Replay method** (Li, Chu, Langford & Wang, WSDM 2011) on logs whose actions were chosen
  uniformly at random: stream the logged rounds; when the policy picks the logged arm, it sees
  that reward and learns from it, otherwise the round is skipped. With a uniform logger this is
  an unbiased estimate of the policy's online per-round reward. :class:`SimulatedArms` builds
  such a log from an environment with known arms and contexts, so the true regret is known too.
  :func:`movielens_rounds` turns ml-latest-small ratings into rounds (not uniformly logged: see
  its docstring for exactly what that estimate means).
* **IPS / SNIPS** on Kindling's own recommendation log: every slot carries the propensity the
  serving path logged (engine/exploration.py); a slot's reward is the user's later reward on that
  item. The target policy "no exploration" would have shown a slot's item iff it was not an
  explore pick, so its value is estimated by reweighting the logged slots with 1/propensity.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bandits import ArmContext, Policy, create_policy, play
from schemas import Interaction, RatingScale, Recommendation

POLICY_NAMES = ("none", "epsilon", "ucb", "thompson", "thompson-gaussian", "linucb", "lints")
#: A contextual policy's ridge model sees at most this many recent matched rounds (keeps the
#: replay O(T * window * d^2); a user's support set is a bounded window in the same way).
HISTORY_WINDOW = 400


@dataclass
class LoggedRounds:
    """``contexts`` (T, K, d) per-arm features, ``arms`` (T,) logged actions, ``rewards`` (T,)
    in [0, 1], ``propensity`` (T,) of the logged action, and optionally ``expected`` (T, K) true
    expected rewards (only a simulator knows them)."""

    contexts: np.ndarray
    arms: np.ndarray
    rewards: np.ndarray
    propensity: np.ndarray
    expected: np.ndarray | None = None

    @property
    def n_arms(self) -> int:
        return int(self.contexts.shape[1])


@dataclass
class SimulatedArms:
    """K arms; arm ``a`` at round ``t`` pays Bernoulli(sigmoid(bias[a] + theta . x[t, a])).
    The arm biases make arm identity matter (non-contextual policies can learn them); the
    context term rewards contextual policies."""

    n_arms: int = 10
    dim: int = 6
    bias_spread: float = 1.5
    context_weight: float = 1.5
    seed: int = 0

    def log(self, rounds: int) -> LoggedRounds:
        """``rounds`` rounds with a uniform-random logger (propensity 1/K)."""
        rng = np.random.default_rng(self.seed)
        bias = rng.uniform(-self.bias_spread, self.bias_spread, self.n_arms)
        theta = rng.standard_normal(self.dim)
        theta *= self.context_weight / np.linalg.norm(theta)
        x = rng.standard_normal((rounds, self.n_arms, self.dim)) / math.sqrt(self.dim)
        expected = 1.0 / (1.0 + np.exp(-(bias[None] + x @ theta)))
        arms = rng.integers(0, self.n_arms, rounds)
        rewards = (rng.random(rounds) < expected[np.arange(rounds), arms]).astype(float)
        # Contextual policies see the arm's identity too (one-hot), as a model sees an item id.
        ident = np.broadcast_to(np.eye(self.n_arms), (rounds, self.n_arms, self.n_arms))
        contexts = np.concatenate([ident, x], axis=2)
        return LoggedRounds(contexts, arms, rewards, np.full(rounds, 1.0 / self.n_arms), expected)


class _Played:
    """What a policy has learned from the rounds it played on a log: per-arm counts, reward sums
    and squares, and (contextual policies) its recent (context, reward) history. One piece for
    the replay estimate and the online ground truth, so both feed a policy identically."""

    def __init__(self, logged: LoggedRounds, policy: Policy) -> None:
        self.logged, self.policy = logged, policy
        k = logged.n_arms
        self.n, self.total, self.sq = np.zeros(k), np.zeros(k), np.zeros(k)
        self.hist_x: list[np.ndarray] = []
        self.hist_r: list[float] = []

    def context(self, t: int) -> ArmContext:
        """The policy's view before round ``t``."""
        k, d = self.logged.n_arms, self.logged.contexts.shape[2]
        ctx = ArmContext(self.n[None], self.total[None], self.sq[None], np.full((1, k), 0.5),
                         np.ones((1, k), dtype=bool))
        if self.policy.contextual:
            hx = np.array(self.hist_x[-HISTORY_WINDOW:]).reshape(-1, d)
            ctx.x, ctx.hist_x = self.logged.contexts[t][None], hx[None]
            ctx.hist_r = np.array(self.hist_r[-HISTORY_WINDOW:])[None] - 0.5
            ctx.hist_mask = np.ones((1, len(hx)), dtype=bool)
        return ctx

    def update(self, t: int, arm: int, reward: float) -> None:
        self.n[arm] += 1
        self.total[arm] += reward
        self.sq[arm] += reward * reward
        self.hist_x.append(self.logged.contexts[t, arm])
        self.hist_r.append(reward)


def replay_method(logged: LoggedRounds, policy: Policy | str, seed: int = 0) -> dict[str, Any]:
    """Li et al. (2011) replay of ``policy`` over ``logged``. Returns the matched rounds' count,
    the mean reward, and per matched round the cumulative reward and (when the log knows the
    expected rewards) the cumulative regret against the best arm of that round."""
    policy = create_policy(policy) if isinstance(policy, str) else policy
    rng = np.random.default_rng(seed)
    played = _Played(logged, policy)
    rewards: list[float] = []
    regrets: list[float] = []
    for t in range(len(logged.arms)):
        arm = int(play(policy, played.context(t), rng).column[0])
        if arm != int(logged.arms[t]):
            continue
        r = float(logged.rewards[t])
        played.update(t, arm, r)
        rewards.append(r)
        if logged.expected is not None:
            regrets.append(float(logged.expected[t].max() - logged.expected[t, arm]))
    out: dict[str, Any] = {
        "policy": policy.name,
        "matched": len(rewards),
        "mean_reward": float(np.mean(rewards)) if rewards else float("nan"),
        "cumulative_reward": np.cumsum(rewards).tolist(),
    }
    if logged.expected is not None:
        out["cumulative_regret"] = np.cumsum(regrets).tolist()
        out["mean_regret"] = float(np.mean(regrets)) if regrets else float("nan")
    return out


def online(logged: LoggedRounds, policy: Policy | str, seed: int = 0) -> float:
    """Ground truth for the simulator: the policy's mean *expected* reward when it acts on every
    round of ``logged``'s contexts (rewards drawn fresh). Used to check the replay estimate."""
    assert logged.expected is not None
    policy = create_policy(policy) if isinstance(policy, str) else policy
    rng = np.random.default_rng(seed)
    played = _Played(logged, policy)
    got = []
    for t in range(len(logged.arms)):
        arm = int(play(policy, played.context(t), rng).column[0])
        played.update(t, arm, float(rng.random() < logged.expected[t, arm]))
        got.append(logged.expected[t, arm])
    return float(np.mean(got))


def river_reference(name: str, means: np.ndarray, horizon: int, seed: int) -> np.ndarray:
    """Cumulative pseudo-regret of River's own policy (``epsilon``: ``EpsilonGreedy(0.1)``,
    ``ucb``: ``UCB(delta=1)``, ``thompson``: ``ThompsonSampling(Beta)``) on Bernoulli arms: the
    reference that :func:`models.bandits.simulate_bernoulli` is checked against."""
    from river import bandit, proba

    policy = {
        "epsilon": lambda: bandit.EpsilonGreedy(epsilon=0.1, seed=seed),
        "ucb": lambda: bandit.UCB(delta=1.0, seed=seed),
        "thompson": lambda: bandit.ThompsonSampling(reward_obj=proba.Beta(), seed=seed),
    }[name]()
    rng = np.random.default_rng(seed)
    arms = list(range(len(means)))
    best = float(means.max())
    regret = np.zeros(horizon)
    for t in range(horizon):
        arm = policy.pull(arms)
        policy.update(arm, bool(rng.random() < means[arm]))
        regret[t] = best - means[arm]
    return np.cumsum(regret)


# ----------------------------------------------------------------------------- MovieLens
def movielens_rounds(
    data_dir: str | Path, n_arms: int = 20, threshold: float = 4.0
) -> LoggedRounds:
    """ml-latest-small as bandit rounds, stated exactly.

    Arms: the ``n_arms`` most-rated movies. Rounds: every rating of one of those movies, in
    timestamp order; the logged arm is the rated movie, the reward 1 if the rating is at least
    ``threshold`` else 0. Context of arm ``a`` for the rating user: ``[e_a, g_a * p_u]`` where
    ``e_a`` is the arm's one-hot id, ``g_a`` the movie's (normalised) genre indicator vector
    and ``p_u`` the user's running mean of (rating - 3) * genre vector over *earlier* rounds
    (no leakage). The logger here is the
    users' own choice, not uniform, so the replay estimate is a "rate what users chose to
    watch" score; the logged propensity is set to the empirical share of the arm (1/K would
    claim a uniformity that is not there)."""
    import csv

    base = Path(data_dir)
    with (base / "ratings.csv").open(newline="") as f:
        ratings = [(r["userId"], r["movieId"], float(r["rating"]), int(r["timestamp"]))
                   for r in csv.DictReader(f)]
    counts: dict[str, int] = defaultdict(int)
    for _, movie, _, _ in ratings:
        counts[movie] += 1
    arms = sorted(counts, key=lambda m: (-counts[m], int(m)))[:n_arms]
    arm_of = {m: i for i, m in enumerate(arms)}
    genres_of: dict[str, list[str]] = {}
    with (base / "movies.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            if r["movieId"] in arm_of:
                genres_of[r["movieId"]] = r["genres"].split("|")
    vocab = sorted({g for gs in genres_of.values() for g in gs})
    g = np.zeros((n_arms, len(vocab)))
    for m, gs in genres_of.items():
        for name in gs:
            g[arm_of[m], vocab.index(name)] = 1.0
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-9)
    rounds = sorted((r for r in ratings if r[1] in arm_of), key=lambda r: (r[3], r[0], r[1]))
    profile: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(vocab)))
    seen: dict[str, int] = defaultdict(int)
    contexts = np.zeros((len(rounds), n_arms, n_arms + len(vocab)))
    logged = np.zeros(len(rounds), dtype=np.int64)
    rewards = np.zeros(len(rounds))
    for t, (user, movie, rating, _) in enumerate(rounds):
        p = profile[user] / max(seen[user], 1)
        contexts[t] = np.concatenate([np.eye(n_arms), g * p[None]], axis=1)
        a = arm_of[movie]
        logged[t] = a
        rewards[t] = float(rating >= threshold)
        profile[user] += (rating - 3.0) * g[a]
        seen[user] += 1
    share = np.bincount(logged, minlength=n_arms) / len(logged)
    return LoggedRounds(contexts, logged, rewards, share[logged])


# ----------------------------------------------------------------------------- IPS / SNIPS
def slot_rewards(
    recs: Sequence[Recommendation],
    events: Sequence[Interaction],
    horizon: int = 10,
    scale: RatingScale | None = None,
) -> list[tuple[float, float, bool]]:
    """(reward, propensity, explored) per logged slot. A slot's reward is the user's reward on
    that item within their next ``horizon`` events after the recommendation's source event,
    0 if they never touched it."""
    scale = scale or RatingScale()
    by_user: dict[str, list[Interaction]] = defaultdict(list)
    position: dict[str, tuple[str, int]] = {}
    for e in events:
        position[e.event_id] = (e.user_id, len(by_user[e.user_id]))
        by_user[e.user_id].append(e)
    out = []
    for rec in recs:
        if rec.source_event_id not in position:
            continue
        user, at = position[rec.source_event_id]
        later = {e.item_id: e.reward(scale) for e in by_user[user][at + 1 : at + 1 + horizon]}
        for item in rec.items:
            out.append((float(later.get(item.item_id, 0.0)), item.propensity,
                        item.why == "explore"))
    return out


def ips_estimates(slots: Sequence[tuple[float, float, bool]]) -> dict[str, float]:
    """Value per slot of the logging policy (its observed mean) and IPS / SNIPS estimates of the
    no-exploration policy, which shows a logged item with probability 1 iff it is not an
    explore pick."""
    if not slots:
        return {"slots": 0}
    r = np.array([s[0] for s in slots])
    p = np.array([s[1] for s in slots])
    explored = np.array([s[2] for s in slots])
    if np.any(p <= 0):
        raise ValueError("a logged slot has propensity 0: it could never have been shown")
    w = (~explored) / p
    return {
        "slots": int(len(r)),
        "explore_share": float(explored.mean()),
        "logging_reward": float(r.mean()),
        "explore_slot_reward": float(r[explored].mean()) if explored.any() else float("nan"),
        "no_explore_ips": float((w * r).mean()),
        "no_explore_snips": float((w * r).sum() / w.sum()),
        "ips_weight_mean": float(w.mean()),  # ~1 when the propensities are right
    }


def kindling_log(
    events: Sequence[Interaction],
    items: Sequence[Any],
    settings: Any,
    train: Sequence[Interaction] = (),
    steps: int = 0,
    batch: int = 64,
) -> list[Recommendation]:
    """Run Kindling's serving path (``Recommender.process``) over ``events`` and return the
    recommendation log it would publish, with its logged propensities."""
    from engine.bundle import ModelBundle
    from engine.catalog import Catalog
    from engine.features import HashingFeaturizer
    from engine.recommender import Recommender
    from engine.trainer import learner_config, train_bundle

    featurizer = HashingFeaturizer(settings.feature_dim, settings.attribute_dim)
    catalog = Catalog(featurizer)
    catalog.upsert(list(items))
    if train and steps:
        bundle = train_bundle(settings, train, catalog, steps=steps, seed=settings.seed).bundle
    else:
        bundle = ModelBundle.untrained(settings.learner, learner_config(settings))
    rec = Recommender(settings, bundle, catalog, featurizer)
    supports: dict[str, bytes] = {}
    out: list[Recommendation] = []
    for i in range(0, len(events), batch):
        out.extend(rec.process(events[i : i + batch], supports))
    return out


# ----------------------------------------------------------------------------- the report
def _summary(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("matched", "mean_reward", "mean_regret"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = float(np.mean(values))
            out[key + "_sd"] = float(np.std(values))
    return out


def evaluate_policies(
    logged: LoggedRounds, policies: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """Replay every policy with every seed; summary per policy plus seed-0 curves."""
    table: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name in policies:
        runs = [replay_method(logged, name, seed=s) for s in seeds]
        table[name] = _summary(runs)
        curves[name] = {k: runs[0][k] for k in ("cumulative_reward", "cumulative_regret")
                        if k in runs[0]}
    base = table.get("none", {}).get("mean_reward")
    if base:
        for row in table.values():
            row["reward_vs_none"] = row["mean_reward"] / base
    return {"table": table, "curves": curves}


def kindling_ips(
    policies: Sequence[str], seed: int = 0, explore_slots: int = 2, n_users: int = 120
) -> dict[str, Any]:
    """IPS/SNIPS on the recommendation log Kindling's own serving path writes for a synthetic
    stream (planted clusters), one run per policy, untrained model (content + exploration)."""
    from engine.settings import Settings
    from evaluation.synthetic import generate

    data = generate(n_users=n_users, n_items=300, seed=seed)
    events = sorted(data.events, key=lambda e: (e.ts, e.event_id))
    out: dict[str, Any] = {}
    for name in policies:
        settings = Settings(policy=name, explore_slots=explore_slots if name != "none" else 0,
                            seed=seed, partitions=4)
        recs = kindling_log(events, data.items, settings)
        out[name] = ips_estimates(slot_rewards(recs, events))
    return out


def run_bandits(
    out_dir: str | Path,
    *,
    rounds: int = 20000,
    seeds: Sequence[int] = (0, 1, 2),
    movielens: str | Path | None = None,
    policies: Sequence[str] = POLICY_NAMES,
    ips: bool = True,
) -> dict[str, Any]:
    """Everything the ``kindling bandits`` command reports: simulated replay, MovieLens replay,
    Kindling-log IPS; written as ``bandits.json``, ``bandits.md`` and reward/regret plots."""
    report: dict[str, Any] = {"settings": {"rounds": rounds, "seeds": list(seeds),
                                           "policies": list(policies)}}
    env = SimulatedArms(seed=0)
    report["simulated"] = evaluate_policies(env.log(rounds), policies, seeds)
    report["simulated"]["environment"] = vars(env)
    if movielens is not None and (Path(movielens) / "ratings.csv").exists():
        report["movielens"] = evaluate_policies(movielens_rounds(movielens), policies, seeds)
        report["movielens"]["data"] = str(movielens)
    if ips:
        report["kindling_ips"] = kindling_ips([p for p in policies if p != "none"] + ["none"])
    write_bandit_report(report, out_dir)
    return report


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# Exploration policies: offline evaluation", ""]
    for section, title in (("simulated", "Simulated arms, uniform-random log (Li et al. replay)"),
                           ("movielens", "ml-latest-small ratings as rounds (replay method)")):
        if section not in report:
            continue
        lines += [f"## {title}", "", "| policy | matched rounds | mean reward | vs none |"
                  " mean regret |", "|---|---|---|---|---|"]
        for name, row in report[section]["table"].items():
            regret = (f"{row['mean_regret']:.4f} ± {row['mean_regret_sd']:.4f}"
                      if "mean_regret" in row else "n/a")
            vs_none = row.get("reward_vs_none", float("nan"))
            lines.append(f"| {name} | {row['matched']:.0f} | {row['mean_reward']:.4f} ± "
                         f"{row['mean_reward_sd']:.4f} | {vs_none:.3f} | {regret} |")
        lines.append("")
    if "kindling_ips" in report:
        lines += ["## IPS / SNIPS on Kindling's own recommendation log (synthetic stream)", "",
                  "| logging policy | slots | explore share | logged reward/slot |"
                  " explore-slot reward | no-explore IPS | no-explore SNIPS | mean weight |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in report["kindling_ips"].items():
            lines.append(
                f"| {name} | {row['slots']} | {row['explore_share']:.3f} | "
                f"{row['logging_reward']:.4f} | {row['explore_slot_reward']:.4f} | "
                f"{row['no_explore_ips']:.4f} | {row['no_explore_snips']:.4f} | "
                f"{row['ips_weight_mean']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def write_bandit_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bandits.json", "markdown": out / "bandits.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=float))
    paths["markdown"].write_text(render_markdown(report))
    for section in ("simulated", "movielens"):
        if section not in report:
            continue
        for metric in ("cumulative_reward", "cumulative_regret"):
            curves = {k: v[metric] for k, v in report[section]["curves"].items() if metric in v}
            if not curves:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for name, values in curves.items():
                ax.plot(np.arange(1, len(values) + 1), values, label=name)
            ax.set_xlabel("matched round")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_title(f"{section}: {metric.replace('_', ' ')} (seed 0)")
            ax.legend(fontsize=7)
            fig.tight_layout()
            path = out / f"{section}_{metric}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            paths[f"plot:{section}_{metric}"] = path
    return paths
