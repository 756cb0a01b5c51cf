"""Build environments from plain config dicts, and register them under names RLlib can use.

``make_env({"env": "split", "preset": "paper", "reward_model": {...}})`` builds a SplitEnv;
``"env": "multi_user"`` a MultiUserSplitEnv, ``"env": "sequential"`` the decode-phase
SequentialSplitEnv (one user re-splitting mid-generation; its keys are SequentialConfig's) (default
``split``). ``register_envs()`` registers each with ``ray.tune.register_env`` so that
``config.environment("splitlab-split", env_config=...)`` works on every worker (the classes live in this installed package, so workers can import them).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from splitlab.channel.validation import check_choice

ENV_NAMES = ("split", "multi_user", "sequential")
"""Accepted values of the ``env`` key."""
RLLIB_ENV_IDS = {"split": "splitlab-split", "multi_user": "splitlab-multi-user", "sequential": "splitlab-sequential"}
"""``env`` key -> the name :func:`register_envs` registers with Tune/RLlib."""


def make_env(config: Mapping[str, Any] | None = None):
    """A SplitEnv, MultiUserSplitEnv or SequentialSplitEnv from a flat config dict (``env`` selects which)."""
    cfg = dict(config or {})
    name = check_choice("env", cfg.pop("env", "split"), ENV_NAMES)
    if name == "split":
        from splitlab.envs.split_env import SplitEnv

        return SplitEnv(cfg)
    if name == "sequential":
        from splitlab.envs.sequential import SequentialSplitEnv

        return SequentialSplitEnv(cfg)
    from splitlab.envs.multi_user import MultiUserSplitEnv

    return MultiUserSplitEnv(cfg)


def _creator(name: str):
    def create(env_config: Mapping[str, Any]):
        return make_env({**dict(env_config), "env": name})

    return create


def register_envs() -> dict[str, str]:
    """Register every env with ``ray.tune.register_env``; returns ``{env key: registered name}``."""
    from ray.tune.registry import register_env

    for name, env_id in RLLIB_ENV_IDS.items():
        register_env(env_id, _creator(name))
    return dict(RLLIB_ENV_IDS)
