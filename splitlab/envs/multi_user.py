"""``MultiUserSplitEnv``: many UEs choosing their splits at once, sharing one edge server and one cell."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

import gymnasium as gym
import numpy as np
from pydantic import Field, model_validator
from ray.rllib.env.multi_agent_env import MultiAgentEnv

from splitlab.config import ConfigModel, Float, PositiveInt
from splitlab.envs.config import EPISODE_LEN, SplitEnvConfig
from splitlab.envs.reward_models import make_reward_model
from splitlab.envs.wireless import FEATURE_HIGH, FEATURE_LOW, UserState, WirelessModel

SHARED_MODULE_ID = "shared"
"""The one RLModule every UE maps to."""
CELL_FEATURES = ("active_users", "edge_load")


def shared_policy_mapping_fn(agent_id: Any, episode: Any = None, **kwargs: Any) -> str:
    """RLlib ``policy_mapping_fn``: every UE uses the shared module (parameter sharing)."""
    return SHARED_MODULE_ID


class MultiUserCell(ConfigModel):
    """The cell's own keys: how many UEs, how they come and go, how far they are."""

    label: ClassVar[str] = "multi-user env config"

    num_users: PositiveInt = 4
    """Cell capacity: the most UEs active at once (one slot each)."""
    initial_users: PositiveInt | None = None
    """UEs active at reset; None: num_users."""
    join_prob: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.0
    """Per free slot and step, the probability that a new UE arrives (under a new agent id)."""
    leave_prob: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.0
    """Per active UE and step, the probability that it leaves after acting (reported as terminated)."""
    min_users: PositiveInt = 1
    """Departures never leave fewer active UEs than this (someone must act every step)."""
    max_agents: PositiveInt | None = None
    """Distinct agent ids per episode (RLlib's possible_agents); arrivals stop when they are used up. None:
    enough for any episode (initial users, plus every slot refilled every step when join_prob > 0)."""
    user_snr_offset_db: tuple[Float, Float] = (-5.0, 5.0)
    """Each arriving UE's SNR trace is shifted by an offset ~ U(range) dB (nearer or farther UEs);
    use (0, 0) with path_loss dynamics, which already draw a distance per UE."""
    @model_validator(mode="after")
    def _consistent_cell(self) -> MultiUserCell:
        if self.min_users > self.num_users:
            raise ValueError(f"min_users must be <= num_users={self.num_users}, got {self.min_users}")
        if self.initial_users is not None and not self.min_users <= self.initial_users <= self.num_users:
            raise ValueError(f"initial_users must be in [{self.min_users}, {self.num_users}], got {self.initial_users}")
        if self.max_agents is not None and self.max_agents < (self.initial_users or self.num_users):
            raise ValueError(f"max_agents must be >= the initial users ({self.initial_users or self.num_users}), "
                             f"got {self.max_agents}")
        low, high = self.user_snr_offset_db
        if low > high:
            raise ValueError(f"user_snr_offset_db must be a pair [low, high] with low <= high, got {[low, high]}")
        return self


class MultiUserConfig(MultiUserCell):
    """The cell around the per-user wireless MDP. ``from_dict`` takes the cell keys and any
    :class:`SplitEnvConfig` key (reward model, weights, dynamics, device, ...) side by side."""

    split: SplitEnvConfig
    """The per-user wireless MDP (preset must be ``wireless``); given flat, beside the cell keys."""

    @model_validator(mode="before")
    @classmethod
    def _flat_keys(cls, d: Any) -> Any:
        """Split a flat mapping into cell keys and per-user :class:`SplitEnvConfig` keys."""
        if not isinstance(d, Mapping) or "split" in d:
            return d
        d = {k: v for k, v in d.items() if k != "env" or v != "multi_user"}
        own = set(MultiUserCell.model_fields)
        mine = {k: d.pop(k) for k in list(d) if k in own}
        unknown = sorted(set(d) - set(SplitEnvConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown multi-user env config keys {unknown}; accepted keys: "
                             f"{sorted(own)} and the SplitEnvConfig keys {sorted(SplitEnvConfig.model_fields)}")
        d.setdefault("preset", "wireless")
        return {**mine, "split": d}

    @model_validator(mode="after")
    def _wireless(self) -> MultiUserConfig:
        if self.split.preset != "wireless":
            raise ValueError(f"preset must be 'wireless' for the multi-user env, got {self.split.preset!r}")
        return self


class MultiUserSplitEnv(MultiAgentEnv):
    """N UEs in one cell, each choosing its split every step; one shared policy (RLlib new API stack).

    ## Description

    Each UE is the ``wireless`` preset of :class:`~splitlab.envs.split_env.SplitEnv` with its own
    SNR trace (own dynamics draw plus a per-UE offset, or its own distance under path loss). The
    UEs share:

    - the cell's bandwidth (``channel.bandwidth_hz``), split equally among the UEs active this step
      (the SNR is unchanged: fixed power spectral density);
    - the edge's compute: the edge runs this step's tails as one batch, so every UE's edge time is
      ``sum_j (L - k_j) x layer FLOPs / edge_flops`` and grows with the tail layers in flight.

    UEs may leave (``leave_prob``, reported as ``terminated`` with a last observation) and arrive
    (``join_prob`` per free slot, under a fresh agent id, with a first observation and no reward),
    following RLlib's rules for agents that come and go.

    ## Action Space

    Per agent ``Discrete(len(candidate_ks))``: action i splits at candidate_ks[i].

    ## Observation Space

    Per agent ``Box(7,)`` float32: the 5 wireless features (SNR estimate, trend, rate, previous
    k / L, UE budget) and 2 cell features: active UEs / num_users, and last step's edge load
    (tail layers in flight / (num_users x L)).

    ## Rewards

    Per agent, the wireless reward ``-w_q log(PPL_k / PPL_clean) - w_c k / L - w_l latency /
    latency_ref`` with the shared-bandwidth transmission time and the batched edge time.

    ## Starting State

    ``initial_users`` UEs (default all slots), agent ids ``ue_0``, ``ue_1``, ...

    ## Episode End

    After ``episode_len`` steps (default 50) every active agent is truncated (``__all__``).
    ``env.agents`` keeps a departed UE until the next ``step`` call, so that the dicts of the step
    in which it left refer only to agents in ``env.agents``.

    ## Arguments

    ``MultiUserSplitEnv(config)`` with a :class:`MultiUserConfig` or a flat mapping of its keys and
    the :class:`SplitEnvConfig` keys, e.g. ``{"num_users": 16, "join_prob": 0.05, "leave_prob": 0.05,
    "reward_model": {"kind": "grid", "path": "runs/analysis", "channel": "awgn"}}``. Map every agent
    to one module with ``config.multi_agent(policies={SHARED_MODULE_ID},
    policy_mapping_fn=shared_policy_mapping_fn)``.
    """

    def __init__(self, config: MultiUserConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = MultiUserConfig.from_dict(config)
        split = self.config.split
        self.reward_model = make_reward_model(split.reward_model)
        self.model = WirelessModel(split, self.reward_model)
        self.num_layers = self.model.num_layers
        self.candidate_ks = self.model.candidate_ks
        self.episode_len = split.episode_len or EPISODE_LEN["wireless"]
        n_initial = self.config.initial_users or self.config.num_users
        n_ids = self.config.max_agents or (
            n_initial + (self.episode_len - 1) * self.config.num_users if self.config.join_prob > 0 else n_initial)
        self.possible_agents = [f"ue_{i}" for i in range(n_ids)]
        self.agents = []
        obs_space = gym.spaces.Box(np.concatenate([FEATURE_LOW, [0.0, 0.0]]).astype(np.float32),
                                   np.concatenate([FEATURE_HIGH, [1.0, 1.0]]).astype(np.float32), dtype=np.float32)
        act_space = gym.spaces.Discrete(len(self.candidate_ks))
        self.observation_spaces = {aid: obs_space for aid in self.possible_agents}
        self.action_spaces = {aid: act_space for aid in self.possible_agents}
        self.users: dict[str, UserState] = {}
        self.t = 0
        self._next_id = 0
        self._departed: list[str] = []
        self._edge_load = 0.0

    # -- helpers ------------------------------------------------------------------------------
    def _arrive(self) -> str:
        aid = self.possible_agents[self._next_id]
        self._next_id += 1
        low, high = self.config.user_snr_offset_db
        offset = float(self.np_random.uniform(low, high)) if high > low else low
        self.users[aid] = self.model.draw_user(self.np_random, self.episode_len - self.t + 1, start=self.t,
                                               snr_offset_db=offset)
        self.agents.append(aid)
        return aid

    def _obs(self, aid: str) -> np.ndarray:
        cell = np.array([len(self.users) / self.config.num_users, self._edge_load], dtype=np.float32)
        return np.concatenate([self.model.features(self.users[aid], self.t), np.clip(cell, 0.0, 1.0)])

    # -- MultiAgentEnv API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed, options=options)
        self.t, self._next_id, self._edge_load = 0, 0, 0.0
        self.users, self.agents, self._departed = {}, [], []
        for _ in range(self.config.initial_users or self.config.num_users):
            self._arrive()
        return {aid: self._obs(aid) for aid in self.users}, {aid: {} for aid in self.users}

    def step(self, action_dict: dict[str, Any]):
        missing, extra = set(self.users) - set(action_dict), set(action_dict) - set(self.users)
        if missing or extra:
            raise ValueError(f"actions must cover exactly the active agents {sorted(self.users)}; "
                             f"missing {sorted(missing)}, not active {sorted(extra)}")
        n_actions = len(self.candidate_ks)
        bad = {aid: a for aid, a in action_dict.items() if not 0 <= int(a) < n_actions}
        if bad:
            raise ValueError(f"actions must be integers in 0..{n_actions - 1}, got {bad}")
        self.agents = [a for a in self.agents if a not in self._departed]
        self._departed = []
        ks = {aid: self.candidate_ks[int(a)] for aid, a in action_dict.items()}
        n_active = len(ks)
        bandwidth = self.model.link.bandwidth_hz / n_active
        tail = float(sum(self.num_layers - k for k in ks.values()))
        rewards, infos = {}, {}
        for aid, k in ks.items():
            terms, info = self.model.outcome(self.users[aid], self.t, k, bandwidth, tail)
            info.update({"cell/active_users": float(n_active), "cell/edge_tail_layers": tail})
            rewards[aid], infos[aid] = float(terms.total), info
            self.users[aid].prev_k = k
        self._edge_load = tail / (self.config.num_users * self.num_layers)
        self.t += 1

        if self.t >= self.episode_len:
            obs = {aid: self._obs(aid) for aid in self.users}
            terminateds = {aid: False for aid in self.users} | {"__all__": False}
            truncateds = {aid: True for aid in self.users} | {"__all__": True}
            return obs, rewards, terminateds, truncateds, infos

        leaving = []
        draws = self.np_random.random(len(self.users))
        for aid, u in zip(list(self.users), draws):
            if u < self.config.leave_prob and len(self.users) - len(leaving) > self.config.min_users:
                leaving.append(aid)
        obs = {aid: self._obs(aid) for aid in leaving}  # last observations, before they go
        for aid in leaving:
            del self.users[aid]
        self._departed = leaving
        free = self.config.num_users - len(self.users)
        for u in self.np_random.random(free):
            if u < self.config.join_prob and self._next_id < len(self.possible_agents):
                infos[self._arrive()] = {}
        obs.update({aid: self._obs(aid) for aid in self.users})
        terminateds = {aid: aid in leaving for aid in obs} | {"__all__": False}
        truncateds = {aid: False for aid in obs} | {"__all__": False}
        return obs, rewards, terminateds, truncateds, infos
