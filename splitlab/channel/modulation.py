"""Gray-coded BPSK, QPSK and 16-QAM: mapping, hard-decision demapping and bit error rates.

SNR convention, used everywhere in :mod:`splitlab.channel`: ``snr`` is the **SNR per symbol**
``gamma = Es / N0`` of complex baseband symbols with unit average energy in complex AWGN of total
variance ``N0`` (``N0 / 2`` per real dimension), after perfect equalisation of any fading. Then,
with ``Q(x) = erfc(x / sqrt 2) / 2``, the exact Gray-coded bit error rates are:

- BPSK:   ``Q(sqrt(2 gamma))``                    (``Eb = Es``; the design note's "Q(sqrt(2 gamma))"
  with gamma = Eb/N0 is the same curve)
- QPSK:   ``Q(sqrt(gamma))``                      (``Eb = Es / 2``, i.e. ``Q(sqrt(2 Eb/N0))``)
- 16-QAM: ``(3 Q(d) + 2 Q(3d) - Q(5d)) / 4`` with ``d = sqrt(gamma / 5)``. The usual textbook
  approximation ``(3/4) Q(sqrt(gamma / 5))`` keeps only the first term; the extra terms matter
  below about 10 dB, where they add up to ~3 %, so the exact per-dimension 4-PAM form is used.

The digital link (:mod:`splitlab.channel.digital`) draws bit flips at these theoretical rates
instead of modulating every bit, which is much faster; the tests check that symbol-level
simulation with :func:`modulate` / :func:`demodulate` agrees with them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from splitlab.channel.validation import check_choice, check_range

MODULATIONS = ("bpsk", "qpsk", "16qam")
"""Accepted modulation schemes."""

BITS_PER_SYMBOL = {"bpsk": 1, "qpsk": 2, "16qam": 4}
"""Bits carried by one symbol of each scheme."""

# 4-PAM Gray labels for 16-QAM per real dimension: 00 -> -3, 01 -> -1, 11 -> +1, 10 -> +3.
# The first bit is the sign and the second says inner (1) or outer (0), so hard decisions are
# two threshold tests and adjacent levels differ in exactly one bit.
_PAM4_LEVEL = np.array([-3.0, -1.0, 3.0, 1.0])  # indexed by 2 * b0 + b1
_QAM16_NORM = math.sqrt(10.0)  # mean energy of {+-1, +-3}^2 is 10


def q_function(x: np.ndarray | float) -> np.ndarray:
    """Gaussian tail probability ``Q(x) = P(N(0,1) > x) = erfc(x / sqrt 2) / 2`` (float64)."""
    x64 = torch.as_tensor(np.asarray(x, dtype=np.float64))
    return (0.5 * torch.special.erfc(x64 / math.sqrt(2.0))).numpy()


def theoretical_ber(snr_linear: np.ndarray | float, scheme: str) -> np.ndarray:
    """Bit error rate of Gray-coded ``scheme`` at SNR per symbol ``snr_linear`` (= Es/N0, linear).

    Args:
        snr_linear: non-negative SNR per symbol, any shape.
        scheme: one of ``MODULATIONS``.

    Returns:
        float64 array shaped like ``snr_linear``, in [0, 0.5].
    """
    check_choice("modulation", scheme, MODULATIONS)
    check_range("snr_linear", snr_linear, 0.0)
    gamma = np.asarray(snr_linear, dtype=np.float64)
    if scheme == "bpsk":
        return q_function(np.sqrt(2.0 * gamma))
    if scheme == "qpsk":
        return q_function(np.sqrt(gamma))
    d = np.sqrt(gamma / 5.0)
    return (3.0 * q_function(d) + 2.0 * q_function(3.0 * d) - q_function(5.0 * d)) / 4.0


def _check_bits(bits: np.ndarray, scheme: str) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.ndim != 1 or not np.isin(bits, (0, 1)).all():
        raise ValueError(f"bits must be a 1-D array of 0/1, got shape {bits.shape}")
    per_symbol = BITS_PER_SYMBOL[scheme]
    if bits.size % per_symbol:
        raise ValueError(
            f"bits length must be a multiple of {per_symbol} for {scheme}, got {bits.size}"
        )
    return bits.astype(np.int64)


def modulate(bits: np.ndarray, scheme: str) -> np.ndarray:
    """Map bits to Gray-coded unit-energy constellation points.

    Args:
        bits: ``[n_bits]`` of 0/1; ``n_bits`` a multiple of ``BITS_PER_SYMBOL[scheme]``.
        scheme: one of ``MODULATIONS``.

    Returns:
        ``[n_bits / bits_per_symbol]`` complex128 symbols with mean energy 1.
    """
    check_choice("modulation", scheme, MODULATIONS)
    b = _check_bits(bits, scheme)
    if scheme == "bpsk":
        return (1.0 - 2.0 * b).astype(np.complex128)
    if scheme == "qpsk":
        pairs = b.reshape(-1, 2)
        return ((1.0 - 2.0 * pairs[:, 0]) + 1j * (1.0 - 2.0 * pairs[:, 1])) / math.sqrt(2.0)
    quads = b.reshape(-1, 4)
    in_phase = _PAM4_LEVEL[2 * quads[:, 0] + quads[:, 1]]
    quadrature = _PAM4_LEVEL[2 * quads[:, 2] + quads[:, 3]]
    return (in_phase + 1j * quadrature) / _QAM16_NORM


def demodulate(symbols: np.ndarray, scheme: str) -> np.ndarray:
    """Hard-decision (minimum distance) demapping of equalised symbols back to bits.

    Args:
        symbols: ``[n_symbols]`` complex received symbols.
        scheme: one of ``MODULATIONS``.

    Returns:
        ``[n_symbols * bits_per_symbol]`` uint8 bits.
    """
    check_choice("modulation", scheme, MODULATIONS)
    y = np.asarray(symbols).reshape(-1)
    if scheme == "bpsk":
        return (y.real < 0).astype(np.uint8)
    if scheme == "qpsk":
        return np.stack([y.real < 0, y.imag < 0], axis=1).reshape(-1).astype(np.uint8)
    i, q = y.real * _QAM16_NORM, y.imag * _QAM16_NORM
    # Sign bit: positive half is b0 = 1; inner/outer bit: |x| < 2 (midway between 1 and 3) is inner.
    bits = np.stack([i > 0, np.abs(i) < 2.0, q > 0, np.abs(q) < 2.0], axis=1)
    return bits.reshape(-1).astype(np.uint8)
