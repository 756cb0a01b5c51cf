"""ChannelConfig validation and the Channel front door."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splitlab.channel import CHANNEL_KINDS, Channel, ChannelConfig, transmit


def test_defaults_are_valid_and_round_trip_through_a_dict():
    cfg = ChannelConfig()
    assert ChannelConfig.from_dict(cfg.to_dict()) == cfg
    assert ChannelConfig.from_dict({"kind": "awgn", "snr_db": 5}).snr_db == 5


def test_from_dict_names_unknown_keys_and_accepted_ones():
    with pytest.raises(ValueError) as err:
        ChannelConfig.from_dict({"kind": "awgn", "snr": 5.0, "fadding": "none"})
    message = str(err.value)
    assert "['fadding', 'snr']" in message and "snr_db" in message and "on_packet_error" in message


BAD_FIELDS = [
    ("kind", "wifi"),
    ("rho", 1.2),
    ("rho", -0.5),
    ("snr_db", float("nan")),
    ("snr_db", "20"),
    ("per_channel", 1),
    ("fading", "rician"),
    ("nakagami_m", 0.2),
    ("fading_block", "symbol"),
    ("quant", "fp8"),
    ("modulation", "64qam"),
    ("packet_bits", 1001),
    ("packet_bits", 0),
    ("packet_bits", 12000.0),
    ("on_packet_error", "ignore"),
    ("max_retx", -1),
    ("max_retx", 1000),
    ("bandwidth_hz", 0.0),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_bad_field_raises_naming_it(field, value):
    with pytest.raises(ValueError) as err:
        ChannelConfig.from_dict({field: value})
    assert str(err.value).startswith(field)


@pytest.mark.parametrize("kind", CHANNEL_KINDS)
def test_every_kind_keeps_shape_dtype_and_is_deterministic(kind):
    h = torch.randn(2, 16, 64, dtype=torch.float16)
    channel = Channel({"kind": kind, "rho": 0.2, "snr_db": 5.0, "fading": "rayleigh", "packet_bits": 512})
    a, cost_a = channel.transmit(h, np.random.default_rng(0))
    b, cost_b = channel.transmit(h, np.random.default_rng(0))
    c, _ = channel.transmit(h, np.random.default_rng(1))
    assert a.shape == h.shape and a.dtype == h.dtype and a.device == h.device
    assert torch.isfinite(a).all()
    assert torch.equal(a, b) and cost_a == cost_b
    if kind == "clean":
        assert torch.equal(a, h) and a is not h
    else:
        assert not torch.equal(a, c)


def test_snr_override_and_corruption_function():
    h = torch.randn(1, 32, 64)
    channel = Channel(ChannelConfig(kind="awgn", snr_db=30.0))
    quiet, _ = channel.transmit(h, np.random.default_rng(0))
    loud, _ = channel.transmit(h, np.random.default_rng(0), snr_db=0.0)
    assert (loud - h).square().mean() > 100 * (quiet - h).square().mean()
    corrupt = channel.as_corruption(np.random.default_rng(2))
    first, second = corrupt(h), corrupt(h)
    assert first.shape == h.shape and not torch.equal(first, second)  # fresh draws per call
    again = channel.as_corruption(np.random.default_rng(2))
    assert torch.equal(again(h), first)


def test_transmit_function_and_channel_agree():
    h = torch.randn(1, 8, 32)
    cfg = ChannelConfig(kind="digital", snr_db=7.0)
    a, ca = transmit(h, cfg, np.random.default_rng(3))
    b, cb = Channel(cfg).transmit(h, np.random.default_rng(3))
    assert torch.equal(a, b) and ca == cb
    assert Channel(cfg).link_cost(8, 32) == Channel(cfg).link_cost(8, 32, snr_db=7.0)


def test_replace_revalidates():
    with pytest.raises(ValueError, match="rho"):
        ChannelConfig().replace(rho=2.0)
