"""Confidence intervals for sampled figures (every one goes out with n and a 95% CI)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ci95(samples: Sequence[float] | np.ndarray) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``samples`` (0 for fewer than two)."""
    x = np.asarray(samples, dtype=float)
    if len(x) < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
