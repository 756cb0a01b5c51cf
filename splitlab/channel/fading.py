"""Block fading: power gains and the instantaneous SNR they produce.

Small-scale fading multiplies the received power by a gain ``g`` that stays constant over a block
(one packet or one token) and is independent across blocks. With perfect equalisation the only
effect of fading is the instantaneous SNR ``gamma = mean_snr * g``.

Nakagami-m fading has ``g ~ Gamma(shape=m, scale=1/m)``, so ``E[g] = 1`` (fading does not change
the mean SNR) and ``Var[g] = 1/m``. ``m = 1`` is Rayleigh; ``m -> inf`` tends to no fading.
"""

from __future__ import annotations

import numpy as np

from splitlab.channel.validation import check_choice, check_finite, check_int, check_range, check_rng

FADING_KINDS = ("none", "rayleigh", "nakagami")
"""Accepted values of ``fading``: no fading, Rayleigh (m = 1) or Nakagami-m."""

NAKAGAMI_M_RANGE = (0.5, 1e6)
"""Nakagami-m is defined for m >= 1/2; the upper bound only rejects typos."""


def fading_gains(kind: str, n_blocks: int, rng: np.random.Generator, m: float = 1.0) -> np.ndarray:
    """Draw one power gain per fading block.

    Args:
        kind: one of ``FADING_KINDS``. ``"rayleigh"`` ignores ``m`` (it is Nakagami with m = 1).
        n_blocks: number of independent blocks.
        rng: the only source of randomness.
        m: Nakagami shape parameter, used by ``"nakagami"``.

    Returns:
        ``[n_blocks]`` float64 power gains with mean 1. ``"none"`` gives ones and draws nothing.
    """
    check_choice("fading", kind, FADING_KINDS)
    check_int("n_blocks", n_blocks, 0)
    check_range("nakagami_m", m, *NAKAGAMI_M_RANGE)
    check_rng("rng", rng)
    if kind == "none":
        return np.ones(n_blocks)
    shape = 1.0 if kind == "rayleigh" else float(m)
    return rng.gamma(shape, 1.0 / shape, size=n_blocks)


def db_to_linear(db: np.ndarray | float) -> np.ndarray:
    """``10 ** (db / 10)`` as float64."""
    return np.power(10.0, np.asarray(db, dtype=np.float64) / 10.0)


def linear_to_db(linear: np.ndarray | float) -> np.ndarray:
    """``10 * log10(linear)`` as float64 (``-inf`` for 0)."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(np.asarray(linear, dtype=np.float64))


def instantaneous_snr_db(mean_snr_db: float | np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Instantaneous SNR in dB of each block: ``mean_snr_db + 10 log10(g)``.

    Args:
        mean_snr_db: mean SNR in dB, a scalar or an array broadcastable to ``gains``.
        gains: ``[n_blocks]`` power gains from :func:`fading_gains`.

    Returns:
        ``[n_blocks]`` SNR in dB. A gain of exactly 0 (probability 0) would give ``-inf``.
    """
    check_finite("mean_snr_db", mean_snr_db)
    check_range("gains", gains, 0.0)
    return np.asarray(mean_snr_db, dtype=np.float64) + linear_to_db(gains)


def expand_blocks(block_values: np.ndarray, block_ids: np.ndarray) -> np.ndarray:
    """Give every item the value of the fading block it belongs to.

    Args:
        block_values: ``[n_blocks]`` per-block values (gains or SNRs).
        block_ids: integer array of any shape, the block index of each item (token, element or
            bit segment), e.g. from :class:`splitlab.channel.packets.PacketLayout`.

    Returns:
        An array shaped like ``block_ids``.
    """
    return np.asarray(block_values)[np.asarray(block_ids)]
