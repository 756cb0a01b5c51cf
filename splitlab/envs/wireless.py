"""The wireless split MDP's physics, shared by the single-user and the multi-user environment.

A :class:`UserState` is one UE's episode: its true SNR trace, the noisy estimates the policy sees,
and its UE budget, all drawn at arrival so that the draws never depend on the actions (every policy
evaluated on a seed sees the same channel). :class:`WirelessModel` turns (user, step, k) into
features, latency and reward.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from splitlab.channel import ChannelConfig, LinkCost, link_cost
from splitlab.envs.config import SplitEnvConfig
from splitlab.envs.device import Latency
from splitlab.envs.reward_models import RewardModel, check_reward_model
from splitlab.envs.rewards import RewardTerms, wireless_reward

N_FEATURES = 5
"""Observation features of one user: SNR estimate, SNR trend, achievable rate, previous k / L, UE budget."""
FEATURE_NAMES = ("snr_est", "snr_trend", "rate", "prev_k", "ue_budget")
FEATURE_LOW = np.array([-5.0, -5.0, 0.0, 0.0, 0.0], dtype=np.float32)
FEATURE_HIGH = np.array([5.0, 5.0, 5.0, 1.0, 1.0], dtype=np.float32)
RATE_SCALE_BPS_PER_HZ = 10.0
"""Rate feature = goodput / bandwidth / this (10 bit/s/Hz, about the Shannon rate at 30 dB, maps to 1)."""


@dataclass
class UserState:
    """One UE over an episode (or, in the multi-user env, from its arrival on)."""

    snr_db: np.ndarray
    """[T] true SNR per step (the channel the transmission meets)."""
    snr_est_db: np.ndarray
    """[T] what the UE measures before choosing: ``snr_db`` plus estimation noise."""
    ue_budget: float
    """Fraction of UE compute free for this UE's requests, in (0, 1]."""
    start: int = 0
    """Env step at which ``snr_db[0]`` applies (arrival time in the multi-user env)."""
    prev_k: int = 0
    """Split chosen at the previous step (0 before the first choice)."""

    def index(self, t: int) -> int:
        """Trace index of env step ``t`` (the last entry once the trace is used up)."""
        return min(t - self.start, len(self.snr_db) - 1)


@dataclass
class Observer:
    """Builds the wireless observation from what a UE knows; the env and the serving policy share it.

    A trained policy is only as good as the agreement between the observation it was trained on and the
    one it acts on, so ``splitlab train`` saves this (:meth:`to_dict`, in ``policy.json``) and the Serve
    policy rebuilds it (:meth:`from_dict`) instead of re-deriving the features.
    """

    num_layers: int
    hidden_size: int
    tokens: int
    """Tokens per request whose hidden states cross the link (sets the payload of the rate feature)."""
    link: ChannelConfig
    snr_ref_db: float = 15.0
    snr_scale_db: float = 10.0
    _rates: dict[float, float] = field(default_factory=dict, repr=False)

    def features(self, snr_est_db: float, trend_db: float, prev_k: int, ue_budget: float) -> np.ndarray:
        """[N_FEATURES] float32, clipped to [FEATURE_LOW, FEATURE_HIGH]; ``trend_db`` in dB per step."""
        x = np.array([(snr_est_db - self.snr_ref_db) / self.snr_scale_db, trend_db / self.snr_scale_db,
                      self.rate(snr_est_db), prev_k / self.num_layers, ue_budget], dtype=np.float32)
        return np.clip(x, FEATURE_LOW, FEATURE_HIGH)

    def rate(self, snr_est_db: float) -> float:
        """Rate feature: goodput at ``snr_est_db`` / bandwidth / RATE_SCALE_BPS_PER_HZ."""
        # An observation needs no more than 0.01 dB of precision; rounding lets a cache serve most steps.
        key = round(float(snr_est_db), 2)
        rate = self._rates.get(key)
        if rate is None:
            if len(self._rates) > 100_000:
                self._rates.clear()
            cost = link_cost(self.tokens, self.hidden_size, self.link, snr_db=key)
            goodput = cost.payload_bits / cost.tx_time_s if cost.tx_time_s > 0 else 0.0
            rate = self._rates[key] = goodput / self.link.bandwidth_hz / RATE_SCALE_BPS_PER_HZ
        return rate

    def to_dict(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "tokens": self.tokens,
                "link": self.link.to_dict(), "snr_ref_db": self.snr_ref_db, "snr_scale_db": self.snr_scale_db}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observer:
        d = dict(d)
        return cls(**{**d, "link": ChannelConfig.from_dict(d["link"])})


def default_link(model: RewardModel) -> ChannelConfig:
    """The link assumed when the config names none: digital if the quality was measured on a digital sweep."""
    return ChannelConfig(kind="digital" if model.channel.startswith("digital") else "awgn")


class WirelessModel:
    """Features, latency and reward of the ``wireless`` preset for a given config and reward model."""

    def __init__(self, config: SplitEnvConfig, reward_model: RewardModel) -> None:
        self.config = config
        self.reward_model = reward_model
        self.num_layers = reward_model.num_layers
        self.hidden = reward_model.hidden_size
        self.candidate_ks = config.candidate_ks if config.candidate_ks is not None else tuple(reward_model.ks)
        bad = [k for k in self.candidate_ks if k > self.num_layers]
        if bad:
            raise ValueError(f"candidate_ks must lie in 0..{self.num_layers} (the model's layers), got {bad}")
        self.leakage, self.energy = config.privacy_table, config.energy_table
        if self.leakage is not None and config.privacy_mode == "constraint":
            leak = self.leakage.at(self.candidate_ks)
            feasible = tuple(k for k, v in zip(self.candidate_ks, np.atleast_1d(leak)) if v <= config.privacy_budget)
            if not feasible:
                raise ValueError(f"no candidate split meets privacy_budget={config.privacy_budget}: leakage per k "
                                 f"{dict(zip(self.candidate_ks, np.round(np.atleast_1d(leak), 3)))}")
            self.candidate_ks = feasible
        elif self.leakage is not None:
            self.leakage.at(self.candidate_ks)  # every candidate needs a value: fail now, not mid-episode
        # Energy is normalised by the table's largest value (typically the whole model on the UE).
        self.energy_ref = max(self.energy.values.values()) if self.energy is not None else 1.0
        if self.energy is not None:
            self.energy.at(self.candidate_ks)
        check_reward_model(reward_model, "snr_db", self.candidate_ks, "the wireless preset")
        self.ppl_clean = float(reward_model.ppl_clean)
        self.link = config.channel if config.channel is not None else default_link(reward_model)
        self.device = config.device
        self.latency_ref_s = (config.latency_ref_s if config.latency_ref_s is not None
                              else self.device.local_latency_s(self.num_layers, self.hidden))
        self._links: dict[float, ChannelConfig] = {self.link.bandwidth_hz: self.link}
        self.observer = Observer(self.num_layers, self.hidden, self.device.tokens, self.link, config.snr_ref_db,
                                 config.snr_scale_db)

    # -- episode draws ------------------------------------------------------------------------
    def draw_user(self, rng: np.random.Generator, n_steps: int, start: int = 0, trace: np.ndarray | None = None,
                  snr_offset_db: float = 0.0) -> UserState:
        """A user whose trace covers ``n_steps`` steps from ``start``. Draw order: trace, estimates, budget."""
        if trace is None:
            trace = self.config.dynamics.trace(n_steps, rng) + snr_offset_db
        else:
            trace = np.asarray(trace, dtype=np.float64)
            if trace.ndim != 1 or trace.size == 0 or not np.isfinite(trace).all():
                raise ValueError(f"trace must be a non-empty 1-D array of finite SNRs in dB, got shape {trace.shape}")
        noise = rng.normal(0.0, self.config.snr_estimation_std_db, size=trace.size)
        low, high = self.config.ue_budget_range
        budget = float(rng.uniform(low, high)) if high > low else float(low)
        return UserState(snr_db=trace, snr_est_db=trace + noise, ue_budget=budget, start=start)

    # -- observation --------------------------------------------------------------------------
    def features(self, user: UserState, t: int) -> np.ndarray:
        """[N_FEATURES] float32 observation of ``user`` at env step ``t`` (see FEATURE_NAMES)."""
        i = user.index(t)
        est = user.snr_est_db[i]
        back = min(i, self.config.trend_window)
        trend = (est - user.snr_est_db[i - back]) / back if back else 0.0  # dB per step
        return self.observer.features(est, trend, user.prev_k, user.ue_budget)

    # -- costs and reward ---------------------------------------------------------------------
    def link_for(self, bandwidth_hz: float | None) -> ChannelConfig:
        """The link with its bandwidth replaced (a user's share of the cell), cached per bandwidth."""
        if bandwidth_hz is None:
            return self.link
        link = self._links.get(bandwidth_hz)
        if link is None:
            link = self._links[bandwidth_hz] = self.link.replace(bandwidth_hz=float(bandwidth_hz))
        return link

    def link_cost(self, snr_db: float, bandwidth_hz: float | None = None) -> LinkCost:
        """Cost of one request's hidden state (``device.tokens`` x hidden) at ``snr_db``."""
        return link_cost(self.device.tokens, self.hidden, self.link_for(bandwidth_hz), snr_db=float(snr_db))

    def outcome(self, user: UserState, t: int, k: int, bandwidth_hz: float | None = None,
                edge_tail_layers: float | None = None) -> tuple[RewardTerms, dict[str, float]]:
        """Reward terms and the step's info metrics when ``user`` splits at ``k`` at env step ``t``.

        ``bandwidth_hz``: this user's share of the cell (None: the link's own bandwidth);
        ``edge_tail_layers``: tail layers the edge runs this step over all users (None: this user's).
        """
        i = user.index(t)
        snr = float(user.snr_db[i])
        cost = self.link_cost(snr, bandwidth_hz)
        latency = self.device.latency(k, self.num_layers, self.hidden, cost.tx_time_s, user.ue_budget,
                                      edge_tail_layers)
        ppl = self.reward_model.quality(k, snr)
        terms = self.reward(ppl, k, latency)
        info = {"quality/ppl": ppl, "quality/ppl_clean": self.ppl_clean, "cost/k": float(k),
                "cost/ue_layers_frac": k / self.num_layers, **latency.as_metrics(),
                "link/bytes": cost.payload_bytes, "link/goodput_bps": cost.payload_bits / cost.tx_time_s
                if cost.tx_time_s > 0 else 0.0, "channel/snr_db": snr,
                "channel/snr_est_db": float(user.snr_est_db[i]), "ue/budget": user.ue_budget,
                **terms.as_metrics()}
        if self.leakage is not None:
            info["privacy/leakage"] = self.leakage.at(k)
        if self.energy is not None:
            info["cost/ue_energy"] = self.energy.at(k)
        return terms, info

    def reward(self, ppl, k, latency: Latency) -> RewardTerms:
        cfg = self.config
        excess = 0.0
        if self.leakage is not None and cfg.privacy_mode == "penalty":
            excess = np.maximum(0.0, self.leakage.at(k) - cfg.privacy_budget)
        energy = self.energy.at(k) / self.energy_ref if self.energy is not None and cfg.w_e > 0 else 0.0
        return wireless_reward(ppl, self.ppl_clean, k, self.num_layers, latency.total_s, self.latency_ref_s,
                               cfg.w_q, cfg.w_c, cfg.w_l, excess, cfg.w_p, energy, cfg.w_e)

    def decision_rewards(self, snr_db: float, quality: np.ndarray, ue_budgets: np.ndarray) -> np.ndarray:
        """[B, len(candidate_ks)] reward of every candidate at ``snr_db`` when its quality term
        log(PPL_k / PPL_clean) is ``quality`` [len(candidate_ks)], for each UE budget [B].

        What the Dyna loop weighs a prospective measurement by: would it change the best split?
        """
        ks = np.asarray(self.candidate_ks)
        tx = self.link_cost(snr_db).tx_time_s
        ppl = self.ppl_clean * np.exp(np.asarray(quality, dtype=np.float64))
        out = [self.reward(ppl, ks, self.device.latency(ks, self.num_layers, self.hidden, tx, float(b))).total
               for b in np.asarray(ue_budgets, dtype=np.float64)]
        return np.asarray(out, dtype=np.float64)

    def action_rewards(self, user: UserState, t: int) -> np.ndarray:
        """[len(candidate_ks)] reward of every candidate at env step ``t`` from the true channel (oracle)."""
        snr = float(user.snr_db[user.index(t)])
        tx = self.link_cost(snr).tx_time_s
        ks = np.asarray(self.candidate_ks)
        ppl = self.reward_model.quality_table(self.candidate_ks, snr)
        latency = self.device.latency(ks, self.num_layers, self.hidden, tx, user.ue_budget)  # fields [A]
        return np.asarray(self.reward(ppl, ks, latency).total, dtype=np.float64)
