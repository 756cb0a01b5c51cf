"""A cell of many users deciding their splits at once, coupled by a shared edge queue; numpy throughout.

:class:`Cell` steps ``num_users`` user slots as arrays (no Python loop per user): each active user runs
the decode-phase MDP of :mod:`splitlab.envs.sequential` (switching costs that grow with its context),
and all of them share one :class:`~splitlab.envs.edge_queue.EdgeQueue`, so one user's choice of k
changes everyone's wait in this step and the next ones. Users finish their generation (after
``episode_len`` steps) or leave early, and new users arrive into free slots (admission while the
backlog is short). The cell runs on without end; :class:`CellVectorEnv` shows ``cells`` cells to RLlib
as one gymnasium vector env of ``cells x num_users`` sub-envs with one shared policy.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space
from pydantic import Field

from splitlab.config import ConfigModel

from splitlab.envs.edge_queue import EdgeQueue, EdgeQueueConfig
from splitlab.envs.reward_models import RewardModel
from splitlab.envs.sequential import (
    N_SEQ_FEATURES,
    DecodeCostTable,
    DecodeModel,
    Exogenous,
    SequentialConfig,
    draw_exogenous,
    observe,
)

CELL_ENV_ID = "splitlab-cell"
"""Name :func:`register_cell_env` registers the vector env under (use ``gym_env_vectorize_mode="vector_entry_point"``)."""


class CellConfig(ConfigModel):
    """A cell: its user slots, churn, the shared edge, and every user's decode-phase MDP."""


    num_users: int = Field(1024, ge=1, le=1_000_000)
    """User slots (the most users active at once)."""
    initial_users: int | None = Field(None, ge=0)
    """Users present at reset; None: every slot."""
    join_prob: float = Field(0.0, ge=0, le=1)
    """Per free slot and step, the probability that a user arrives (admitted while the backlog is short)."""
    leave_prob: float = Field(0.0, ge=0, le=1)
    """Per active user and step, the probability that it leaves early (its generation otherwise lasts
    ``decode.episode_len`` steps)."""
    refill: bool = False
    """Every slot free during a step gets a new user at its end, whatever join_prob and admission say (the
    RLlib view: a sub-env cannot be empty)."""
    queue: EdgeQueueConfig = Field(default_factory=EdgeQueueConfig)
    """The shared edge."""
    decode: SequentialConfig = Field(default_factory=SequentialConfig)
    """Every user's decode-phase MDP (reward model, costs, weights, channel)."""


class Cell:
    """``num_users`` slots stepping as arrays, sharing one edge queue (see the module docstring)."""

    def __init__(self, config: CellConfig | Mapping[str, Any], reward_model: RewardModel | None = None,
                 costs: DecodeCostTable | None = None, model: DecodeModel | None = None) -> None:
        self.config = config if isinstance(config, CellConfig) else CellConfig(**dict(config))
        if self.config.initial_users is not None and self.config.initial_users > self.config.num_users:
            raise ValueError(f"initial_users must be <= num_users={self.config.num_users}, "
                             f"got {self.config.initial_users}")
        self.model = model if model is not None else DecodeModel(self.config.decode, reward_model, costs)
        cfg, m = self.config, self.model
        self.n = cfg.num_users
        self.block = cfg.decode.block_tokens
        self.horizon = cfg.decode.episode_len  # exogenous draws come in blocks of this many steps
        capacity = self.block * m.token_period_s  # edge seconds per step
        demand_at_k0 = self.n * self.block * float(m.costs.edge_s_per_token[0])
        # The edge's speed follows from the load: a full cell at k = 0 asks for `load` x capacity.
        self.edge_scale = cfg.queue.load * capacity / demand_at_k0 if demand_at_k0 > 0 else 1.0
        self.queue = EdgeQueue(cfg.queue, capacity)
        self.rng = np.random.default_rng()
        self.exo: Exogenous | None = None

    # -- state -----------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start the cell; returns observations [n, N_SEQ_FEATURES] (zeros in free slots)."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        n = self.n
        self.exo = draw_exogenous(self.config.decode, n, self.horizon, self.rng)
        self.t, self.t0 = 0, 0
        n_initial = n if self.config.initial_users is None else self.config.initial_users
        self.active = np.arange(n) < n_initial
        self.mean, self.budget = self.exo.mean_db.copy(), self.exo.budget.copy()
        self.prev = np.full(n, -1, dtype=np.int64)
        self.holds = np.ones(n, dtype=bool)
        self.start = np.zeros(n, dtype=np.int64)
        self.wait_s = 0.0  # per-token edge latency of the last step (all work in it), what users observe
        self.others_wait_s = np.zeros(n)  # the same beyond each user's own work
        self.est_prev = self.snr_est()
        self.queue.reset()
        self.blocked = 0
        return self.observations()

    def snr(self) -> np.ndarray:
        """True SNR of every slot at the current step [n]."""
        return self.mean + self.exo.deviation_db[self.t - self.t0]

    def snr_est(self) -> np.ndarray:
        """What every slot's UE measures at the current step [n]."""
        return self.snr() + self.exo.est_noise_db[self.t - self.t0]

    def steps_in(self) -> np.ndarray:
        """Steps each slot's user has decoded so far [n]."""
        return self.t - self.start

    def observations(self) -> np.ndarray:
        est = self.snr_est()
        obs = observe(self.model, est, self.est_prev, self.prev, self.budget, self.steps_in(), self.holds,
                      np.full(self.n, self.wait_s), self.active.mean())
        obs[~self.active] = 0.0
        return obs

    # -- dynamics ----------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
        """Every active slot splits at ``candidate_ks[actions]`` (entries of free slots are ignored).

        Returns (rewards [n] (0 where free), acted [n], left [n] (acted and gone after this step),
        arrived [n] (a new user at the end of this step), cell metrics).
        """
        cfg, m = self.config, self.model
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.n,):
            raise ValueError(f"actions must have shape ({self.n},), got {actions.shape}")
        acted = self.active.copy()
        a = np.where(acted, actions, 0)
        if ((a < 0) | (a >= len(m.candidate_ks))).any():
            raise ValueError(f"actions must lie in 0..{len(m.candidate_ks) - 1}")
        i = self.t - self.t0
        r = m.step(a, self.prev, self.holds, m.tokens_before(self.steps_in()), self.snr(), self.budget, 0.0,
                   self.edge_scale)
        work = np.where(acted, r.edge_work_s, 0.0)  # [n] edge seconds each user adds
        total = float(work.sum())
        ahead = self.queue.serve(total)
        self.others_wait_s = (ahead - work) / self.block  # [n] others' batched tails and the backlog
        r = m.with_wait(r, self.others_wait_s)
        rewards = np.where(acted, r.reward, 0.0)
        self.prev = np.where(acted, a, self.prev)
        self.holds = np.where(acted, r.holds, self.holds)
        self.wait_s = ahead / self.block
        self.est_prev = self.snr_est()
        self.t += 1

        left = acted & ((self.t - self.start >= cfg.decode.episode_len) | (self.exo.leave_u[i] < cfg.leave_prob))
        self.active = acted & ~left
        free = ~acted
        if cfg.refill:
            arrived = free
        else:
            wants = free & (self.exo.join_u[i] < cfg.join_prob)
            arrived = wants if self.queue.admits() else np.zeros_like(wants)
            self.blocked += int(wants.sum() - arrived.sum())
        if arrived.any():
            self.active |= arrived
            self.start[arrived] = self.t
            self.prev[arrived] = -1
            self.holds[arrived] = True
            self.mean[arrived] = self.exo.arrival_mean_db[i, arrived]
            self.budget[arrived] = self.exo.arrival_budget[i, arrived]
        if self.t - self.t0 >= self.horizon:  # next block of channel draws, continuing each slot's AR(1)
            self.exo = draw_exogenous(cfg.decode, self.n, self.horizon, self.rng, self.exo.deviation_db[-1])
            self.t0 = self.t
            self.mean[~self.active] = self.exo.mean_db[~self.active]
        self.est_prev = np.where(arrived, self.snr_est(), self.est_prev)
        n_acted = max(int(acted.sum()), 1)
        metrics = {"cell/active_users": float(acted.sum()), "edge/backlog_steps": self.queue.backlog_steps,
                   "edge/wait_per_token_s": self.wait_s, "cell/blocked_total": float(self.blocked),
                   "migration/bytes": float(r.migration_bytes[acted].sum()),
                   "migration/stall_s_mean": float(r.migration_s[acted].sum() / n_acted),
                   "latency/per_token_s_mean": float(r.latency_s[acted].sum() / n_acted)}
        return rewards, acted, left, arrived, metrics


class CellVectorEnv(gym.vector.VectorEnv):
    """``cells`` cells of ``num_users`` slots as one gymnasium vector env (sub-env = user slot).

    Each sub-env is a user slot; a user's episode is its generation. When a user leaves (its
    generation done, or early) the sub-env reports ``terminated`` with its last observation; the next
    step the slot is free and a new user arrives at its end (gymnasium's ``NEXT_STEP`` autoreset, which
    RLlib's env runners expect; the cell is built with ``refill=True``). Cells never reset as a whole:
    the queue carries on. Rewards, observations and spaces are those of :class:`Cell`.

    RLlib: ``config.environment(CELL_ENV_ID, env_config={...CellConfig keys...})
    .env_runners(num_envs_per_env_runner=cells * num_users, gym_env_vectorize_mode="vector_entry_point")``.
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, config: CellConfig | Mapping[str, Any], num_envs: int | None = None,
                 reward_model: RewardModel | None = None, costs: DecodeCostTable | None = None) -> None:
        cfg = config if isinstance(config, CellConfig) else CellConfig(**dict(config))
        cfg = cfg.model_copy(update={"refill": True})
        num_envs = cfg.num_users if num_envs is None else int(num_envs)
        if num_envs < cfg.num_users or num_envs % cfg.num_users:
            raise ValueError(f"num_envs must be a multiple of num_users={cfg.num_users} (cells x users), got {num_envs}")
        model = DecodeModel(cfg.decode, reward_model, costs)  # one quality table for every cell
        self.cells = [Cell(cfg, model=model) for _ in range(num_envs // cfg.num_users)]
        self.num_envs = num_envs
        self.single_observation_space = gym.spaces.Box(-5.0, 5.0, (N_SEQ_FEATURES,), dtype=np.float32)
        self.single_action_space = gym.spaces.Discrete(len(model.candidate_ks))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metrics: dict[str, float] = {}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        base = seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        obs = np.concatenate([c.reset(base + i) for i, c in enumerate(self.cells)])
        return obs, {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64).reshape(len(self.cells), -1)
        obs, rew, term = [], [], []
        for cell, a in zip(self.cells, actions):
            r, _acted, left, _arrived, self.metrics = cell.step(a)
            obs.append(cell.observations())
            rew.append(r)
            term.append(left)
        terminated = np.concatenate(term)
        return (np.concatenate(obs), np.concatenate(rew).astype(np.float32), terminated,
                np.zeros_like(terminated), {})


def make_cell_vector_env(env_config: Mapping[str, Any]) -> CellVectorEnv:
    """RLlib env creator (``vector_entry_point``): ``num_envs`` from RLlib, the rest CellConfig keys.

    The reward model comes from the process's shared instance (one per env runner).
    """
    from splitlab.mbrl.rllib_env import shared_reward_model

    cfg = dict(env_config)
    num_envs = cfg.pop("num_envs", None)
    decode = dict(cfg.pop("decode", {}) or {})
    model = shared_reward_model(decode.pop("reward_model")) if decode.get("reward_model") is not None else None
    if model is None:
        raise ValueError("the cell env needs decode.reward_model, e.g. {'kind': 'synthetic', 'channel': 'awgn'}")
    return CellVectorEnv(CellConfig(**cfg, decode=SequentialConfig(**decode)), num_envs, reward_model=model)


def register_cell_env() -> str:
    """Register :func:`make_cell_vector_env` with RLlib under :data:`CELL_ENV_ID`."""
    from ray.tune.registry import register_env

    register_env(CELL_ENV_ID, make_cell_vector_env)
    return CELL_ENV_ID
