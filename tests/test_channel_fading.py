"""Block fading gains and the instantaneous SNR they give."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitlab.channel import (
    ChannelConfig,
    db_to_linear,
    fading_gains,
    instantaneous_snr_db,
    linear_to_db,
    measured_snr_db,
    transmit,
)

N = 400_000


@pytest.mark.parametrize("m", [0.5, 1.0, 2.0, 5.0])
def test_nakagami_power_moments(m):
    g = fading_gains("nakagami", N, np.random.default_rng(0), m=m)
    # Var[g] = 1/m, Var[g^2-estimate] from the Gamma fourth moment: SE(mean) = sqrt(1/(m N)).
    assert abs(g.mean() - 1.0) < 4 * math.sqrt(1 / (m * N))
    assert abs(g.var() / (1.0 / m) - 1.0) < 0.02
    assert (g > 0).all()


def test_rayleigh_is_exponential_power():
    g = fading_gains("rayleigh", N, np.random.default_rng(1), m=7.0)  # m is ignored for rayleigh
    assert abs(g.mean() - 1.0) < 0.01 and abs(g.var() - 1.0) < 0.02
    assert abs((g > 1.0).mean() - math.exp(-1.0)) < 4 * math.sqrt(math.exp(-1) * (1 - math.exp(-1)) / N)


def test_no_fading_draws_nothing():
    rng = np.random.default_rng(2)
    assert np.array_equal(fading_gains("none", 5, rng), np.ones(5))
    assert rng.random() == np.random.default_rng(2).random()


def test_instantaneous_snr_db_and_conversions():
    gains = np.array([1.0, 10.0, 0.1])
    assert np.allclose(instantaneous_snr_db(5.0, gains), [5.0, 15.0, -5.0])
    assert np.allclose(linear_to_db(db_to_linear([-7.0, 0.0, 13.0])), [-7.0, 0.0, 13.0])


def test_awgn_with_token_fading_follows_each_tokens_gain():
    """The first draws of a transmit are the fading gains, so a same-seed rng reproduces them."""
    h = torch.randn(1, 64, 2048, generator=torch.Generator().manual_seed(0))
    cfg = ChannelConfig(kind="awgn", snr_db=15.0, fading="rayleigh", fading_block="token")
    out, _ = transmit(h, cfg, np.random.default_rng(3))
    gains = fading_gains("rayleigh", 64, np.random.default_rng(3))
    expected = instantaneous_snr_db(15.0, gains)
    measured = np.array([measured_snr_db(h[0, t], out[0, t]) for t in range(64)])
    # 2048 elements per token: the SNR estimate has a standard deviation of about 0.14 dB.
    assert np.abs(measured - expected).max() < 0.6
    assert expected.std() > 3.0  # the test would not notice a missing fading otherwise


def test_awgn_with_packet_fading_is_constant_inside_a_packet():
    h = torch.randn(1, 8, 1024, generator=torch.Generator().manual_seed(1))
    # fp32 with 4096-bit packets: 128 elements per packet, 8 packets per token.
    cfg = ChannelConfig(kind="awgn", snr_db=10.0, fading="nakagami", nakagami_m=1.5, quant="fp32", packet_bits=4096)
    out, cost = transmit(h, cfg, np.random.default_rng(4))
    assert cost.packets == 64
    gains = fading_gains("nakagami", 64, np.random.default_rng(4), m=1.5)
    blocks_h = h.reshape(64, 128)
    blocks_out = out.reshape(64, 128)
    # Noise in a block scales with the token's power divided by that block's gain.
    noise_var = (blocks_out - blocks_h).double().square().mean(dim=1).numpy()
    token_power = h.double().square().mean(dim=-1).reshape(8).repeat_interleave(8).numpy()
    implied_gain = token_power / db_to_linear(10.0) / noise_var
    assert np.allclose(np.log(implied_gain), np.log(gains), atol=0.45)  # 128 samples: ~12 % spread
    assert np.corrcoef(np.log(implied_gain), np.log(gains))[0, 1] > 0.95
