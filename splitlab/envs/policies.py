"""Reference policies and the one evaluation helper every baseline goes through.

A policy sees the observation and, for the oracle only, the environment itself (the oracle is the
best achievable with the reward model's true values, an upper bound rather than a deployable rule):

- :class:`FixedKPolicy`: always split at k (in the paper preset: move towards k, then stay).
- :class:`RandomPolicy`: a uniform action from its own seeded generator.
- :class:`OraclePolicy`: wireless: the best candidate per step from the true SNR (the reward does
  not depend on earlier actions, so greedy is optimal); paper: dynamic programming over the
  remaining steps of the deterministic (rho, k) dynamics (:class:`~splitlab.envs.paper_dp.PaperDP`).

``evaluate_policy(env_config, policy, seeds=..., traces=...)`` returns the mean episode return;
:func:`held_out_traces` draws channel traces from a seed stream apart from training's.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from splitlab.envs.config import EPISODE_LEN, SplitEnvConfig, make_dynamics
from splitlab.envs.paper_dp import PaperDP
from splitlab.envs.split_env import SplitEnv

HELD_OUT_SEED = 1_000_003
"""Seed offset for held-out evaluation traces, far from the small seeds training uses."""


@runtime_checkable
class Policy(Protocol):
    """Anything that picks actions; ``reset`` is called at the start of every episode."""

    def reset(self, env: SplitEnv) -> None: ...

    def act(self, obs: np.ndarray, env: SplitEnv) -> int: ...


class _CallablePolicy:
    """Wraps ``f(obs) -> action`` (e.g. a trained module's greedy action) as a :class:`Policy`."""

    def __init__(self, fn: Callable[[np.ndarray], int]) -> None:
        self.fn = fn

    def reset(self, env: SplitEnv) -> None:
        pass

    def act(self, obs: np.ndarray, env: SplitEnv) -> int:
        return int(self.fn(obs))


def as_policy(policy: Policy | Callable[[np.ndarray], int]) -> Policy:
    """A :class:`Policy` as is, or a plain ``obs -> action`` callable wrapped into one."""
    if isinstance(policy, Policy):
        return policy
    if callable(policy):
        return _CallablePolicy(policy)
    raise ValueError(f"policy must be a Policy (reset, act) or a callable obs -> action, got {policy!r}")


class FixedKPolicy:
    """Always split at ``k``; in the paper preset, move towards ``k`` (by at most max_move) and stay."""

    def __init__(self, k: int) -> None:
        self.k = int(k)

    def __repr__(self) -> str:
        return f"FixedKPolicy(k={self.k})"

    def reset(self, env: SplitEnv) -> None:
        if env.config.preset == "wireless" and self.k not in env.candidate_ks:
            raise ValueError(f"fixed k={self.k} is not among candidate_ks {list(env.candidate_ks)}")
        if env.config.preset == "paper" and not 1 <= self.k <= env.k_max:
            raise ValueError(f"fixed k={self.k} is outside the paper preset's 1..K_max={env.k_max}")

    def act(self, obs: np.ndarray, env: SplitEnv) -> int:
        if env.config.preset == "wireless":
            return env.candidate_ks.index(self.k)
        if env.config.paper_actions == "absolute":
            return self.k - 1
        m = env.config.max_move
        return int(np.clip(self.k - env.k, -m, m)) + m


class RandomPolicy:
    """Uniform random actions from a generator seeded once at construction."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return "RandomPolicy()"

    def reset(self, env: SplitEnv) -> None:
        pass

    def act(self, obs: np.ndarray, env: SplitEnv) -> int:
        return int(self.rng.integers(env.action_space.n))


class OraclePolicy:
    """The best action from the reward model's true values (see the module docstring)."""

    def __repr__(self) -> str:
        return "OraclePolicy()"

    def reset(self, env: SplitEnv) -> None:
        # One DP memo per env: its values depend only on the env's reward model and settings.
        if env.config.preset == "paper" and (getattr(self, "_dp", None) is None or self._dp.env is not env):
            self._dp = PaperDP(env)

    def act(self, obs: np.ndarray, env: SplitEnv) -> int:
        if env.config.preset == "wireless":
            return int(np.argmax(env.action_rewards()))
        return self._dp.best(env.t, env.rho, env.k)[1]


def reference_policies(env: SplitEnv, seed: int = 0) -> dict[str, Policy]:
    """Every fixed k, random and oracle, by name (``fixed_k=3``, ``random``, ``oracle``)."""
    ks = env.candidate_ks if env.config.preset == "wireless" else range(1, env.k_max + 1)
    out: dict[str, Policy] = {f"fixed_k={k}": FixedKPolicy(k) for k in ks}
    out["random"] = RandomPolicy(seed)
    out["oracle"] = OraclePolicy()
    return out


@dataclass
class Episode:
    """One evaluated episode: its return and each step's info."""

    return_: float
    steps: int
    infos: list[dict[str, float]] = field(default_factory=list)


def rollout(env: SplitEnv, policy: Policy | Callable[[np.ndarray], int], seed: int | None = None,
            options: dict[str, Any] | None = None, keep_infos: bool = False) -> Episode:
    """Run one episode of ``policy`` on ``env`` from ``reset(seed=seed, options=options)``."""
    policy = as_policy(policy)
    obs, _ = env.reset(seed=seed, options=options)
    policy.reset(env)
    total, steps, infos = 0.0, 0, []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy.act(obs, env))
        total += reward
        steps += 1
        done = terminated or truncated
        if keep_infos:
            infos.append(info)
    return Episode(total, steps, infos)


def evaluate_policy(env_config: SplitEnv | SplitEnvConfig | Mapping[str, Any],
                    policy: Policy | Callable[[np.ndarray], int], seeds: Sequence[int] | None = None,
                    traces: Sequence[np.ndarray] | None = None, episodes: int = 10) -> float:
    """Mean return of ``policy`` over episodes.

    Args:
        env_config: an env config (a fresh :class:`SplitEnv` is built) or a built env (reused,
            e.g. to keep a live reward model's cache).
        seeds: one reset seed per episode; None: ``HELD_OUT_SEED + i``.
        traces: wireless preset: one SNR trace per episode (``reset(options={"trace": ...})``),
            e.g. from :func:`held_out_traces`; the seeds then only drive estimation noise and budget.
        episodes: number of episodes when neither seeds nor traces are given.
    """
    env = env_config if isinstance(env_config, SplitEnv) else SplitEnv(env_config)
    if traces is not None:
        if env.config.preset != "wireless":
            raise ValueError("traces apply to the wireless preset only; the paper preset draws rho from its seed")
        n = len(traces)
    else:
        n = len(seeds) if seeds is not None else episodes
    seeds = list(seeds) if seeds is not None else [HELD_OUT_SEED + i for i in range(n)]
    if len(seeds) != n or n == 0:
        raise ValueError(f"need one seed per trace and at least one episode, got {len(seeds)} seeds for {n} episodes")
    returns = [rollout(env, policy, seed=s, options=None if traces is None else {"trace": traces[i]}).return_
               for i, s in enumerate(seeds)]
    return float(np.mean(returns))


def held_out_traces(env_config: SplitEnvConfig | Mapping[str, Any], n: int, seed: int = HELD_OUT_SEED,
                    length: int | None = None) -> list[np.ndarray]:
    """``n`` SNR traces [length] from the config's dynamics, drawn from their own seed stream."""
    cfg = SplitEnvConfig.from_dict(env_config)
    dynamics = make_dynamics(cfg.dynamics)
    length = length or (cfg.episode_len or EPISODE_LEN[cfg.preset]) + 1
    rng = np.random.default_rng(seed)
    return [dynamics.trace(length, rng) for _ in range(n)]
