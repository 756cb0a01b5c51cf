"""What the agent of a training run meets, derived from its spec: channel values, the env, its splits.

Shared by the training modes (``modes``), the held-out evaluation and the demo; every read of the
spec's ``env`` section for these purposes is here.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from splitlab.platform.spec import ExperimentSpec


def channel_sample(spec: ExperimentSpec, seed: int = 12345) -> np.ndarray | None:
    """SNRs [N] the agent will meet: 200 sampled traces of the dynamics (with the users' offsets in the
    multi-user env); None for the paper preset, whose channel is an erasure probability."""
    from splitlab.envs.config import make_dynamics

    if spec.env.preset == "paper":
        return None
    dynamics = make_dynamics(spec.env.dynamics)
    rng = np.random.default_rng(seed)
    traces = [dynamics.trace(51, rng) for _ in range(200)]
    if spec.env_kind == "multi_user":
        low, high = spec.env.user_snr_offset_db
        traces = [t + rng.uniform(float(low), float(high)) for t in traces]
    return np.concatenate(traces)


def value_range(spec: ExperimentSpec, seed: int = 12345) -> tuple[float, float]:
    """Channel values the agent will meet: ``dyna.value_range``, else the 2nd-98th percentile of
    :func:`channel_sample` (wireless) or the paper preset's rho range."""
    if spec.dyna.value_range is not None:
        return spec.dyna.value_range
    snr = channel_sample(spec, seed)
    if snr is None:
        low, high = spec.env.rho_range
        return float(low) * 0.98, float(high) * 1.02
    low, high = np.percentile(snr, [2, 98])
    return float(low), float(high)


def env_config(spec: ExperimentSpec, reward_model: Any) -> dict[str, Any]:
    """The env section as the env takes it (its ``env`` kind apart), scoring with ``reward_model``."""
    cfg = spec.env.to_dict()
    cfg.pop("env")
    cfg["reward_model"] = reward_model
    return cfg


def build_env(spec: ExperimentSpec, reward_model: Any) -> Any:
    """The spec's env (single- or multi-user) in this process, scoring with ``reward_model``."""
    from splitlab.envs import make_env

    return make_env({**env_config(spec, reward_model), "env": spec.env_kind})


def candidate_ks(spec: ExperimentSpec, env: Any) -> list[int]:
    """Split points the policy can reach: 1..K_max for the paper preset, else the env's candidates."""
    if spec.env_kind == "split" and env.config.preset == "paper":
        return list(range(1, env.k_max + 1))
    return list(env.candidate_ks)


def decision_model(env: Any) -> Callable[[float, np.ndarray], np.ndarray] | None:
    """The wireless reward of every split given its quality, for UE budgets across the env's range (None
    for the paper preset, whose candidates move k rather than pick it)."""
    model = getattr(env, "model", None)
    if model is None or not hasattr(model, "decision_rewards"):
        return None
    budgets = np.linspace(*model.config.ue_budget_range, 3)
    return lambda value, quality: model.decision_rewards(value, quality, budgets)
