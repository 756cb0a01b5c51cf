"""RLlib algorithm configs (new API stack) for the split policy, and the trained policy as a function.

:func:`algorithm_config` turns an ``algorithm:`` spec section into a ``PPOConfig`` or ``DQNConfig``
on one of the envs of :mod:`splitlab.mbrl.rllib_env`; :func:`greedy_policy` turns a trained
``RLModule`` into ``obs [D] -> action`` for evaluation (the most likely action, no exploration).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def algorithm_config(algo: Any, env_config: Mapping[str, Any], env_kind: str = "split") -> Any:
    """A PPOConfig / DQNConfig for ``algo`` (an ``AlgorithmSpec``) on the registered env ``env_kind``.

    Learning happens in the driver (one local learner); sampling on ``algo.num_env_runners`` actors
    with ``algo.env_runner_cpus`` CPUs each, ``algo.envs_per_env_runner`` users per runner.
    """
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from splitlab.mbrl.rllib_env import ENV_IDS, register_mbrl_envs

    register_mbrl_envs()
    if algo.name == "ppo":
        from ray.rllib.algorithms.ppo import PPOConfig

        config = PPOConfig().training(lr=algo.lr, gamma=algo.gamma, train_batch_size_per_learner=algo.train_batch_size,
                                      minibatch_size=algo.minibatch_size, num_epochs=algo.num_epochs,
                                      entropy_coeff=algo.entropy_coeff)
        model = DefaultModelConfig(fcnet_hiddens=list(algo.hidden), vf_share_layers=False)
    else:
        from ray.rllib.algorithms.dqn import DQNConfig

        config = (DQNConfig()
                  .training(lr=algo.lr, gamma=algo.gamma, train_batch_size_per_learner=algo.minibatch_size,
                            epsilon=[(0, 1.0), (algo.epsilon_timesteps, 0.02)], n_step=1, double_q=True,
                            dueling=True, target_network_update_freq=500,
                            num_steps_sampled_before_learning_starts=min(1000, algo.train_batch_size),
                            training_intensity=1.0,  # each sampled step replayed about once
                            replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": 50000,
                                                  "alpha": 0.6, "beta": 0.4})
                  .reporting(min_sample_timesteps_per_iteration=algo.train_batch_size))
        model = DefaultModelConfig(fcnet_hiddens=list(algo.hidden))
    fragment = algo.rollout_fragment_length
    if algo.name == "dqn" and fragment == "auto":
        fragment = 16  # fewer, larger sampling rounds: RLlib's auto value of 1 makes a remote call per step
    config = (config
              .environment(ENV_IDS[env_kind], env_config=dict(env_config))
              .env_runners(num_env_runners=algo.num_env_runners, num_envs_per_env_runner=algo.envs_per_env_runner,
                           num_cpus_per_env_runner=algo.env_runner_cpus, rollout_fragment_length=fragment)
              .learners(num_learners=0)
              .rl_module(model_config=model)
              .debugging(seed=algo.seed, log_level="WARN"))
    if env_kind == "multi_user":
        from splitlab.envs.multi_user import SHARED_MODULE_ID, shared_policy_mapping_fn

        config = config.multi_agent(policies={SHARED_MODULE_ID}, policy_mapping_fn=shared_policy_mapping_fn)
    return config


def build_algorithm(config: Any, logdir: str | Path) -> Any:
    """``config.build_algo()`` with RLlib's own result folder under ``logdir`` (never ``~/ray_results``).

    Ray 2.60 has no public option for this: ``AlgorithmConfig.debugging`` lost ``logger_creator`` and
    ``logger_config``, and a standalone Trainable's only other route is Ray Train's internal
    ``StorageContext``. So the one module constant ``Trainable._setup_logdir`` reads is set for the
    duration of the build, here and nowhere else.
    """
    import ray.tune.trainable.trainable as trainable

    Path(logdir).mkdir(parents=True, exist_ok=True)
    previous = trainable.DEFAULT_STORAGE_PATH
    trainable.DEFAULT_STORAGE_PATH = os.fspath(logdir)  # read by Trainable._setup_logdir of a standalone algo
    try:
        return config.build_algo()
    finally:
        trainable.DEFAULT_STORAGE_PATH = previous


def policy_module(algorithm: Any, env_kind: str = "split") -> Any:
    """The trained RLModule (the shared one for the multi-user env)."""
    if env_kind == "multi_user":
        from splitlab.envs.multi_user import SHARED_MODULE_ID

        return algorithm.get_module(SHARED_MODULE_ID)
    return algorithm.get_module()


def greedy_actions(module: Any, obs: np.ndarray) -> np.ndarray:
    """Most likely actions [N] of ``module`` for observations [N, D] (DQN: argmax Q)."""
    import torch
    from ray.rllib.core.columns import Columns

    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: torch.as_tensor(np.asarray(obs, np.float32))})
    if Columns.ACTION_DIST_INPUTS in out:
        return out[Columns.ACTION_DIST_INPUTS].argmax(-1).numpy()
    return np.asarray(out[Columns.ACTIONS])


def greedy_policy(module: Any):
    """``obs [D] -> action``: the module's most likely action."""
    def act(obs: np.ndarray) -> int:
        return int(greedy_actions(module, np.asarray(obs)[None])[0])

    return act
