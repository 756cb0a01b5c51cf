"""The reward of one split decision: turn a perplexity and its costs into a number.

Every environment (and every baseline or analysis that scores a split) goes through these two
functions, so that a reward means the same thing everywhere. Both work on scalars or on numpy arrays
of split points (e.g. one value per candidate k, for the oracle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RewardTerms:
    """The signed, weighted terms of one reward; ``total`` is their sum."""

    quality: float
    """Quality term (paper: ``alpha * (PPL_ref - PPL_k) / PPL_ref``; wireless: ``-w_q * log(PPL_k / PPL_clean)``)."""
    compute: float
    """UE-compute term (paper: ``+beta * (K_max - k) / K_max``; wireless: ``-w_c * k / L``)."""
    latency: float = 0.0
    """Latency term (wireless: ``-w_l * latency / latency_ref``; paper: 0)."""
    privacy: float = 0.0
    """Privacy term (wireless, penalty mode: ``-w_p * max(0, leakage_k - budget)``; else 0)."""
    energy: float = 0.0
    """UE-energy term (wireless: ``-w_e * energy_k / energy_ref``; 0 without an energy table)."""

    @property
    def total(self) -> float:
        return self.quality + self.compute + self.latency + self.privacy + self.energy

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]:
        """``{"reward/quality": ..., "reward/compute": ..., "reward/latency": ..., "reward/privacy": ...,
        "reward/energy": ..., "reward/total": ...}``."""
        return {f"{prefix}quality": float(self.quality), f"{prefix}compute": float(self.compute),
                f"{prefix}latency": float(self.latency), f"{prefix}privacy": float(self.privacy),
                f"{prefix}energy": float(self.energy), f"{prefix}total": float(self.total)}


def paper_k_max(num_layers: int, k_max: int | None = None) -> int:
    """K_max, the deepest split the paper's reward allows: ``k_max`` when given, else the paper's 10 of 32
    layers scaled to the model's depth, ``round(10 / 32 * L)`` (at least 1)."""
    return int(k_max) if k_max is not None else max(1, round(10 / 32 * num_layers))


def paper_reward(ppl, ppl_ref: float, k, k_max: int, alpha: float = 10.0, beta: float = 1.0) -> RewardTerms:
    """The paper's reward ``alpha * (PPL_ref - PPL_k) / PPL_ref + beta * (K_max - k) / K_max``.

    ``ppl_ref`` is the clean, unsplit perplexity (the released code reused a stale value after a
    reset; this function has no state, so that cannot happen). ``ppl`` and ``k`` may be arrays [A].
    """
    quality = alpha * (ppl_ref - np.asarray(ppl, float)) / ppl_ref
    compute = beta * (k_max - np.asarray(k, float)) / k_max
    return RewardTerms(_scalar(quality), _scalar(compute), 0.0)


def wireless_reward(ppl, ppl_clean: float, k, num_layers: int, latency_s, latency_ref_s: float,
                    w_q: float = 1.0, w_c: float = 0.5, w_l: float = 0.5, leakage_excess=0.0, w_p: float = 0.0,
                    energy_frac=0.0, w_e: float = 0.0) -> RewardTerms:
    """``-w_q * log(PPL_k / PPL_clean) - w_c * k / L - w_l * latency / latency_ref - w_p * excess - w_e * energy``.

    ``leakage_excess`` is ``max(0, leakage_k - budget)``; ``energy_frac`` the UE energy over its
    reference. ``ppl``, ``k``, ``latency_s`` and both of those may be arrays [A] (one entry per candidate).
    """
    quality = -w_q * np.log(np.asarray(ppl, float) / ppl_clean)
    compute = -w_c * np.asarray(k, float) / num_layers
    latency = -w_l * np.asarray(latency_s, float) / latency_ref_s
    privacy = -w_p * np.asarray(leakage_excess, float) + 0.0 * compute  # broadcast to the candidates' shape
    energy = -w_e * np.asarray(energy_frac, float) + 0.0 * compute
    return RewardTerms(_scalar(quality), _scalar(compute), _scalar(latency), _scalar(privacy), _scalar(energy))


def _scalar(x: np.ndarray):
    return float(x) if np.ndim(x) == 0 else x
