"""Gray-coded modulation: symbol-level simulation against the theoretical bit error rates."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from splitlab.channel import BITS_PER_SYMBOL, db_to_linear, demodulate, flip_bits, modulate, theoretical_ber

N_BITS = 1_200_000


def _simulated_ber(scheme: str, snr_db: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, N_BITS, dtype=np.uint8)
    symbols = modulate(bits, scheme)
    n0 = 1.0 / db_to_linear(snr_db)  # unit-energy symbols: Es/N0 = 1/N0
    noise = math.sqrt(n0 / 2) * (rng.standard_normal(symbols.size) + 1j * rng.standard_normal(symbols.size))
    return float(np.mean(demodulate(symbols + noise, scheme) != bits))


# SNRs chosen so that the BER is between about 1e-3 and 1e-1: at least ~1000 errors per point.
CASES = [
    ("bpsk", 0.0), ("bpsk", 4.0), ("bpsk", 6.0),
    ("qpsk", 3.0), ("qpsk", 7.0), ("qpsk", 9.0),
    ("16qam", 6.0), ("16qam", 11.0), ("16qam", 15.0),
]


@pytest.mark.parametrize(("scheme", "snr_db"), CASES)
def test_simulated_ber_within_10_percent_of_theory(scheme, snr_db):
    theory = float(theoretical_ber(db_to_linear(snr_db), scheme))
    assert theory * N_BITS > 1000
    simulated = _simulated_ber(scheme, snr_db, seed=int(snr_db * 10) + len(scheme))
    assert abs(simulated / theory - 1.0) < 0.10


def test_textbook_16qam_approximation_is_close_at_high_snr():
    gamma = db_to_linear(np.array([12.0, 16.0, 20.0]))
    approx = 0.75 * 0.5 * np.array([math.erfc(math.sqrt(g / 5) / math.sqrt(2)) for g in gamma])
    assert np.allclose(theoretical_ber(gamma, "16qam"), approx, rtol=0.01)


@pytest.mark.parametrize("scheme", ["bpsk", "qpsk", "16qam"])
def test_noise_free_round_trip_and_unit_energy(scheme):
    bits = np.random.default_rng(0).integers(0, 2, 4000 * BITS_PER_SYMBOL[scheme], dtype=np.uint8)
    symbols = modulate(bits, scheme)
    assert symbols.size == bits.size // BITS_PER_SYMBOL[scheme]
    assert np.array_equal(demodulate(symbols, scheme), bits)
    constellation = modulate(np.array(list(itertools.product([0, 1], repeat=BITS_PER_SYMBOL[scheme]))).reshape(-1), scheme)
    assert abs(np.mean(np.abs(constellation) ** 2) - 1.0) < 1e-12


def test_16qam_is_gray_coded():
    labels = np.array(list(itertools.product([0, 1], repeat=4)))
    points = modulate(labels.reshape(-1), "16qam")
    nearest = np.sort(np.abs(points[:, None] - points[None, :]), axis=1)[:, 1].min()
    for i, j in itertools.combinations(range(16), 2):
        if abs(abs(points[i] - points[j]) - nearest) < 1e-9:  # nearest neighbours
            assert np.sum(labels[i] != labels[j]) == 1


def test_theoretical_ber_limits():
    for scheme in ("bpsk", "qpsk"):
        assert theoretical_ber(0.0, scheme) == pytest.approx(0.5)
    assert theoretical_ber(0.0, "16qam") == pytest.approx(0.5)
    curve = theoretical_ber(db_to_linear(np.linspace(-10, 30, 41)), "16qam")
    assert np.all(np.diff(curve) <= 0)
    # Same SNR per symbol: more bits per symbol, more errors.
    gamma = db_to_linear(10.0)
    assert theoretical_ber(gamma, "bpsk") < theoretical_ber(gamma, "qpsk") < theoretical_ber(gamma, "16qam")


@pytest.mark.parametrize("ber", [1e-4, 3e-3, 0.05, 0.3])
def test_flip_bits_rate_matches_request(ber):
    """Covers both the sparse (count then positions) and the dense (per-bit) paths."""
    payload = np.random.default_rng(1).integers(0, 256, 500_000, dtype=np.uint8)
    flipped = flip_bits(payload, ber, np.random.default_rng(2))
    errors = np.unpackbits(payload ^ flipped).sum()
    n = payload.size * 8
    assert abs(errors - ber * n) < 4 * math.sqrt(n * ber * (1 - ber))
