"""Per-split latency and UE energy: hand-computed cases for the model's own counts and the roofline."""
from __future__ import annotations

import numpy as np
import pytest

from splitlab.channel import ChannelConfig
from splitlab.envs.device_profiles import PROFILES, DeviceCostModel, DeviceProfile
from splitlab.llm import SplitModel
from splitlab.llm.cost import LayerCosts

# Two layers: 100 and 200 weights, 4 KV elements per token each, the second a 2-token sliding window.
TOY = LayerCosts(params=np.array([100.0, 200.0]), kv_per_token=np.array([4.0, 4.0]), window=np.array([np.inf, 2.0]),
                 attn_dim=8, hidden=4, embed_params=40, head_params=50)
UE = DeviceProfile(name="ue", compute_flops=1000, memory_bw=100, energy_per_flop_j=1e-3, energy_per_byte_j=1e-2,
                   tx_power_w=2.0, bytes_per_weight=2, bytes_per_kv=1)
EDGE = DeviceProfile(name="edge", compute_flops=1e4, memory_bw=1e3, energy_per_flop_j=0, energy_per_byte_j=0,
                     tx_power_w=0, bytes_per_weight=2, bytes_per_kv=2)
# fp16: 4 elements x 16 bits = 64 bits per token; QPSK on 1 kHz = 2,000 bit/s; 60 dB: no packet errors.
LINK = ChannelConfig(kind="digital", quant="fp16", modulation="qpsk", bandwidth_hz=1000.0, snr_db=60.0)


def test_layer_flops_and_traffic_by_hand():
    # prefill of 3 tokens: layer 0 attends 1+2+3 = 6 tokens in all, the windowed layer 1+2+2 = 5.
    np.testing.assert_allclose(TOY.prefill_flops(3), [2 * 100 * 3 + 4 * 8 * 6, 2 * 200 * 3 + 4 * 8 * 5])
    np.testing.assert_allclose(TOY.prefill_elements(3), [100 + 4 * 3, 200 + 4 * 3])
    # one token after 5 cached: layer 0 attends 6, layer 1 its window of 2.
    np.testing.assert_allclose(TOY.decode_flops(5), [200 + 32 * 6, 400 + 32 * 2])
    np.testing.assert_allclose(TOY.decode_elements(5), [100 + 4 * 6, 200 + 4 * 2])
    assert TOY.head_flops(1) == 100


def test_decode_latency_and_energy_by_hand():
    cost = DeviceCostModel(TOY, UE, EDGE, LINK).per_k("decode", context=5)
    # k = 1: UE runs layer 0: 392 FLOPs; bytes = lookup 4 x 2 + weights 100 x 2 + KV 24 x 1 = 232.
    np.testing.assert_allclose(cost.ue_flops, [0, 392, 856])
    np.testing.assert_allclose(cost.ue_bytes, [8, 232, 232 + 400 + 8])
    assert cost.ue_time_s[1] == pytest.approx(max(392 / 1000, 232 / 100))  # memory bound: 2.32 s
    assert cost.ue_compute_energy_j[1] == pytest.approx(392e-3 + 232e-2)
    np.testing.assert_allclose(cost.tx_time_s, 64 / 2000)
    np.testing.assert_allclose(cost.tx_energy_j, 2.0 * 64 / 2000)
    # edge at k = 1: layer 1 (464 FLOPs) + head (100); bytes (200 + 50) x 2 + 8 KV x 2 = 516.
    assert cost.edge_time_s[1] == pytest.approx(max(564 / 1e4, 516 / 1e3))
    assert cost.latency_s[1] == pytest.approx(2.32 + 0.032 + 0.516)
    assert cost.energy_j[1] == pytest.approx(0.392 + 2.32 + 0.064)


def test_prefill_sends_every_token_and_costs_grow_with_k():
    cost = DeviceCostModel(TOY, UE, EDGE, LINK).per_k("prefill", tokens=3)
    np.testing.assert_allclose(cost.tx_time_s, 3 * 64 / 2000)
    np.testing.assert_allclose(cost.ue_flops, [0, 792, 792 + 1360])
    assert np.all(np.diff(cost.ue_compute_energy_j) > 0) and np.all(np.diff(cost.edge_time_s) < 0)


def test_counts_come_from_the_loaded_model(tiny_llama: SplitModel):
    lc = LayerCosts.from_model(tiny_llama)
    cfg = tiny_llama.model.config
    per_layer = sum(p.numel() for p in tiny_llama.family.layers[0].parameters())
    assert lc.num_layers == 4 and np.all(lc.params == per_layer)
    assert lc.kv_per_token[0] == 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert lc.embed_params == cfg.vocab_size * cfg.hidden_size and np.all(np.isinf(lc.window))
    assert lc.head_params == cfg.vocab_size * cfg.hidden_size + cfg.hidden_size  # tied head + final norm
    phone = DeviceCostModel(lc, "phone").per_k("decode", context=100)
    assert phone.ue_time_s.shape == (5,) and np.all(np.diff(phone.energy_j) > 0)


def test_profiles_and_bad_arguments():
    assert set(PROFILES) == {"phone", "jetson", "edge-gpu"}
    with pytest.raises(ValueError, match="device profile must be one of"):
        DeviceCostModel(TOY, "laptop")
    with pytest.raises(ValueError, match="phase must be"):
        DeviceCostModel(TOY, UE, EDGE, LINK).per_k("train")
    with pytest.raises(ValueError, match="greater than 0"):
        DeviceProfile(name="x", compute_flops=0, memory_bw=1, energy_per_flop_j=0, energy_per_byte_j=0, tx_power_w=0)
