"""Confidence intervals for sampled figures (every one goes out with n and a 95% CI)."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def ci95(samples: Sequence[float] | np.ndarray) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``samples`` (0 for fewer than two)."""
    x = np.asarray(samples, dtype=float)
    if len(x) < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))


def bootstrap_ci(samples: Sequence[float] | np.ndarray, statistic: Callable[..., np.ndarray] = np.median,
                 resamples: int = 2000, seed: int = 0, outward: bool = True) -> tuple[float, float]:
    """Percentile bootstrap 95% interval (low, high) of ``statistic`` over ``samples``, resampled with
    replacement (all resamples drawn at once; ``statistic(x, axis=1)`` reduces each row, as np.median and
    np.mean do). ``outward``: the 2.5/97.5 percentiles rounded outward to resampled values, so that
    infinities ("never reached") stay infinite; else interpolated linearly. One sample gives (it, it)."""
    x = np.asarray(samples, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D sample, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    stats_ = statistic(x[rng.integers(0, x.size, (resamples, x.size))], axis=1)  # [resamples]
    if outward:
        return float(np.percentile(stats_, 2.5, method="lower")), float(np.percentile(stats_, 97.5, method="higher"))
    lo, hi = np.percentile(stats_, [2.5, 97.5])
    return float(lo), float(hi)
