"""Model-based RL for the split policy: reward surrogate, real-evaluation pool, Dyna loop, RLlib glue.

- :class:`SurrogateEnsemble` (``surrogate``): MLP ensemble (channel value, k) -> log(PPL_k / PPL_clean),
  mean as reward, spread as uncertainty; fit with a held-out split, save/load with its normalisation.
- :class:`EvaluationPool` (``evaluators``): Ray actors holding the real LLM once; cached, counted.
- :class:`DynaLoop` (``dyna``): refresh the surrogate after each RLlib iteration (the training loop calls it).
- ``rllib_env``: the envs as RLlib builds them (one reward model per process; reward kinds ``surrogate``
  and ``counted``); ``agents``: PPO/DQN configs and greedy policies; ``evaluation``: held-out scoring.

The training runner that composes them is :mod:`splitlab.platform.training` (``splitlab train``).
Importing this package registers the reward-model kinds ``surrogate`` and ``counted``.
"""
from __future__ import annotations

from typing import Any

from splitlab.mbrl.evaluators import EvaluationPool, LLMEvaluator, PoolRewardModel
from splitlab.mbrl.rllib_env import CountedRewardModel, register_mbrl_envs
from splitlab.mbrl.surrogate import FitReport, SurrogateConfig, SurrogateEnsemble, fit_on_grid

_LAZY = {"DynaLoop": "dyna", "algorithm_config": "agents", "greedy_policy": "agents"}


def __getattr__(name: str) -> Any:  # the RLlib-importing modules load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"splitlab.mbrl.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'splitlab.mbrl' has no attribute {name!r}")


__all__ = ["CountedRewardModel", "DynaLoop", "EvaluationPool", "FitReport", "LLMEvaluator",
           "PoolRewardModel", "SurrogateConfig", "SurrogateEnsemble", "algorithm_config", "fit_on_grid",
           "greedy_policy", "register_mbrl_envs"]
