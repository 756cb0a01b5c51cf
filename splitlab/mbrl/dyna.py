"""Dyna mode: PPO learns on surrogate rewards; after every iteration the surrogate is refreshed.

After each training iteration the training loop (``splitlab.platform.modes.DynaMode``) hands the
algorithm to the run's :class:`DynaLoop` (:meth:`DynaLoop.after_iteration`), which

1. reads from every env runner the (k, channel value) pairs the policy visited (:func:`drain_visits`),
2. scores them with the ensemble and keeps, inside the design range and not yet measured, half where
   the members disagree most (largest spread) and half where a measurement could change the best
   split (:func:`select_decisive`, when the run gives the loop its reward's ``decision`` model),
3. measures up to ``evals_per_iter`` of them on the real LLM with the evaluator pool, never past the
   run's ``budget``,
4. refits the ensemble on every measurement so far and
5. pushes the new weights to every env runner (:func:`broadcast`).

Before training, :meth:`DynaLoop.initial_design` spends ``initial_evals`` on every split at a lattice
of the channel values the agent will meet (:func:`channel_lattice`; the clean reference perplexity
counts as one), so the first iteration already learns on a surrogate that has seen each split's curve.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from splitlab.mbrl.evaluators import EvaluationPool
from splitlab.mbrl.surrogate import FitReport, SurrogateEnsemble

def channel_lattice(ks: Sequence[int], quantile: Callable[[np.ndarray], np.ndarray], n: int,
                    rng: np.random.Generator) -> list[tuple[int, float]]:
    """``n`` (k, value) points: every split gets its share, its values on a lattice of the channel's
    quantiles (``quantile(q)`` for q in (0, 1)) rotated by a random offset per split, so each split's
    curve is covered where the agent will act and the splits together sample many channel values."""
    ks = sorted(set(int(k) for k in ks))
    per = [n // len(ks) + (i < n % len(ks)) for i in range(len(ks))]
    points = []
    for k, m in zip(ks, per):
        if m:
            q = (np.arange(m) + rng.uniform(0, 1)) / m
            points += [(k, float(v)) for v in quantile(q)]
    return points


def select_uncertain(surrogate: SurrogateEnsemble, points: Sequence[tuple[int, float]], n: int,
                     pool: EvaluationPool, value_range: tuple[float, float] | None = None
                     ) -> tuple[list[tuple[int, float]], np.ndarray]:
    """The ``n`` unmeasured visited points where the ensemble members disagree most.

    Points are merged after the pool's rounding (that is what a measurement returns). Points outside
    ``value_range`` are skipped: the rare tail channels a long run visits are where an ensemble always
    disagrees most, and measuring them bought nothing on SmolLM2 (the decision there is clear).
    Weighting the spread by visit counts did worse than the plain spread. Returns (points, spread [n]).
    """
    if n <= 0 or not points:
        return [], np.zeros(0)
    cand = _candidates(points, pool, value_range)
    if not cand:
        return [], np.zeros(0)
    ks = np.array([k for k, _ in cand])
    vs = np.array([v for _, v in cand])
    std = surrogate.spread(surrogate.features(ks, vs))  # [C], members' disagreement in the fitted space
    order = np.argsort(-std, kind="stable")[:n]
    return [cand[i] for i in order], std[order]


Decision = Callable[[float, np.ndarray], np.ndarray]
"""``decision(value, quality [K]) -> rewards [B, K]``: the reward of every candidate split at channel
``value`` given its quality term log(PPL_k / PPL_clean), for B representative users (UE budgets).
Each split's reward depends on its own quality only."""
OPTIMISM = 2.0
"""Standard deviations of optimism :func:`select_decisive` grants a point's quality."""


def _candidates(points: Sequence[tuple[int, float]], pool: EvaluationPool,
                value_range: tuple[float, float] | None) -> list[tuple[int, float]]:
    """Distinct visited points after the pool's rounding, inside ``value_range``, not yet measured."""
    return list(dict.fromkeys(
        key for key in (pool.key(k, v) for k, v in points
                        if value_range is None or value_range[0] <= v <= value_range[1])
        if key not in pool.cache))  # measure at the rounded value: what the cache stores


def select_decisive(surrogate: SurrogateEnsemble, points: Sequence[tuple[int, float]], n: int,
                    pool: EvaluationPool, ks: Sequence[int], decision: Decision,
                    value_range: tuple[float, float] | None = None, skip: Sequence[tuple[int, float]] = ()
                    ) -> tuple[list[tuple[int, float]], np.ndarray]:
    """The ``n`` unmeasured visited points whose measurement most plausibly changes the best split.

    A point (k, v) scores the reward k would get at v if its quality were ``OPTIMISM`` standard
    deviations better than the ensemble's mean, minus the best mean reward among all candidate
    splits at v, maximised over the decision model's users. Points far below the best split, or
    well known, score low: the spread alone would spend evaluations on splits no policy picks.
    Returns (points, scores [n]).
    """
    ks = np.asarray(ks)
    index = {int(k): i for i, k in enumerate(ks)}
    skip = set(skip)
    cand = [p for p in _candidates(points, pool, value_range) if p not in skip and p[0] in index]
    if n <= 0 or not cand:
        return [], np.zeros(0)
    gains = np.empty(len(cand))
    by_value: dict[float, np.ndarray] = {}
    for j, (k, v) in enumerate(cand):
        if v not in by_value:
            members = surrogate.predict_members(surrogate.features(ks, np.full(ks.shape, v)))  # [M, K]
            mean, std = members.mean(0), members.std(0)
            # A split's reward depends on its own quality only, so one call scores every split's hope:
            # quality OPTIMISM std better (lower log-PPL ratio) against the best mean reward per user.
            hopeful = decision(v, mean - OPTIMISM * std)  # [B, K]
            by_value[v] = hopeful - decision(v, mean).max(1, keepdims=True)
        gains[j] = float(by_value[v][:, index[k]].max())
    order = np.argsort(-gains, kind="stable")[:n]
    return [cand[i] for i in order], gains[order]


class DynaLoop:
    """The surrogate, its training data, the evaluator pool and the real-evaluation budget of one run.

    Args:
        surrogate: the ensemble to refit (its weights are what the env runners receive).
        pool: real LLM evaluations (counts and caches them).
        ks: split points the policy can choose (where measurements may go).
        value_range: channel values (SNR dB or rho) of the initial design and of the fill-in points.
        initial_evals, evals_per_iter, budget, candidates: see ``splitlab.platform.spec.DynaSpec``.
        seed: seed of the design and of the fill-in draws.
        channel_sample: channel values the agent will meet [N]: the initial design sits at their
            quantiles (None: spread evenly over ``value_range``).
        decision: the reward of every split given its quality (see :data:`Decision`); with it half of
            each iteration's evaluations go to :func:`select_decisive`, without it all to the spread.
    """

    def __init__(self, surrogate: SurrogateEnsemble, pool: EvaluationPool, ks: Sequence[int],
                 value_range: tuple[float, float], initial_evals: int = 16, evals_per_iter: int = 8,
                 budget: int = 64, candidates: int = 4096, seed: int = 0, decision: Decision | None = None,
                 channel_sample: np.ndarray | None = None) -> None:
        self.decision = decision
        sample = None if channel_sample is None else np.asarray(channel_sample, dtype=np.float64)
        self.channel_sample = None if sample is None else sample[(sample >= value_range[0]) & (sample <= value_range[1])]
        self.surrogate = surrogate
        self.pool = pool
        self.ks = tuple(int(k) for k in ks)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.initial_evals, self.evals_per_iter = int(initial_evals), int(evals_per_iter)
        self.budget, self.candidates = int(budget), int(candidates)
        self.rng = np.random.default_rng([seed, 7])
        self.data_k: list[int] = []
        self.data_v: list[float] = []
        self.data_ppl: list[float] = []
        self.iterations = 0
        self.history: list[dict[str, float]] = []
        self.last: dict[str, float] = {}

    # -- budget ---------------------------------------------------------------------------------
    @property
    def spent(self) -> int:
        return int(self.pool.real_evals)

    @property
    def remaining(self) -> int:
        return max(0, self.budget - self.spent)

    # -- measurements -----------------------------------------------------------------------------
    def _measure(self, points: Sequence[tuple[int, float]]) -> None:
        points = list(points)[: self.remaining]
        if not points:
            return
        ppl = self.pool.evaluate(points)
        for (k, v), p in zip(points, ppl):
            key = self.pool.key(k, v)
            self.data_k.append(key[0])
            self.data_v.append(key[1])
            self.data_ppl.append(float(p))

    def fit(self) -> FitReport:
        return self.surrogate.fit_points(self.data_k, self.data_v, self.data_ppl)

    def initial_design(self) -> FitReport:
        """Measure the reference and the lattice design (``initial_evals`` in all), then fit."""
        self.pool.reference()
        n = min(self.initial_evals, self.budget) - self.spent
        low, high = self.value_range
        quantile = ((lambda q: np.quantile(self.channel_sample, q)) if self.channel_sample is not None
                    and self.channel_sample.size else (lambda q: low + (high - low) * q))
        design = channel_lattice(self.ks, quantile, max(n, 0), self.rng)
        self._measure([p for p in design if not self.pool.is_cached(*p)])
        report = self.fit()
        self.last = {**self.metrics(), **report.as_metrics()}
        return report

    def fill_in(self, n: int) -> list[tuple[int, float]]:
        """Random points in the design box, for when the policy visited fewer new points than the budget allows."""
        return [(int(self.rng.choice(self.ks)), float(self.rng.uniform(*self.value_range))) for _ in range(4 * n + 16)]

    def update(self, visited: Sequence[tuple[int, float]]) -> dict[str, float]:
        """One refresh from the visited points: select, measure, refit. Returns this step's metrics."""
        start = time.perf_counter()
        self.iterations += 1
        visited = list(visited)[-self.candidates:]
        n = min(self.evals_per_iter, self.remaining)
        # Half by disagreement (learn the surface), half by decision value (settle the best split): see
        # benchmarks/surrogate_selection.py for how each choice scores on SmolLM2.
        n_spread = n if self.decision is None else n - n // 2
        chosen, std = select_uncertain(self.surrogate, visited, n_spread, self.pool, self.value_range)
        if self.decision is not None:
            decisive, _ = select_decisive(self.surrogate, visited, n - len(chosen), self.pool, self.ks,
                                          self.decision, self.value_range, skip=chosen)
            chosen = chosen + decisive
            std = self.surrogate.spread(self.surrogate.features(np.array([k for k, _ in chosen]),
                                                                np.array([v for _, v in chosen]))) \
                if chosen else np.zeros(0)
        if len(chosen) < n:  # the policy explored little: spend the rest where the box is least known
            extra, extra_std = select_uncertain(self.surrogate, self.fill_in(n - len(chosen)), n - len(chosen),
                                                self.pool, self.value_range)
            extra = [p for p in extra if p not in chosen]
            chosen, std = chosen + extra, np.concatenate([std, extra_std[: len(extra)]])
        # Error of the surrogate the policy just trained on, at the points about to be measured.
        before = self.spent
        self._measure(chosen)
        new = self.spent - before
        metrics = {"mbrl/visited": float(len(visited)), "mbrl/new_evals": float(new),
                   "mbrl/selected_std_mean": float(std.mean()) if std.size else 0.0}
        if new:
            ks = np.array(self.data_k[-new:])
            vs = np.array(self.data_v[-new:])
            y = np.log(np.array(self.data_ppl[-new:]) / self.surrogate.ppl_clean)
            pred, _ = self.surrogate.predict(self.surrogate.features(ks, vs))
            metrics["mbrl/surrogate_mae_new_points"] = float(np.abs(pred - y).mean())
            metrics.update(self.fit().as_metrics())
        elif self.surrogate.report is not None:
            metrics.update(self.surrogate.report.as_metrics())
        metrics.update(self.metrics())
        metrics["mbrl/update_s"] = time.perf_counter() - start
        self.last = metrics
        self.history.append(metrics)
        return metrics

    def metrics(self) -> dict[str, float]:
        return {**self.pool.stats(), "mbrl/budget_left": float(self.remaining),
                "mbrl/surrogate_points": float(len(self.data_ppl))}

    def after_iteration(self, algorithm: Any) -> dict[str, float]:
        """After one ``algorithm.train()``: visits from every env runner -> update -> broadcast the weights."""
        remote = algorithm.env_runner_group.num_remote_env_runners() > 0
        visits = algorithm.env_runner_group.foreach_env_runner(
            _drain, kwargs=None, local_env_runner=not remote) if self.remaining else []
        visited = [p for per_runner in visits for p in per_runner]
        self.rng.shuffle(visited)  # runners come in order; candidates keep a mix of all of them
        metrics = self.update(visited) if self.remaining else {**self.last, **self.metrics(), "mbrl/new_evals": 0.0}
        if metrics.get("mbrl/new_evals"):
            broadcast(algorithm, self.surrogate)
        return metrics

    # -- checkpoint state ---------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"surrogate": self.surrogate.get_state(), "pool": self.pool.get_state(),
                "data": [self.data_k, self.data_v, self.data_ppl], "iterations": self.iterations,
                "history": self.history, "last": self.last, "rng": self.rng.bit_generator.state}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.surrogate.set_state(state["surrogate"])
        self.pool.set_state(state["pool"])
        ks, vs, ppl = state["data"]
        self.data_k, self.data_v, self.data_ppl = [int(k) for k in ks], [float(v) for v in vs], [float(p) for p in ppl]
        self.iterations = int(state["iterations"])
        self.history = list(state["history"])
        self.last = dict(state["last"])
        self.rng.bit_generator.state = state["rng"]


def _drain(runner: Any) -> list[tuple[int, float]]:
    from splitlab.mbrl.rllib_env import drain_visits

    return drain_visits(runner)


def broadcast(algorithm: Any, surrogate: SurrogateEnsemble) -> list[list[str]]:
    """Push the ensemble's weights into every env runner (and the local one); returns their fingerprints."""
    state = surrogate.get_state()

    def apply(runner: Any) -> list[str]:
        from splitlab.mbrl.rllib_env import set_surrogate_state

        return set_surrogate_state(runner, state)

    return algorithm.env_runner_group.foreach_env_runner(apply, local_env_runner=True)
