"""Parameter checks shared by every channel module.

Each check raises ``ValueError`` whose message names the parameter, the offending value and what
would be accepted, so that a bad experiment spec fails before any tensor is touched.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _as_float_array(name: str, value: Any) -> np.ndarray:
    # Strings and bools would convert silently ("0.3" -> 0.3, True -> 1.0); a spec with either
    # in a numeric field is a mistake worth reporting.
    raw = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a number or array of numbers, got {value!r}")
    return raw.astype(np.float64, copy=False)


def _describe(array: np.ndarray, bad: np.ndarray) -> str:
    if array.ndim == 0:
        return repr(float(array))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return f"{float(array[first])!r} at index {first} (shape {tuple(array.shape)})"


def check_finite(name: str, value: Any) -> Any:
    """Reject NaN and +-inf in a number or array; return ``value`` unchanged."""
    array = _as_float_array(name, value)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(f"{name} must be finite, got {_describe(array, bad)}")
    return value


def check_range(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """Check that a finite number (or every element of an array) lies in an interval.

    ``check_range("rho", rho, 0.0, 1.0)`` accepts [0, 1]; ``low_open=True`` excludes ``low``.
    Returns ``value`` unchanged so that it can be used inline.
    """
    if isinstance(value, (float, int, np.floating, np.integer)) and not isinstance(value, (bool, np.bool_)):
        # Scalars skip the array round trip: environments check an SNR on every step.
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(f"{name} must be finite, got {x!r}")
        if (x <= low if low_open else x < low) or (x >= high if high_open else x > high):
            raise ValueError(f"{name} must be in {_interval(low, high, low_open, high_open)}, got {x!r}")
        return value
    check_finite(name, value)
    array = _as_float_array(name, value)
    below = array <= low if low_open else array < low
    above = array >= high if high_open else array > high
    bad = below | above
    if bad.any():
        raise ValueError(f"{name} must be in {_interval(low, high, low_open, high_open)}, got {_describe(array, bad)}")
    return value


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Check that ``value`` is an integer (not a bool, not a float) in ``[low, high]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """Check that ``value`` is a real bool (YAML ``true``/``false``), not a truthy string."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Check that ``value`` is one of ``choices`` (case-sensitive)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_hidden_states(name: str, h: Any, min_ndim: int = 2) -> torch.Tensor:
    """Check that ``h`` is a floating tensor shaped ``[..., tokens, hidden]``."""
    if not isinstance(h, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(h).__name__}")
    if not h.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {h.dtype}")
    if h.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dims [..., tokens, hidden], got shape {tuple(h.shape)}"
        )
    return h


def check_rng(name: str, rng: Any) -> np.random.Generator:
    """Require an explicit ``numpy.random.Generator``: global RNG state is never used."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"{name} must be a numpy.random.Generator (e.g. numpy.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    return rng
