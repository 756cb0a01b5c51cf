"""Wireless-preset policies that act on what the UE observes (the SNR estimate and its UE budget).

- :class:`InfoMatchedOracle`: the best split given exactly that observation, with the true quality:
  a table from (SNR-estimate bin, UE-budget bin) to the split that maximises the mean true reward over
  a calibration sample of (estimate, true SNR) pairs drawn from the env's own dynamics and estimation
  noise, from a seed stream apart from training's and the scoring traces'. It is the fair ceiling for a
  policy that sees the noisy estimate (the clairvoyant :class:`~splitlab.envs.policies.OraclePolicy`
  sees the true SNR, which no deployable policy does). It ignores the SNR-trend feature, which carries a
  little more information, so a learned policy can edge past it (a score slightly above 1).
- :class:`PlugInGreedyPolicy`: the split that maximises the reward computed from a quality model
  (a surrogate, a measured grid, a GP) at the SNR estimate, taken as if it were the true SNR. No RL.

Both read the SNR estimate and the budget from the observation itself (features 0 and 4), never the env's
hidden state.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from splitlab.envs.split_env import SplitEnv

CALIBRATION_SEED = 2_000_003
"""Seed of the info-matched oracle's calibration sample: apart from training's small seeds and from
``HELD_OUT_SEED`` (1_000_003), which draws the scoring traces."""


def observed_snr_budget(env: SplitEnv, obs: np.ndarray) -> tuple[float, float]:
    """(SNR estimate in dB, UE budget) from a wireless observation (features 0 and 4)."""
    cfg = env.config
    return float(obs[0]) * cfg.snr_scale_db + cfg.snr_ref_db, float(obs[4])


def _check_wireless(env: SplitEnv, what: str) -> None:
    if env.config.preset != "wireless":
        raise ValueError(f"{what} needs the wireless preset, got preset={env.config.preset!r}")


class InfoMatchedOracle:
    """Best split per (SNR-estimate bin, UE-budget bin) from the true reward (see the module docstring).

    Args:
        env: the env scored in (its reward model is the truth; its dynamics and estimation noise make
            the calibration sample).
        users: calibration episodes (each ``episode_len + 1`` steps of (estimate, true SNR) pairs).
        snr_bin_db: width of an SNR-estimate bin.
        budget_bins: UE-budget bins across ``ue_budget_range`` (one when the budget is fixed).
        samples_per_bin: true SNRs kept per estimate bin (a seeded subsample), at least ``min_samples``
            (neighbouring bins are pooled for sparse tails).
    """

    def __init__(self, env: SplitEnv, users: int = 400, seed: int = CALIBRATION_SEED, snr_bin_db: float = 0.5,
                 budget_bins: int = 8, samples_per_bin: int = 48, min_samples: int = 8) -> None:
        _check_wireless(env, "InfoMatchedOracle")
        if users < 1 or snr_bin_db <= 0 or budget_bins < 1 or samples_per_bin < min_samples or min_samples < 1:
            raise ValueError(f"need users >= 1, snr_bin_db > 0, budget_bins >= 1 and samples_per_bin >= "
                             f"min_samples >= 1, got {users}, {snr_bin_db}, {budget_bins}, {samples_per_bin}, "
                             f"{min_samples}")
        rng = np.random.default_rng(seed)
        model = env.model
        est, true = [], []
        for _ in range(users):
            user = model.draw_user(rng, env.episode_len + 1)
            est.append(user.snr_est_db)
            true.append(user.snr_db)
        est_all, true_all = np.concatenate(est), np.concatenate(true)
        self.snr_bin_db = float(snr_bin_db)
        self.lo = float(np.floor(est_all.min() / snr_bin_db) * snr_bin_db)
        n_bins = int(np.floor((est_all.max() - self.lo) / snr_bin_db)) + 1
        idx = np.clip(((est_all - self.lo) / snr_bin_db).astype(int), 0, n_bins - 1)
        low, high = model.config.ue_budget_range
        self.budget_edges = np.linspace(low, high, budget_bins + 1) if high > low else np.array([low, low])
        centres = (self.budget_edges[:-1] + self.budget_edges[1:]) / 2
        ks = np.asarray(model.candidate_ks)
        truth = env.reward_model
        table = np.zeros((n_bins, len(centres)), dtype=int)
        self.samples = np.zeros(n_bins, dtype=int)
        for b in range(n_bins):
            width = 0
            pool = true_all[idx == b]
            while pool.size < min_samples:  # sparse tails: pool the neighbouring bins
                width += 1
                pool = true_all[(idx >= b - width) & (idx <= b + width)]
            if pool.size > samples_per_bin:
                pool = rng.choice(pool, samples_per_bin, replace=False)
            self.samples[b] = pool.size
            mean = np.zeros((len(centres), len(ks)))
            for snr in pool:
                quality = np.log(truth.quality_table(model.candidate_ks, float(snr)) / model.ppl_clean)
                mean += model.decision_rewards(float(snr), quality, centres)
            table[b] = np.argmax(mean, axis=1)
        self.table = table
        """[SNR-estimate bins, budget bins] -> action index (into candidate_ks)."""

    def __repr__(self) -> str:
        return f"InfoMatchedOracle(bins={self.table.shape})"

    def reset(self, env: SplitEnv) -> None:
        pass

    def act(self, obs: np.ndarray, env: SplitEnv) -> int:
        est, budget = observed_snr_budget(env, obs)
        b = int(np.clip((est - self.lo) // self.snr_bin_db, 0, self.table.shape[0] - 1))
        u = int(np.clip(np.searchsorted(self.budget_edges, budget, side="right") - 1, 0, self.table.shape[1] - 1))
        return int(self.table[b, u])


class PlugInGreedyPolicy:
    """The split with the best reward from ``quality_model`` at the SNR estimate (see the module docstring).

    ``quality_model`` is any reward model over the env's candidate splits (``quality_table(ks, snr)`` in
    perplexity, ``ppl_clean``): a fitted surrogate, a measured grid, a bandit's posterior mean.
    """

    def __init__(self, quality_model: Any) -> None:
        self.quality_model = quality_model

    def __repr__(self) -> str:
        return f"PlugInGreedyPolicy({type(self.quality_model).__name__})"

    def reset(self, env: SplitEnv) -> None:
        _check_wireless(env, "PlugInGreedyPolicy")

    def act(self, obs: np.ndarray, env: SplitEnv) -> int:
        est, budget = observed_snr_budget(env, obs)
        m = self.quality_model
        quality = np.log(np.asarray(m.quality_table(env.candidate_ks, est), dtype=float) / float(m.ppl_clean))
        return int(np.argmax(env.model.decision_rewards(est, quality, np.array([budget]))[0]))
