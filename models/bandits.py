"""Exploration policies: epsilon-greedy, UCB1, Thompson sampling (Beta / Gaussian), LinUCB and
linear Thompson sampling, vectorised over a micro-batch of users and a pool of candidate arms.

Pure numpy: no Kafka, no RocksDB. :mod:`engine.exploration` feeds them per-item statistics and the
adapted model's scores; :mod:`evaluation.offpolicy` drives them on simulated arms and logs.

Why hand-written rather than ``river.bandit``: River's policies keep one Python object per arm,
pull one arm for one decision at a time and keep their state in Python objects with no
compact codec of their own. Here one
call decides for ``B`` users x ``M`` candidate arms at once, the arm statistics live in RocksDB as
three numbers per arm (see :mod:`engine.exploration`), the prior mean of every arm comes from the
user's adapted model, randomness must be seeded per (user, event) for worker/replay parity, and
the propensity of every choice must be reported. River's ``UCB`` / ``ThompsonSampling`` /
``EpsilonGreedy`` are used as reference implementations in the tests and the offline evaluation
(:func:`evaluation.offpolicy.river_reference`).

Every policy answers one question through :meth:`Policy.choose`: given the arms still available
in each row, which arm does the *exploration branch* pick, and with which probability. The common
shapes: ``B`` rows (users), ``M`` candidate arms per row, ``d`` embedding width, ``S`` support.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

#: Thompson propensities are Monte-Carlo frequencies over this many posterior draws.
THOMPSON_DRAWS = 64


@dataclass
class ArmContext:
    """Everything a policy may look at for ``B`` rows x ``M`` candidate arms.

    ``n``/``total``/``sq``: per-arm count, reward sum and sum of squared rewards (rewards in
    [0, 1]). ``prior``: the model's expected reward per arm in [0, 1] (0.5 when there is no
    model). ``available``: arms that may still be picked. Contextual policies also read ``x``
    (B, M, d) arm embeddings and the row's history ``hist_x`` (B, S, d), ``hist_r`` (B, S)
    residual rewards (reward minus the prior of that arm) and ``hist_mask`` (B, S).
    """

    n: np.ndarray
    total: np.ndarray
    sq: np.ndarray
    prior: np.ndarray
    available: np.ndarray
    x: np.ndarray | None = None
    hist_x: np.ndarray | None = None
    hist_r: np.ndarray | None = None
    hist_mask: np.ndarray | None = None
    ridge: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # cached by LinUCB

    @property
    def shape(self) -> tuple[int, int]:
        return self.n.shape  # type: ignore[return-value]


@dataclass
class Choice:
    """Picked column per row (-1 when nothing was available) and its probability under the
    policy's exploration branch."""

    column: np.ndarray  # (B,) int64
    probability: np.ndarray  # (B,) float64


class Policy:
    """Base class. ``prior_strength`` is how many pseudo-observations the model's prior counts
    for when it is blended with the observed per-arm rewards."""

    name: ClassVar[str] = "base"
    contextual: ClassVar[bool] = False

    def __init__(self, prior_strength: float = 2.0) -> None:
        self.prior_strength = prior_strength

    def posterior_mean(self, ctx: ArmContext) -> np.ndarray:
        k = self.prior_strength
        return (ctx.total + k * ctx.prior) / (ctx.n + k)

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        """(draws, B, M) arm scores; the argmax over available arms of draw 0 is the pick."""
        raise NotImplementedError

    def choose(self, ctx: ArmContext, rng: np.random.Generator) -> Choice:
        draws = THOMPSON_DRAWS if self.randomised else 1
        scores = self.index(ctx, rng, draws)
        return _argmax_choice(scores, ctx.available)

    randomised: ClassVar[bool] = False


def _argmax_choice(scores: np.ndarray, available: np.ndarray) -> Choice:
    """Pick = argmax of draw 0; probability = share of draws whose argmax is the pick (1 for a
    deterministic index). Ties break towards the lower column (the model's better-ranked arm)."""
    masked = np.where(available[None], scores, -np.inf)
    winners = masked.argmax(axis=2)  # (D, B)
    pick = winners[0]
    prob = (winners == pick[None]).mean(axis=0)
    none = ~available.any(axis=1)
    pick = np.where(none, -1, pick)
    prob = np.where(none, 0.0, prob)
    return Choice(pick.astype(np.int64), prob.astype(np.float64))


class NoExploration(Policy):
    """Greedy on the posterior mean: the baseline every other policy is compared against."""

    name = "none"

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        return self.posterior_mean(ctx)[None]


class EpsilonGreedy(Policy):
    """The exploration branch picks uniformly among available arms (the greedy branch is the
    caller's: the model's next-best item). ``epsilon`` is used by the caller as the branch
    probability; :meth:`choose` is the uniform part only, with its exact probability."""

    name = "epsilon"

    def __init__(self, prior_strength: float = 2.0, epsilon: float = 0.1) -> None:
        super().__init__(prior_strength)
        self.epsilon = epsilon

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        return rng.random((draws, *ctx.shape))

    def choose(self, ctx: ArmContext, rng: np.random.Generator) -> Choice:
        choice = _argmax_choice(self.index(ctx, rng, 1), ctx.available)
        count = ctx.available.sum(axis=1)
        choice.probability = np.where(count > 0, 1.0 / np.maximum(count, 1), 0.0)
        return choice


class UCB1(Policy):
    """Auer et al. (2002): posterior mean + c * sqrt(2 ln t / n); ``t`` is the total number of
    pulls seen in the row's arms (at least 1), ``n`` counts the prior as pseudo-pulls."""

    name = "ucb"

    def __init__(self, prior_strength: float = 2.0, c: float = 1.0) -> None:
        super().__init__(prior_strength)
        self.c = c

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        t = np.maximum(ctx.n.sum(axis=1, keepdims=True), 1.0) + 1.0
        bonus = self.c * np.sqrt(2.0 * np.log(t) / (ctx.n + self.prior_strength))
        return (self.posterior_mean(ctx) + bonus)[None]


class BetaThompson(Policy):
    """Thompson sampling with a Beta posterior per arm (clicks: rewards in [0, 1] counted as
    fractional successes). The model's prior is ``prior_strength`` pseudo-observations."""

    name = "thompson"
    randomised = True

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        k = self.prior_strength
        alpha = 1.0 + k * ctx.prior + ctx.total
        beta = 1.0 + k * (1.0 - ctx.prior) + np.maximum(ctx.n - ctx.total, 0.0)
        return rng.beta(alpha, beta, size=(draws, *ctx.shape))


class GaussianThompson(Policy):
    """Thompson sampling with a Gaussian posterior on the mean reward (ratings): the prior mean
    is the model's, its weight ``prior_strength``; the noise variance is the arm's sample
    variance shrunk towards ``noise`` (the variance of a rating mapped to [0, 1])."""

    name = "thompson-gaussian"
    randomised = True

    def __init__(self, prior_strength: float = 2.0, noise: float = 0.05) -> None:
        super().__init__(prior_strength)
        self.noise = noise

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        k = self.prior_strength
        mean = self.posterior_mean(ctx)
        n = ctx.n
        spread = (ctx.sq - ctx.total**2 / np.maximum(n, 1)) / np.maximum(n - 1, 1)
        sample_var = np.where(n > 1, spread, self.noise)
        var = (np.maximum(sample_var, 0.0) * n + self.noise * k) / (n + k)
        sd = np.sqrt(var / (n + k))
        return mean[None] + sd[None] * rng.standard_normal((draws, *ctx.shape))


class LinUCB(Policy):
    """Li et al. (2010) LinUCB on residuals, one ridge model per row (user).

    The mean is the model's prior plus a linear correction ``x . theta`` fitted to the row's
    history residuals; the bonus ``alpha * sqrt(x^T A^-1 x)`` is large for arms whose embedding
    the user's history does not cover, and shrinks as the history (support set) grows: this is
    the per-user decay of exploration. ``A = lam * I + X^T X`` is built from the history on the
    fly, so no per-user matrix is stored.
    """

    name = "linucb"
    contextual = True

    def __init__(self, prior_strength: float = 2.0, alpha: float = 0.5, lam: float = 1.0) -> None:
        super().__init__(prior_strength)
        self.alpha = alpha
        self.lam = lam

    def _ridge(self, ctx: ArmContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean (B, M), width (B, M), A^-1 (B, d, d)) of the per-row ridge regression."""
        assert ctx.x is not None and ctx.hist_x is not None
        assert ctx.hist_r is not None and ctx.hist_mask is not None
        if ctx.ridge is not None:  # availability changes between slots, the ridge does not
            return ctx.ridge
        d = ctx.x.shape[2]
        hx = ctx.hist_x * ctx.hist_mask[..., None]
        a = self.lam * np.eye(d)[None] + hx.transpose(0, 2, 1) @ hx
        a_inv = np.linalg.inv(a)
        b = (hx.transpose(0, 2, 1) @ (ctx.hist_r * ctx.hist_mask)[..., None])[..., 0]
        theta = (a_inv @ b[..., None])[..., 0]
        mean = ctx.prior + (ctx.x @ theta[..., None])[..., 0]
        width = np.sqrt(np.maximum(((ctx.x @ a_inv) * ctx.x).sum(axis=2), 0.0))
        ctx.ridge = (mean, width, a_inv)
        return ctx.ridge

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        mean, width, _ = self._ridge(ctx)
        return (mean + self.alpha * width)[None]


class LinearThompson(LinUCB):
    """Agrawal & Goyal (2013) linear Thompson sampling: theta ~ N(theta_hat, v^2 A^-1), with
    the same per-row ridge model as :class:`LinUCB`."""

    name = "lints"
    randomised = True

    def index(self, ctx: ArmContext, rng: np.random.Generator, draws: int) -> np.ndarray:
        mean, _, a_inv = self._ridge(ctx)
        chol = np.linalg.cholesky(a_inv)  # (B, d, d)
        z = rng.standard_normal((draws, chol.shape[0], chol.shape[1]))
        delta = (chol[None] @ z[..., None])[..., 0] * self.alpha  # (draws, B, d)
        assert ctx.x is not None
        return mean[None] + (ctx.x[None] @ delta[..., None])[..., 0]


POLICIES: dict[str, Callable[..., Policy]] = {
    cls.name: cls
    for cls in (NoExploration, EpsilonGreedy, UCB1, BetaThompson, GaussianThompson, LinUCB,
                LinearThompson)
}


def create_policy(name: str, **kwargs: float) -> Policy:
    """A policy by name (``KINDLING_POLICY`` / ``--policy``)."""
    try:
        return POLICIES[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None


@dataclass
class ArmStats:
    """Per-arm sufficient statistics for a plain K-armed problem (simulation helper)."""

    n: np.ndarray
    total: np.ndarray
    sq: np.ndarray = field(default=None)  # type: ignore[assignment]

    @classmethod
    def zeros(cls, k: int) -> ArmStats:
        return cls(np.zeros(k), np.zeros(k), np.zeros(k))

    def update(self, arm: int, reward: float) -> None:
        if not (np.isfinite(reward) and 0.0 <= reward <= 1.0):
            raise ValueError(f"reward {reward!r} outside [0, 1]")
        self.n[arm] += 1
        self.total[arm] += reward
        self.sq[arm] += reward * reward

    def context(self, prior: float = 0.5) -> ArmContext:
        k = self.n.shape[0]
        return ArmContext(self.n[None], self.total[None], self.sq[None],
                          np.full((1, k), prior), np.ones((1, k), dtype=bool))


def play(policy: Policy, ctx: ArmContext, rng: np.random.Generator) -> Choice:
    """One classic bandit step: epsilon-greedy explores with its own ``epsilon`` and is greedy
    on the posterior mean otherwise; every other policy is its own index."""
    if isinstance(policy, EpsilonGreedy):
        greedy = _argmax_choice(NoExploration(policy.prior_strength).index(ctx, rng, 1),
                                ctx.available)
        uniform = policy.choose(ctx, rng)
        explore = rng.random(greedy.column.shape) < policy.epsilon
        column = np.where(explore, uniform.column, greedy.column)
        prob = policy.epsilon * uniform.probability + (1 - policy.epsilon) * (
            column == greedy.column)
        return Choice(column, prob)
    return policy.choose(ctx, rng)


def simulate_bernoulli(
    policy: Policy, means: np.ndarray, horizon: int, seed: int
) -> np.ndarray:
    """Cumulative pseudo-regret (best mean minus chosen arm's mean) of ``policy`` on Bernoulli
    arms with ``means`` over ``horizon`` pulls."""
    rng = np.random.default_rng(seed)
    stats = ArmStats.zeros(len(means))
    best = float(means.max())
    regret = np.zeros(horizon)
    for t in range(horizon):
        arm = int(play(policy, stats.context(), rng).column[0])
        stats.update(arm, float(rng.random() < means[arm]))
        regret[t] = best - means[arm]
    return np.cumsum(regret)
