"""A synthetic quality grid in ``grid.json`` format: a stand-in for ``splitlab analyze`` output.

For tests, benchmarks and demos that must not wait for a real analysis. The numbers follow a simple
law, not a model: ``log(PPL_k / PPL_clean) = severity * s(k) * noise(value)`` with

- ``noise(snr_db) = 1 / (1 + 10**(snr_db / 10))`` (noise-to-signal-plus-noise power) for SNR
  sweeps, and ``noise(rho) = rho / (1 - rho)`` for erasure;
- ``s(k) = 0.3 + 2.7 * exp(-4 k / L) + 1.5 * (k / L)**2``: a split right after the embeddings is
  the most fragile, the middle of the stack the most robust, the last layers fragile again. This
  gives every channel value a different best k, so that a policy has something to learn.

Never report results computed on it as measurements.
"""
from __future__ import annotations

import numpy as np

from splitlab.channel.validation import check_int, check_range

SNR_VALUES_DB = tuple(float(v) for v in np.arange(-5.0, 35.1, 2.5))
RHO_VALUES = tuple(float(v) for v in np.round(np.arange(0.0, 0.41, 0.025), 3))


def sensitivity(k: np.ndarray | int, num_layers: int) -> np.ndarray:
    """``s(k)`` above, for split points ``k`` (any shape)."""
    x = np.asarray(k, float) / num_layers
    return 0.3 + 2.7 * np.exp(-4.0 * x) + 1.5 * x**2


def synthetic_grid(channel: str = "awgn", num_layers: int = 30, hidden_size: int = 576, ppl_clean: float = 20.0,
                   severity: float | None = None, model: str = "synthetic") -> dict:
    """A ``grid.json`` dict for one channel over every k in 0..L.

    Args:
        channel: ``erasure`` (parameter ``rho``) or any SNR channel name (``awgn``, ``digital``, ...;
            parameter ``snr_db``).
        severity: scale of the damage; None: 4.0 for SNR channels, 0.5 for erasure.
    """
    check_int("num_layers", num_layers, 1)
    check_int("hidden_size", hidden_size, 1)
    check_range("ppl_clean", ppl_clean, 1.0)
    is_erasure = channel == "erasure"
    severity = (0.5 if is_erasure else 4.0) if severity is None else severity
    check_range("severity", severity, 0.0)
    param, values = ("rho", RHO_VALUES) if is_erasure else ("snr_db", SNR_VALUES_DB)
    rows = []
    for k in range(num_layers + 1):
        s = float(sensitivity(k, num_layers))
        for v in values:
            noise = v / (1.0 - v) if is_erasure else 1.0 / (1.0 + 10.0 ** (v / 10.0))
            rows.append({"k": k, "channel": channel, "param": param, "value": v,
                         "ppl_mean": ppl_clean * float(np.exp(severity * s * noise)), "ppl_ci95": 0.0, "seeds": 1})
    return {"model": model, "num_layers": num_layers, "hidden_size": hidden_size, "corpus": "synthetic",
            "tokens": 0, "ppl_clean": ppl_clean, "rows": rows}
