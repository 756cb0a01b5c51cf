"""The decode phase as a sequential decision: one step is a block of tokens, and moving k costs.

During a generation the context grows by ``block_tokens`` per step. When the split changes from
``k_prev`` to ``k`` the KV cache of the layers between them changes sides, by recompute or by transfer
(:mod:`splitlab.envs.migration`, the same arithmetic as the token-level protocol in
:mod:`splitlab.llm.generation`), at a cost that grows with the context. That cost (scaled by
``switch_scale``) is a stall added to the step's latency and energy, so today's k changes tomorrow's
price: the problem is an MDP, not a per-step lookup.

Everything here is vectorised over users (numpy arrays, no Python loop per user):
:class:`DecodeCostTable` holds per-k costs (injected; :meth:`DecodeCostTable.from_device` builds it from
:class:`~splitlab.envs.device.DeviceModel`), :class:`QualityLookup` the quality term per (k, SNR) from a
reward model, and :class:`DecodeModel` turns (actions, previous actions, channel, context, edge wait)
into rewards. :class:`SequentialSplitEnv` is the single-user gymnasium env; the cell of many users
sharing an edge queue is :mod:`splitlab.envs.cell`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
from pydantic import Field

from splitlab.config import ConfigModel

from splitlab.envs.device import DeviceModel
from splitlab.envs.device_profiles import DeviceCostModel
from splitlab.envs.migration import MigrationPrices, migration_work
from splitlab.envs.reward_models import RewardModel, check_reward_model, make_reward_model


@dataclass(frozen=True)
class DecodeCostTable:
    """Per-token decode costs for every split k in ``0..L`` (index = k); the env's cost swap point.

    Arrays are ``[L + 1]``. Replace this table with one from a finer device model (FLOPs and bytes
    per layer, roofline device profiles) without touching the env.
    """

    num_layers: int
    ue_s_per_token: np.ndarray
    """UE compute time for layers 0..k-1 of one token at full UE budget [L + 1]."""
    ue_j_per_token: np.ndarray
    """UE compute energy for layers 0..k-1 of one token [L + 1]."""
    edge_s_per_token: np.ndarray
    """Edge compute time for layers k..L-1 of one token on an idle edge [L + 1]."""
    bytes_per_token: np.ndarray
    """Uplink payload of one token's hidden state at split k [L + 1]."""
    kv_bytes_per_layer_token: float
    """KV entries (keys and values) of one layer for one token, as sent when migrating."""
    hidden_bytes_per_token: float
    """One token's hidden state, as sent for an edge recompute when migrating."""
    ue_j_per_layer_token: float
    """UE energy of one layer on one token (prices migration recompute)."""
    radio_tx_w: float
    """UE transmit power in watts: radio energy = power x airtime."""

    @property
    def ue_s_per_layer_token(self) -> float:
        return float(self.ue_s_per_token[-1] / self.num_layers)

    @property
    def edge_s_per_layer_token(self) -> float:
        return float(self.edge_s_per_token[0] / self.num_layers)

    @classmethod
    def from_device(cls, device: DeviceModel, num_layers: int, hidden: int, kv_dim: int | None = None,
                    bytes_per_element: float = 2.0, ue_joules_per_flop: float = 1e-11,
                    radio_tx_w: float = 0.2) -> DecodeCostTable:
        """Costs from the FLOP rates of ``device`` (compute only: one layer = ``2 x 12 hidden^2`` FLOPs/token).

        ``kv_dim``: width of one layer's keys (= values) per token, ``heads_kv x head_dim`` (None: hidden,
        no grouped-query attention; SmolLM2 has 3 x 64 = 192). ``ue_joules_per_flop`` 1e-11 is about
        2 W at the default 200 GFLOP/s.
        """
        flops = device.layer_flops(hidden) / device.tokens  # one layer, one token
        k = np.arange(num_layers + 1, dtype=np.float64)
        kv = float(hidden if kv_dim is None else kv_dim)
        return cls(num_layers=num_layers, ue_s_per_token=k * flops / device.ue_flops,
                   ue_j_per_token=k * flops * ue_joules_per_flop,
                   edge_s_per_token=(num_layers - k) * flops / device.edge_flops,
                   bytes_per_token=np.full(num_layers + 1, hidden * bytes_per_element),
                   kv_bytes_per_layer_token=2.0 * kv * bytes_per_element,
                   hidden_bytes_per_token=hidden * bytes_per_element,
                   ue_j_per_layer_token=flops * ue_joules_per_flop, radio_tx_w=radio_tx_w)


    @classmethod
    def from_cost_model(cls, cost: DeviceCostModel, context: int = 256) -> DecodeCostTable:
        """Costs from the roofline device model of the privacy/energy work (:mod:`splitlab.envs.device_profiles`):
        the model's own FLOPs and weight/KV bytes per layer on a UE and an edge profile, one decode step after
        ``context`` tokens, the activation priced by the cost model's link."""
        from splitlab.channel import link_cost

        step = cost.per_k("decode", context=context)
        lc, L = cost.layers, cost.layers.num_layers
        per_token = link_cost(1, lc.hidden, cost.channel, cost.snr_db).payload_bytes  # one hidden vector
        compute_j = step.ue_compute_energy_j
        return cls(num_layers=L, ue_s_per_token=step.ue_time_s, ue_j_per_token=compute_j,
                   edge_s_per_token=step.edge_time_s, bytes_per_token=np.full(L + 1, per_token),
                   kv_bytes_per_layer_token=float(np.mean(lc.kv_per_token)) * cost.ue.bytes_per_kv,
                   hidden_bytes_per_token=per_token, ue_j_per_layer_token=float(compute_j[-1] - compute_j[0]) / L,
                   radio_tx_w=cost.ue.tx_power_w)


class SequentialConfig(ConfigModel):
    """One user's decode-phase episode: blocks of tokens, a growing context, and what a change of k costs."""


    reward_model: Any = None
    """Quality per (k, SNR): a RewardModel or a spec such as ``{"kind": "grid", "path": "docs/analysis", "channel": "awgn"}``."""
    candidate_ks: list[int] | None = None
    """Split points to choose from (action i picks candidate_ks[i]); None: every k the reward model scores."""
    episode_len: int = Field(32, ge=1, le=100_000)
    """Steps (token blocks) per episode: one generation."""
    block_tokens: int = Field(16, ge=1, le=4096)
    """Tokens decoded per step."""
    prompt_tokens: int = Field(128, ge=1, le=1_000_000)
    """Context at the first step (the prompt, prefilled at the first split)."""
    token_period_s: float | None = Field(None, gt=0)
    """Wall time per decoded token (a step lasts block_tokens of them: the edge's compute budget per step
    in a cell); None: latency_ref, the whole model on the UE at full budget."""
    switch_scale: float = Field(1.0, ge=0)
    """Multiplies the migration stall and energy (0: free switching, the old per-step problem)."""
    migration: Literal["cheapest", "recompute", "transfer"] = "cheapest"
    """How the KV of layers that change sides moves (cheapest: the lower time at the step's link rate)."""
    kv_dim: int | None = Field(None, ge=1)
    """Keys (= values) width per layer and token, heads_kv x head_dim; None: the hidden size."""
    bandwidth_hz: float = Field(5e6, gt=0)
    """Each user's own uplink bandwidth (Shannon rate at the step's SNR)."""
    snr_mean_db: float = 15.0
    """Long-run mean SNR (Gauss-Markov in dB, one value per step)."""
    snr_std_db: float = Field(6.0, ge=0)
    """Stationary standard deviation of the SNR in dB."""
    snr_corr: float = Field(0.9, ge=0, le=1)
    """Lag-1 correlation of the SNR between steps."""
    user_snr_offset_db: tuple[float, float] = (-5.0, 5.0)
    """Each user's mean SNR is shifted by U(range) dB (nearer or farther users)."""
    snr_estimation_std_db: float = Field(1.0, ge=0)
    """The policy sees the SNR plus N(0, this^2) dB."""
    ue_budget_range: tuple[float, float] = (0.25, 1.0)
    """Fraction of UE compute free for the generation, drawn per user uniformly in this range."""
    w_q: float = Field(1.0, ge=0)
    """Weight of the quality term log(PPL_k / PPL_clean)."""
    w_c: float = Field(0.5, ge=0)
    """Weight of the UE-compute term k / L."""
    w_l: float = Field(0.5, ge=0)
    """Weight of the per-token latency (migration stall included) / latency_ref."""
    w_e: float = Field(0.25, ge=0)
    """Weight of the per-token UE energy (compute + radio + migration) / energy_ref."""
    w_d: float = Field(1.0, ge=0)
    """Penalty per step whose per-token latency exceeds ``deadline_s``."""
    deadline_s: float | None = Field(None, gt=0)
    """Per-token latency deadline; None: 4 x latency_ref."""
    ue_flops: float = Field(2e11, gt=0)
    """UE FLOP/s at full budget (builds the default cost table)."""
    edge_flops: float = Field(2e13, gt=0)
    """Edge FLOP/s (builds the default cost table; a cell rescales it to its load)."""
    ue_joules_per_flop: float = Field(1e-11, gt=0)
    """UE compute energy per FLOP (default cost table)."""
    radio_tx_w: float = Field(0.2, ge=0)
    """UE transmit power in watts (default cost table)."""
    ue_profile: Literal["phone", "jetson"] | None = None
    """UE device profile (envs.device_profiles): the costs come from the roofline device model of
    ``layers_of``'s own layers on this UE and ``edge_profile`` (its radio power too); None: the FLOP-rate
    table of ue_flops, edge_flops, ue_joules_per_flop and radio_tx_w."""
    edge_profile: Literal["edge-gpu", "jetson"] = "edge-gpu"
    """Edge device profile with ``ue_profile``."""
    layers_of: str = "smollm2"
    """Model whose layer sizes (FLOPs, weight and KV bytes) price the steps with ``ue_profile``; its layer
    count must match the reward model's."""

    def cost_table(self, num_layers: int, hidden: int) -> DecodeCostTable:
        """The cost table: the roofline device model with ``ue_profile``, else this config's device numbers."""
        if self.ue_profile is not None:
            from splitlab.llm.cost import layer_costs_of

            layers = layer_costs_of(self.layers_of)
            if (layers.num_layers, layers.hidden) != (num_layers, hidden):
                raise ValueError(f"layers_of {self.layers_of!r} has {layers.num_layers} layers of width {layers.hidden}; "
                                 f"the reward model has {num_layers} of width {hidden}: name the model it measured")
            cost = DeviceCostModel(layers, self.ue_profile, self.edge_profile)
            return DecodeCostTable.from_cost_model(cost, context=self.prompt_tokens)
        device = DeviceModel(ue_flops=self.ue_flops, edge_flops=self.edge_flops, tokens=1)
        return DecodeCostTable.from_device(device, num_layers, hidden, self.kv_dim,
                                           ue_joules_per_flop=self.ue_joules_per_flop, radio_tx_w=self.radio_tx_w)


class QualityLookup:
    """``log(PPL_k / PPL_clean)`` for candidate ks on a fine SNR grid, linearly interpolated (vectorised)."""

    def __init__(self, reward_model: RewardModel, ks: tuple[int, ...], low_db: float = -10.0,
                 high_db: float = 40.0, step_db: float = 0.25) -> None:
        self.low, self.step = low_db, step_db
        self.values = np.arange(low_db, high_db + step_db / 2, step_db)  # [V]
        ppl = np.stack([reward_model.quality_table(ks, v) for v in self.values], axis=1)  # [A, V]
        self.table = np.log(ppl / float(reward_model.ppl_clean))

    def __call__(self, a: np.ndarray, snr_db: np.ndarray) -> np.ndarray:
        """Quality term at action indices ``a`` and SNRs (broadcast together)."""
        x = np.clip((np.asarray(snr_db, dtype=np.float64) - self.low) / self.step, 0.0, len(self.values) - 1.0)
        i = np.minimum(x.astype(np.int64), len(self.values) - 2)
        f = x - i
        return self.table[a, i] * (1.0 - f) + self.table[a, i + 1] * f


class StepResult(NamedTuple):
    """One step of many users (arrays broadcast over users, or over DP states)."""

    reward: np.ndarray
    holds: np.ndarray  # UE holds the hidden states after its new k (for the next move)
    latency_s: np.ndarray  # per token, migration stall included
    energy_j: np.ndarray  # per token
    migration_s: np.ndarray  # the stall of this step's move (scaled by switch_scale)
    migration_bytes: np.ndarray
    edge_work_s: np.ndarray  # edge compute this user adds this step (tail tokens + edge recompute)
    quality: np.ndarray  # log(PPL_k / PPL_clean)


class DecodeModel:
    """Vectorised step costs of the decode-phase episode (see the module docstring)."""

    def __init__(self, config: SequentialConfig, reward_model: RewardModel | None = None,
                 costs: DecodeCostTable | None = None) -> None:
        if config.reward_model is None and reward_model is None:
            raise ValueError("the sequential env needs reward_model: a RewardModel or e.g. "
                             "{'kind': 'grid', 'path': 'docs/analysis', 'channel': 'awgn'}")
        self.config = config
        self.reward_model = reward_model if reward_model is not None else make_reward_model(config.reward_model)
        rm = self.reward_model
        self.num_layers = int(rm.num_layers)
        self.candidate_ks = tuple(config.candidate_ks) if config.candidate_ks is not None else tuple(rm.ks)
        check_reward_model(rm, "snr_db", self.candidate_ks, "the sequential env")
        self.ks = np.asarray(self.candidate_ks, dtype=np.int64)  # [A]
        self.costs = costs if costs is not None else config.cost_table(self.num_layers, int(rm.hidden_size))
        if self.costs.num_layers != self.num_layers:
            raise ValueError(f"cost table is for {self.costs.num_layers} layers, the reward model has {self.num_layers}")
        self.quality = QualityLookup(rm, self.candidate_ks)
        c = self.costs
        self.latency_ref_s = float(c.ue_s_per_token[-1])  # the whole model on the UE at full budget
        self.energy_ref_j = float(c.ue_j_per_token[-1])
        self.deadline_s = config.deadline_s if config.deadline_s is not None else 4.0 * self.latency_ref_s
        self._ue_s, self._ue_j = c.ue_s_per_token[self.ks], c.ue_j_per_token[self.ks]  # [A]
        self._edge_s, self._bytes = c.edge_s_per_token[self.ks], c.bytes_per_token[self.ks]

    def rate_bytes_per_s(self, snr_db: np.ndarray) -> np.ndarray:
        """Shannon rate of each user's own band at ``snr_db``, in bytes per second."""
        snr = np.power(10.0, np.asarray(snr_db, dtype=np.float64) / 10.0)
        return self.config.bandwidth_hz * np.log2(1.0 + snr) / 8.0

    def tokens_before(self, t: int | np.ndarray) -> np.ndarray:
        """Context (past tokens) at the start of step ``t`` of a user's episode."""
        return self.config.prompt_tokens + np.asarray(t) * self.config.block_tokens

    def step(self, a, prev, holds, tokens, snr_db, budget, edge_extra_s=0.0, edge_scale: float = 1.0) -> StepResult:
        """Costs and reward when users at previous action ``prev`` take action ``a``.

        All arguments broadcast (users, or DP states x actions). ``prev`` < 0 means no previous split
        (the first step: the prompt is prefilled at ``a``, nothing migrates). ``edge_extra_s``: per-token
        edge wait on top of the user's own tail (other users' work and the backlog, from the cell);
        ``edge_scale`` multiplies edge compute times (a cell's edge speed).
        """
        cfg, c = self.config, self.costs
        a = np.asarray(a)
        prev = np.asarray(prev)
        first = prev < 0
        prev = np.where(first, a, prev)
        k, k_prev = self.ks[a], self.ks[prev]
        quality = self.quality(a, snr_db)
        rate = self.rate_bytes_per_s(snr_db)
        tx = self._bytes[a] / rate
        ue = self._ue_s[a] / budget
        edge_own = self._edge_s[a] * edge_scale
        work = migration_work(k_prev, k, tokens, c.kv_bytes_per_layer_token, c.hidden_bytes_per_token, holds)
        prices = MigrationPrices(c.ue_s_per_layer_token / np.asarray(budget), c.edge_s_per_layer_token * edge_scale,
                                 rate)
        rec_s, tr_s = prices.seconds(work)
        recompute = rec_s <= tr_s if cfg.migration == "cheapest" else np.full(np.shape(rec_s), cfg.migration == "recompute")
        moved = k != k_prev
        mig_s = np.where(moved, np.where(recompute, rec_s, tr_s), 0.0) * cfg.switch_scale
        down = k < k_prev
        ue_sent = np.where(recompute, work.recompute_bytes, np.where(down, work.transfer_bytes, 0.0))
        mig_bytes = np.where(moved, np.where(recompute, work.recompute_bytes, work.transfer_bytes), 0.0)
        mig_j = (np.where(recompute, work.recompute_ue_layer_tokens, 0.0) * c.ue_j_per_layer_token
                 + c.radio_tx_w * ue_sent / rate) * cfg.switch_scale
        edge_mig = np.where(recompute, work.recompute_edge_layer_tokens, 0.0) * c.edge_s_per_layer_token * edge_scale
        b = cfg.block_tokens
        latency = ue + tx + edge_own + edge_extra_s + mig_s / b
        energy = self._ue_j[a] + c.radio_tx_w * tx + mig_j / b
        reward = (-cfg.w_q * quality - cfg.w_c * k / self.num_layers - cfg.w_l * latency / self.latency_ref_s
                  - cfg.w_e * energy / self.energy_ref_j - cfg.w_d * (latency > self.deadline_s))
        holds_next = np.where(moved, recompute, holds)
        return StepResult(reward, holds_next, latency, energy, mig_s, mig_bytes,
                          b * edge_own + edge_mig * cfg.switch_scale, quality)

    def with_wait(self, r: StepResult, wait_s: np.ndarray) -> StepResult:
        """``r`` with ``wait_s`` more per-token edge latency (the cell's queue, known only after every
        user acted); the reward changes by the latency and deadline terms only."""
        cfg = self.config
        latency = r.latency_s + wait_s
        reward = (r.reward - cfg.w_l * wait_s / self.latency_ref_s
                  - cfg.w_d * ((latency > self.deadline_s).astype(np.float64) - (r.latency_s > self.deadline_s)))
        return r._replace(reward=reward, latency_s=latency)

    @property
    def token_period_s(self) -> float:
        return self.config.token_period_s if self.config.token_period_s is not None else self.latency_ref_s


@dataclass
class Exogenous:
    """Everything random over ``T`` steps of ``n`` user slots, drawn before any action is taken.

    Every policy evaluated on one seed meets the same channels, budgets and churn draws. A slot's SNR is
    its user's mean plus the slot's Gauss-Markov deviation; a user arriving in a slot at step t takes
    ``arrival_mean_db[t]`` and ``arrival_budget[t]``.
    """

    deviation_db: np.ndarray  # [T, n] zero-mean AR(1) part of the SNR
    est_noise_db: np.ndarray  # [T, n] estimation error the UE's measurement carries
    mean_db: np.ndarray  # [n] long-run mean SNR of the users present at the start
    budget: np.ndarray  # [n] their UE budgets
    arrival_mean_db: np.ndarray  # [T, n]
    arrival_budget: np.ndarray  # [T, n]
    leave_u: np.ndarray  # [T, n] uniforms for departures
    join_u: np.ndarray  # [T, n] uniforms for arrivals

    @property
    def snr_db(self) -> np.ndarray:
        """[T, n] true SNR of the users present at the start (a fixed population)."""
        return self.mean_db + self.deviation_db

    @property
    def snr_est_db(self) -> np.ndarray:
        """[T, n] what those users measure."""
        return self.snr_db + self.est_noise_db


def draw_exogenous(config: SequentialConfig, n_users: int, n_steps: int, rng: np.random.Generator,
                   previous_deviation: np.ndarray | None = None) -> Exogenous:
    """Gauss-Markov SNR deviations (vectorised over users; stationary start, or continuing
    ``previous_deviation`` [n]), estimation noise, user means and budgets, churn draws."""
    low, high = config.user_snr_offset_db
    blo, bhi = config.ue_budget_range

    def means(*shape):
        return config.snr_mean_db + rng.uniform(low, high, shape)

    def budgets(*shape):
        return rng.uniform(blo, bhi, shape) if bhi > blo else np.full(shape, blo)

    innov = rng.standard_normal((n_steps, n_users)) * config.snr_std_db
    x = np.empty((n_steps, n_users))
    scale = np.sqrt(1.0 - config.snr_corr**2)
    x[0] = innov[0] if previous_deviation is None else config.snr_corr * previous_deviation + scale * innov[0]
    for t in range(1, n_steps):  # a recursion over steps, vectorised over users
        x[t] = config.snr_corr * x[t - 1] + scale * innov[t]
    noise = rng.normal(0.0, config.snr_estimation_std_db, size=x.shape)
    return Exogenous(x, noise, means(n_users), budgets(n_users), means(n_steps, n_users), budgets(n_steps, n_users),
                     rng.random((n_steps, n_users)), rng.random((n_steps, n_users)))


N_SEQ_FEATURES = 9
SEQ_FEATURE_NAMES = ("snr_est", "snr_trend", "rate", "prev_k", "ue_budget", "context", "holds", "edge_wait",
                     "active_users")


def observe(model: DecodeModel, est_now: np.ndarray, est_before: np.ndarray, prev_a: np.ndarray,
            budget: np.ndarray, step_in_episode: np.ndarray, holds: np.ndarray, edge_wait_s: np.ndarray,
            active_frac: float | np.ndarray) -> np.ndarray:
    """[n, N_SEQ_FEATURES] float32 observations (see SEQ_FEATURE_NAMES), all roughly in [-5, 5]."""
    cfg = model.config
    n = est_now.shape[0]
    out = np.empty((n, N_SEQ_FEATURES), dtype=np.float32)
    out[:, 0] = (est_now - 15.0) / 10.0
    out[:, 1] = (est_now - est_before) / 10.0
    out[:, 2] = np.log2(1.0 + np.power(10.0, est_now / 10.0)) / 10.0
    out[:, 3] = np.where(prev_a >= 0, model.ks[np.maximum(prev_a, 0)], 0) / model.num_layers
    out[:, 4] = budget
    out[:, 5] = step_in_episode / cfg.episode_len
    out[:, 6] = holds
    out[:, 7] = np.minimum(edge_wait_s / model.latency_ref_s, 5.0)
    out[:, 8] = active_frac
    return np.clip(out, -5.0, 5.0)


class SequentialSplitEnv(gym.Env):
    """One user's generation, block by block, choosing the split with switching costs.

    ## Description

    The decode phase of one request (:class:`SequentialConfig`): each step decodes ``block_tokens``
    tokens at the chosen split over a Gauss-Markov SNR; the context grows; changing k migrates the KV
    of the layers that change sides (recompute or transfer, the cheaper at the step's rate), a stall
    that grows with the context. The edge is idle (the shared edge is :class:`~splitlab.envs.cell.Cell`).

    ## Action Space

    ``Discrete(len(candidate_ks))``: action i splits at candidate_ks[i].

    ## Observation Space

    ``Box(9,)`` float32: SNR estimate, its change, rate estimate, previous k / L, UE budget, step /
    episode_len, whether the UE holds the boundary states, edge wait / latency_ref (0 here), 1.

    ## Rewards

    ``-w_q log(PPL_k/PPL_clean) - w_c k/L - w_l latency/latency_ref - w_e energy/energy_ref
    - w_d [latency > deadline]`` per token, the migration stall and energy spread over the block.

    ## Starting State

    A user with a stationary SNR, a mean offset and a UE budget drawn from ``self.np_random``.

    ## Episode End

    Truncated after ``episode_len`` steps.

    ## Arguments

    ``SequentialSplitEnv(config, reward_model=None, costs=None)``: config a :class:`SequentialConfig` or
    its mapping; ``costs`` a :class:`DecodeCostTable` (None: from the config's device numbers).
    """

    metadata = {"render_modes": []}

    def __init__(self, config: SequentialConfig | Mapping[str, Any] | None = None,
                 reward_model: RewardModel | None = None, costs: DecodeCostTable | None = None) -> None:
        self.config = config if isinstance(config, SequentialConfig) else SequentialConfig(**dict(config or {}))
        self.model = DecodeModel(self.config, reward_model, costs)
        self.action_space = gym.spaces.Discrete(len(self.model.candidate_ks))
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (N_SEQ_FEATURES,), dtype=np.float32)
        self.exo: Exogenous | None = None
        self.t, self.prev, self.holds = 0, np.array([-1]), np.array([True])

    def _obs(self) -> np.ndarray:
        exo, t = self.exo, min(self.t, self.config.episode_len - 1)
        est = exo.snr_est_db
        return observe(self.model, est[t], est[max(t - 1, 0)], self.prev, exo.budget,
                       np.array([self.t]), self.holds, np.zeros(1), 1.0)[0]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.exo = draw_exogenous(self.config, 1, self.config.episode_len, self.np_random)
        self.t, self.prev, self.holds = 0, np.array([-1]), np.array([True])
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(int(action)):
            raise ValueError(f"action must be an integer in 0..{self.action_space.n - 1}, got {action!r}")
        a = np.array([int(action)])
        exo, t = self.exo, self.t
        r = self.model.step(a, self.prev, self.holds, self.model.tokens_before(t), exo.snr_db[t], exo.budget)
        self.prev, self.holds, self.t = a, r.holds, t + 1
        info = {"quality/log_ppl_ratio": float(r.quality[0]), "latency/per_token_s": float(r.latency_s[0]),
                "energy/per_token_j": float(r.energy_j[0]), "migration/stall_s": float(r.migration_s[0]),
                "migration/bytes": float(r.migration_bytes[0]), "cost/k": float(self.model.ks[a[0]])}
        return self._obs(), float(r.reward[0]), False, self.t >= self.config.episode_len, info
