"""The environments as RLlib sees them: one reward model per process, shared by every env in it.

An env runner steps ``envs_per_env_runner`` envs (users); they all score splits with one reward-model
instance per process, built from the env config's ``reward_model`` spec on first use. That is what
lets the Dyna loop reach the surrogate inside every runner: :func:`broadcast_surrogate` sets the new
weights on that instance, :func:`drain_visits` reads the (k, value) pairs it scored, and a live LLM
reward model is loaded once per runner, not once per env.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from splitlab.envs.reward_models import RewardModel, make_reward_model
from splitlab.mbrl.surrogate import SurrogateEnsemble

ENV_IDS = {"split": "splitlab-mbrl-split", "multi_user": "splitlab-mbrl-multi-user",
           "sequential": "splitlab-mbrl-sequential"}
"""``env`` kind -> the name :func:`register_mbrl_envs` registers with RLlib."""
RESERVED_KEYS = ("num_envs",)
"""env_config keys the envs do not take: RLlib's vector size."""

_SHARED: dict[str, RewardModel] = {}
"""This process's reward models by spec (one per distinct spec)."""


def _spec_key(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


class CountedRewardModel(RewardModel):
    """Another reward model queried like a cached live LLM: values rounded to ``decimals``, each distinct
    (k, rounded value) counted as one real evaluation costing ``seconds_per_eval``.

    For model-free baselines whose true rewards were measured beforehand (a grid of real evaluations at
    the rounded values): the counts are what a cached live reward model would have computed, without
    paying for the LLM again. ``reward_queries`` counts every query (what an uncached one would pay).
    """

    def __init__(self, inner: Any, decimals: int = 0, seconds_per_eval: float = 0.0) -> None:
        self.inner = make_reward_model(inner)
        for name in ("num_layers", "hidden_size", "ppl_clean", "channel", "param", "ks"):
            setattr(self, name, getattr(self.inner, name))
        self.decimals, self.seconds_per_eval = int(decimals), float(seconds_per_eval)
        self.seen: set[tuple[int, float]] = set()
        self.reward_queries = 0

    @property
    def real_evals(self) -> int:  # type: ignore[override]
        return len(self.seen)

    @property
    def real_eval_time_s(self) -> float:  # type: ignore[override]
        return len(self.seen) * self.seconds_per_eval

    def quality(self, k: int, value: float) -> float:
        key = (int(k), round(float(value), self.decimals))
        self.seen.add(key)
        self.reward_queries += 1
        return self.inner.quality(*key)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "counted_decimals": self.decimals}


def shared_reward_model(spec: Mapping[str, Any] | RewardModel) -> RewardModel:
    """The process's one instance for ``spec`` (built on first use); instances pass through."""
    if isinstance(spec, RewardModel):
        return spec
    key = _spec_key(spec)
    model = _SHARED.get(key)
    if model is None:
        model = _SHARED[key] = make_reward_model(dict(spec))
    return model


def make_rllib_env(env_config: Mapping[str, Any]):
    """RLlib env creator: a SplitEnv, MultiUserSplitEnv or SequentialSplitEnv (``env`` key) with the shared
    reward model."""
    from splitlab.envs.registry import make_env

    cfg = {k: v for k, v in dict(env_config).items() if k not in RESERVED_KEYS}
    if "reward_model" not in cfg:
        raise ValueError("env_config needs a reward_model spec")
    cfg["reward_model"] = shared_reward_model(cfg["reward_model"])
    return make_env(cfg)


def register_mbrl_envs() -> dict[str, str]:
    """Register the env creators with RLlib; returns ``{env kind: registered name}``."""
    from ray.tune.registry import register_env

    for kind, env_id in ENV_IDS.items():
        register_env(env_id, _creator(kind))
    return dict(ENV_IDS)


def _creator(kind: str):
    def create(env_config: Mapping[str, Any]):
        return make_rllib_env({**dict(env_config), "env": kind})

    return create


# -- functions run inside env runners (via EnvRunnerGroup.foreach_env_runner) -----------------------
def surrogates(runner: Any) -> list[SurrogateEnsemble]:
    """The surrogates an env runner's envs score with (once each; its envs share one per process), not
    those of other runs that live in the same process (a driver that trained before)."""
    found = {id(m): m for m in env_reward_models(runner) if isinstance(m, SurrogateEnsemble)}
    return list(found.values())


def set_surrogate_state(runner: Any, state: Mapping[str, Any]) -> list[str]:
    """Load weights into the surrogates of ``runner``'s envs; returns their fingerprints."""
    out = []
    for model in surrogates(runner):
        model.set_state(state)
        out.append(model.fingerprint())
    return out


def drain_visits(runner: Any, limit: int | None = None) -> list[tuple[int, float]]:
    """The (k, value) pairs ``runner``'s surrogates scored since the last drain (newest ``limit``)."""
    visits: list[tuple[int, float]] = []
    for model in surrogates(runner):
        visits.extend(model.visited(clear=True))
    return visits[-limit:] if limit else visits


def process_stats() -> dict[str, float]:
    """Real-evaluation counters summed over this process's shared reward models (live LLM ones count)."""
    evals, seconds = 0.0, 0.0
    for model in _SHARED.values():
        evals += float(model.real_evals)
        seconds += float(model.real_eval_time_s)
    return {"mbrl/real_evals": evals, "mbrl/real_eval_time_s": seconds}


def forget_shared_models() -> None:
    """Drop this process's shared reward models, so the next run built here starts from fresh counters
    (a driver that trains several runs with local sampling, e.g. a benchmark, would otherwise count one
    run's evaluations into the next one's)."""
    _SHARED.clear()


def process_points() -> list[tuple[int, float]]:
    """The distinct (k, rounded value) points this process's shared reward models measured (a counted
    model's queries, a live model's cache): env runners' sets are merged into one shared-cache count."""
    points: set[tuple[int, float]] = set()
    for model in _SHARED.values():
        points.update((int(k), float(v)) for k, v in getattr(model, "seen", ()))  # grids and surrogates: none
    return sorted(points)


def env_reward_models(runner: Any) -> list[RewardModel]:
    """The reward model of every env an env runner steps (single-agent vector env or multi-agent env)."""
    env = getattr(runner, "env", None)
    if env is None:
        return []
    base = getattr(env, "unwrapped", env)
    envs = getattr(base, "envs", None) or [base]
    out = []
    for e in envs:
        model = getattr(getattr(e, "unwrapped", e), "reward_model", None)
        if model is not None:
            out.append(model)
    return out


def env_fingerprints(runner: Any) -> list[str]:
    """Fingerprints of the surrogate weights every env of ``runner`` scores with."""
    return [m.fingerprint() for m in env_reward_models(runner) if isinstance(m, SurrogateEnsemble)]
