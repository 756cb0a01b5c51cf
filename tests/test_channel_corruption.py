"""Erasure and AWGN: statistics against the requested parameters, shapes, dtypes, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitlab.channel import awgn, erasure, measured_snr_db, signal_power


def _hidden(seed: int = 0, shape=(4, 64, 576), outlier_scale: float = 10.0) -> torch.Tensor:
    """Hidden states with a few large channels, like middle layers of an LLM."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(*shape, generator=g)
    h[..., :3] *= outlier_scale
    return h


@pytest.mark.parametrize("rho", [0.01, 0.2, 0.5, 0.9])
def test_erasure_fraction_within_three_standard_errors(rho):
    h = _hidden() + 100.0  # no element is zero before erasure
    out = erasure(h, rho, np.random.default_rng(1))
    n = h.numel()
    fraction = (out == 0).float().mean().item()
    assert abs(fraction - rho) < 3 * math.sqrt(rho * (1 - rho) / n)


def test_erasure_does_not_rescale_survivors_and_handles_extremes():
    h = _hidden()
    out = erasure(h, 0.3, np.random.default_rng(2))
    kept = out != 0
    assert torch.equal(out[kept], h[kept])
    assert torch.equal(erasure(h, 0.0, np.random.default_rng(0)), h)
    assert not erasure(h, 1.0, np.random.default_rng(0)).any()


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_awgn_measured_snr_within_0p2_db(snr_db, per_channel):
    h = _hidden(shape=(8, 128, 576))
    out = awgn(h, snr_db, np.random.default_rng(3), per_channel=per_channel)
    assert abs(measured_snr_db(h, out) - snr_db) < 0.2


def test_per_channel_normalisation_exposes_outlier_channels():
    """Per-token power is inflated by a few huge channels, so ordinary channels get far less SNR."""
    h = _hidden(shape=(4, 256, 576), outlier_scale=50.0)
    snr_db = 10.0

    def per_channel_snr_db(out: torch.Tensor) -> np.ndarray:
        signal = h.double().square().sum(dim=(0, 1))
        noise = (out.double() - h.double()).square().sum(dim=(0, 1))
        return (10 * torch.log10(signal / noise)).numpy()  # [576]

    token_norm = per_channel_snr_db(awgn(h, snr_db, np.random.default_rng(4), per_channel=False))
    channel_norm = per_channel_snr_db(awgn(h, snr_db, np.random.default_rng(4), per_channel=True))
    # Each channel gets the requested SNR when normalised per channel ...
    assert abs(np.median(channel_norm) - snr_db) < 0.3
    assert np.abs(channel_norm - snr_db).max() < 1.0
    # ... while per-token normalisation drowns ordinary channels by the power ratio (~ 10 log10 14).
    expected_loss = 10 * math.log10(signal_power(h).mean().item())
    assert expected_loss > 10
    assert abs((snr_db - np.median(token_norm[3:])) - expected_loss) < 0.5


def test_awgn_per_token_snr():
    h = _hidden(shape=(2, 6, 4096))
    snr = np.array([-3.0, 0.0, 5.0, 10.0, 20.0, 30.0])  # [T], broadcast over batch
    out = awgn(h, snr, np.random.default_rng(5))
    for t, requested in enumerate(snr):
        assert abs(measured_snr_db(h[:, t], out[:, t]) - requested) < 0.2


def test_awgn_per_element_snr_shape_is_accepted():
    h = _hidden(shape=(1, 16, 64))
    snr = np.full(tuple(h.shape), 10.0)
    snr[..., 32:] = 30.0
    out = awgn(h, snr, np.random.default_rng(6))
    low = measured_snr_db(h[..., 3:32], out[..., 3:32])
    high = measured_snr_db(h[..., 32:], out[..., 32:])
    assert high - low > 15


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("corrupt", [lambda h, r: erasure(h, 0.2, r), lambda h, r: awgn(h, 5.0, r, per_channel=True)])
def test_shape_dtype_device_preserved(dtype, corrupt):
    h = _hidden(shape=(2, 5, 32)).to(dtype)
    out = corrupt(h, np.random.default_rng(7))
    assert out.shape == h.shape and out.dtype == h.dtype and out.device == h.device
    assert torch.isfinite(out).all()


def test_awgn_of_zero_tensor_stays_zero():
    h = torch.zeros(1, 3, 8)
    assert torch.equal(awgn(h, 10.0, np.random.default_rng(0)), h)


@pytest.mark.parametrize("corrupt", [lambda h, r: erasure(h, 0.3, r), lambda h, r: awgn(h, 3.0, r)])
def test_determinism_under_seed(corrupt):
    h = _hidden(shape=(2, 8, 64))
    a = corrupt(h, np.random.default_rng(11))
    b = corrupt(h, np.random.default_rng(11))
    c = corrupt(h, np.random.default_rng(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
