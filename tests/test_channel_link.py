"""Link cost: payload size, rates and transmission time."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitlab.channel import (
    ChannelConfig,
    LinkCost,
    link_cost,
    modulation_rate,
    shannon_rate,
    transmission_time,
    transmit,
)


def test_shannon_and_modulation_rates():
    assert float(shannon_rate(20e6, 1.0)) == pytest.approx(20e6)
    assert float(shannon_rate(1e6, 15.0)) == pytest.approx(4e6)
    assert modulation_rate(10e6, "bpsk") == 10e6
    assert modulation_rate(10e6, "qpsk") == 20e6
    assert modulation_rate(10e6, "16qam") == 40e6


def test_transmission_time_sums_blocks():
    assert transmission_time(np.array([100.0, 300.0]), np.array([100.0, 100.0])) == pytest.approx(4.0)
    assert transmission_time(np.array([100.0]), np.array([0.0])) == math.inf


@pytest.mark.parametrize(("quant", "bits"), [("fp32", 32), ("fp16", 16), ("bf16", 16), ("int8", 8)])
def test_analog_airtime_is_its_symbol_count(quant, bits):
    """Two real elements per complex symbol at one symbol per second per hertz, whatever the format and SNR."""
    cfg = ChannelConfig(kind="awgn", quant=quant, snr_db=10.0, bandwidth_hz=10e6)
    cost = link_cost(128, 576, cfg)
    side = 32 * 128 if quant == "int8" else 0
    assert cost.payload_bits == 128 * 576 * bits + side  # the size in the wire format, for byte counts
    assert cost.tx_time_s == pytest.approx(128 * 576 / 2 / 10e6)
    assert cost.rate_bps == pytest.approx(cost.payload_bits / cost.tx_time_s)
    assert cost.packets == math.ceil(cost.payload_bits / cfg.packet_bits)
    assert link_cost(3, 1, cfg).tx_time_s == pytest.approx(2 / 10e6)  # an odd element takes a whole symbol


def test_analog_airtime_does_not_depend_on_snr_and_matches_transmit():
    cfg = ChannelConfig(kind="awgn")
    times = {link_cost(64, 576, cfg, snr_db=s).tx_time_s for s in (-5.0, 0.0, 10.0, 30.0)}
    assert times == {64 * 576 / 2 / cfg.bandwidth_hz}
    h = torch.randn(1, 64, 576)
    _, realised = transmit(h, cfg, np.random.default_rng(0), snr_db=0.0)
    assert realised == link_cost(64, 576, cfg, snr_db=0.0)


def test_fading_changes_the_analog_noise_not_the_airtime():
    h = torch.randn(1, 64, 576)
    cfg = ChannelConfig(kind="awgn", snr_db=10.0, fading="rayleigh")
    rng = np.random.default_rng(1)
    sent = [transmit(h, cfg, rng) for _ in range(5)]
    assert {cost.tx_time_s for _, cost in sent} == {link_cost(64, 576, cfg).tx_time_s}
    errors = [float((out - h).pow(2).mean()) for out, _ in sent]
    assert len(set(errors)) == 5


def test_digital_cost_uses_the_modulation_rate_and_charges_retransmissions():
    cfg = ChannelConfig(kind="digital", modulation="16qam", bandwidth_hz=5e6, snr_db=30.0, on_packet_error="retransmit",
                        packet_bits=576 * 16)  # one fp16 token per packet, so all packets are full
    clean = link_cost(32, 576, cfg)
    assert clean.rate_bps == 20e6
    assert clean.tx_time_s == pytest.approx(clean.payload_bits / 20e6)
    assert clean.retransmissions == pytest.approx(0.0, abs=1e-9)
    noisy = link_cost(32, 576, cfg, snr_db=12.0)
    assert noisy.retransmissions > 1
    assert noisy.tx_time_s > clean.tx_time_s
    assert noisy.tx_time_s == pytest.approx(
        (noisy.payload_bits + noisy.retransmissions * cfg.packet_bits) / 20e6, rel=1e-9
    )


def test_link_cost_metrics_are_namespaced():
    metrics = LinkCost(payload_bits=800, rate_bps=100.0, tx_time_s=8.0).as_metrics()
    assert metrics["link/payload_bits"] == 800 and metrics["link/payload_bytes"] == 100
    assert all(key.startswith("link/") for key in metrics)
