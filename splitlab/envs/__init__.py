"""Environments for choosing the split point: gymnasium SplitEnv, multi-user RLlib env, reward models.

Start with :class:`SplitEnv` (presets ``paper`` and ``wireless``) and :func:`make_env`; reward models
are the swap point (:class:`RewardModel`: grid, live LLM, surrogate); :func:`evaluate_policy` scores
any policy against the reference ones. ``MultiUserSplitEnv`` imports RLlib, so it loads on first use.
"""
from __future__ import annotations

from typing import Any

from splitlab.envs.config import PRESETS, SplitEnvConfig, make_dynamics
from splitlab.envs.device import DeviceModel, Latency
from splitlab.envs.paper_dp import PaperDP, PaperPlan
from splitlab.envs.policies import (
    FixedKPolicy,
    OraclePolicy,
    Policy,
    RandomPolicy,
    as_policy,
    evaluate_policy,
    held_out_traces,
    reference_policies,
    rollout,
)
from splitlab.envs.quality_grid import QualityGrid
from splitlab.envs.registry import ENV_NAMES, RLLIB_ENV_IDS, make_env, register_envs
from splitlab.envs.reward_models import (
    REWARD_MODEL_KINDS,
    GridRewardModel,
    LiveLLMRewardModel,
    RewardModel,
    SurrogateRewardModel,
    make_reward_model,
    register_reward_model,
)
from splitlab.envs.rewards import RewardTerms, paper_reward, wireless_reward
from splitlab.envs.split_env import SplitEnv
from splitlab.envs.synthetic import synthetic_grid

_LAZY = {"MultiUserSplitEnv", "MultiUserConfig", "SHARED_MODULE_ID", "shared_policy_mapping_fn"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from splitlab.envs import multi_user

        return getattr(multi_user, name)
    raise AttributeError(f"module 'splitlab.envs' has no attribute {name!r}")


__all__ = [
    "ENV_NAMES", "PRESETS", "REWARD_MODEL_KINDS", "RLLIB_ENV_IDS", "DeviceModel", "FixedKPolicy", "GridRewardModel",
    "Latency", "LiveLLMRewardModel", "MultiUserConfig", "MultiUserSplitEnv", "OraclePolicy", "PaperDP",
    "PaperPlan", "Policy", "QualityGrid",
    "RandomPolicy", "RewardModel", "RewardTerms", "SHARED_MODULE_ID", "SplitEnv", "SplitEnvConfig",
    "SurrogateRewardModel", "as_policy", "evaluate_policy", "held_out_traces", "make_dynamics", "make_env",
    "make_reward_model", "paper_reward", "reference_policies", "register_envs", "register_reward_model", "rollout",
    "shared_policy_mapping_fn", "synthetic_grid", "wireless_reward",
]
