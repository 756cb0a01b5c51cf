"""Digital link: bit errors at the theoretical rate, packets, CRC and the failed-packet policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitlab.channel import (
    ChannelConfig,
    PacketLayout,
    db_to_linear,
    encode,
    expected_outcome,
    link_cost,
    quantise_dequantise,
    send_packets,
    theoretical_ber,
    transmit,
)
from splitlab.channel.quantisation import lost_elements


def _hidden(shape) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)) + 3.0  # no exact zeros


def _snr_for_ber(target: float, scheme: str) -> float:
    grid = np.linspace(-5, 25, 30001)
    return float(grid[np.argmin(np.abs(theoretical_ber(db_to_linear(grid), scheme) - target))])


def test_delivered_bit_error_rate_matches_theory():
    h = _hidden((1, 512, 256))
    cfg = ChannelConfig(kind="digital", quant="fp32", modulation="16qam", snr_db=14.0, on_packet_error="deliver")
    payload = encode(h, "fp32")
    outcome = send_packets(payload, cfg.packet_bits, np.full(PacketLayout(512, 256 * 32, cfg.packet_bits).n_packets,
                           theoretical_ber(db_to_linear(14.0), "16qam")), "packet", "deliver", 0, np.random.default_rng(0))
    errors = np.unpackbits(payload ^ outcome.received).sum()
    assert errors == outcome.bit_errors
    n = payload.size * 8
    p = float(theoretical_ber(db_to_linear(14.0), "16qam"))
    assert abs(errors - n * p) < 4 * math.sqrt(n * p)
    out, cost = transmit(h, cfg, np.random.default_rng(1))
    assert abs(cost.bit_errors / cost.payload_bits / p - 1) < 0.05
    assert torch.isfinite(out).all()  # flipped exponents never surface as inf/NaN


def test_rayleigh_averaged_bit_error_rate_matches_closed_form():
    """QPSK per-token Rayleigh: E[Q(sqrt(g gamma))] = (1 - sqrt(a / (1 + a))) / 2 with a = gamma / 2."""
    h = _hidden((1, 20000, 4))
    snr_db = 10.0
    cfg = ChannelConfig(kind="digital", quant="fp32", snr_db=snr_db, fading="rayleigh", fading_block="token",
                        on_packet_error="deliver")
    _, cost = transmit(h, cfg, np.random.default_rng(2))
    a = db_to_linear(snr_db) / 2
    expected = 0.5 * (1 - math.sqrt(a / (1 + a)))
    assert abs(cost.bit_errors / cost.payload_bits / expected - 1) < 0.10
    # Fading matters: the average is an order of magnitude above the unfaded BER.
    assert expected > 10 * theoretical_ber(db_to_linear(snr_db), "qpsk")


@pytest.mark.parametrize("target_per", [0.1, 0.5, 0.9])
def test_packet_error_rate_matches_bit_error_rate(target_per):
    packet_bits = 2048
    h = _hidden((1, 4000, 32))  # fp32: 1024 bits per token, 2000 packets
    p = 1 - (1 - target_per) ** (1 / packet_bits)
    snr_db = _snr_for_ber(p, "bpsk")
    ber = float(theoretical_ber(db_to_linear(snr_db), "bpsk"))
    per = 1 - (1 - ber) ** packet_bits
    cfg = ChannelConfig(kind="digital", quant="fp32", modulation="bpsk", snr_db=snr_db, packet_bits=packet_bits)
    out, cost = transmit(h, cfg, np.random.default_rng(3))
    assert cost.packets == 2000
    assert abs(cost.packets_failed / cost.packets - per) < 3 * math.sqrt(per * (1 - per) / cost.packets)
    assert cost.packets_erased == cost.packets_failed and cost.retransmissions == 0
    # Erased packets are whole runs of 64 elements set to zero; everything else arrives exactly.
    blocks_out, blocks_in = out.reshape(-1, 64), h.reshape(-1, 64)
    zeroed = (blocks_out == 0).all(dim=1)
    assert int(zeroed.sum()) == cost.packets_erased
    assert torch.equal(blocks_out[~zeroed], blocks_in[~zeroed])


def test_retransmit_keeps_values_exact_and_counts_retransmissions():
    packet_bits = 2048
    h = _hidden((1, 2000, 32))
    snr_db = _snr_for_ber(1 - 0.6 ** (1 / packet_bits), "qpsk")  # PER about 0.4
    cfg = ChannelConfig(kind="digital", quant="fp32", snr_db=snr_db, packet_bits=packet_bits,
                        on_packet_error="retransmit", max_retx=30)
    expected = link_cost(2000, 32, cfg)
    rng = np.random.default_rng(4)
    retx = []
    for _ in range(5):
        out, cost = transmit(h, cfg, rng)
        assert torch.equal(out, h)
        assert cost.packets_erased == 0 and cost.packets_failed > 0
        assert cost.tx_time_s == pytest.approx((cost.payload_bits + cost.retransmissions * packet_bits) / cost.rate_bps)
        retx.append(cost.retransmissions)
    # Retries per packet are geometric: mean q / (1 - q) per packet, variance q / (1 - q)^2.
    q = expected.packets_failed / expected.packets
    sd = math.sqrt(expected.packets * q / (1 - q) ** 2 / len(retx))
    assert abs(np.mean(retx) - expected.retransmissions) < 4 * sd
    assert expected.retransmissions == pytest.approx(expected.packets * q / (1 - q), rel=1e-6)


def test_retransmit_gives_up_after_max_retx():
    h = _hidden((1, 200, 32))
    cfg = ChannelConfig(kind="digital", quant="fp32", snr_db=0.0, packet_bits=2048, on_packet_error="retransmit",
                        max_retx=2)  # QPSK at 0 dB: every packet fails every time
    out, cost = transmit(h, cfg, np.random.default_rng(5))
    assert cost.packets_failed == cost.packets_erased == cost.packets
    assert cost.retransmissions == 2 * cost.packets
    assert not out.any()
    no_retry = cfg.replace(max_retx=0)
    _, cost0 = transmit(h, no_retry, np.random.default_rng(5))
    assert cost0.retransmissions == 0 and cost0.packets_erased == cost0.packets


def test_high_snr_delivers_the_quantised_tensor():
    h = _hidden((2, 8, 64))
    for quant in ("fp16", "bf16", "int8"):
        cfg = ChannelConfig(kind="digital", quant=quant, snr_db=40.0, on_packet_error="deliver")
        out, cost = transmit(h, cfg, np.random.default_rng(6))
        assert cost.bit_errors == 0
        assert torch.equal(out, quantise_dequantise(h, quant))


def test_erased_packet_loses_its_bytes_and_int8_scale_loses_the_token():
    """Packet 2 (bits 400..599) fails for sure; it holds token 1's scale (bits 512..543)."""
    payload = encode(_hidden((1, 3, 60)), "int8")  # 3 tokens x (4 + 60) bytes = 512 bits each
    layout = PacketLayout(3, 512, 200)
    ber = np.zeros(layout.n_packets)
    ber[2] = 0.5  # P(no flip in 200 bits) = 2^-200
    outcome = send_packets(payload, 200, ber, "packet", "erase", 0, np.random.default_rng(7))
    expected_lost = np.zeros(payload.size, dtype=bool)
    expected_lost[50:75] = True
    assert np.array_equal(outcome.lost_bytes.reshape(-1), expected_lost)
    assert outcome.packets_failed == outcome.packets_erased == 1
    lost = lost_elements(outcome.lost_bytes, "int8", 60)
    assert lost[1].all()  # scale gone: the whole token
    assert lost[0].sum() == 64 - 50 and lost[0, -(64 - 50):].all()  # token 0: bytes 50..63
    assert not lost[2].any()


@pytest.mark.parametrize("policy", ["erase", "retransmit", "deliver"])
def test_digital_determinism(policy):
    h = _hidden((1, 64, 64))
    cfg = ChannelConfig(kind="digital", quant="fp16", snr_db=6.0, fading="rayleigh", on_packet_error=policy,
                        packet_bits=1024)
    a, ca = transmit(h, cfg, np.random.default_rng(8))
    b, cb = transmit(h, cfg, np.random.default_rng(8))
    c, _ = transmit(h, cfg, np.random.default_rng(9))
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, c)


def test_expected_outcome_erase_and_deliver():
    layout = PacketLayout(n_tokens=10, token_bits=1000, packet_bits=4000)
    ber = np.full(3, 1e-3)
    erase = expected_outcome(layout, ber, "packet", "erase", 3)
    lengths = layout.packet_lengths()
    assert lengths.tolist() == [4000, 4000, 2000]
    assert erase.packets_erased == pytest.approx(np.sum(1 - (1 - 1e-3) ** lengths))
    deliver = expected_outcome(layout, ber, "packet", "deliver", 3)
    assert deliver.bit_errors == pytest.approx(10_000 * 1e-3) and deliver.packets_erased == 0
