"""Device profiles and the per-split latency and UE energy of prefill and of each decoded token.

``DeviceCostModel(LayerCosts.from_model(m), PROFILES["phone"]).per_k("decode", context=256)`` gives
arrays indexed by k = 0..L: UE time and energy for the embedding and layers ``0..k-1``, airtime and
radio energy of the activation (``splitlab.channel.link_cost`` of the configured channel), edge time
for layers ``k..L-1`` plus the final norm and head. Each side's time is the roofline of its phase,
``max(FLOPs / compute rate, bytes moved / memory bandwidth)``, at the profile's peak rates: a lower
bound on real latency. Energy = FLOPs x energy per FLOP + bytes x energy per byte, plus the radio's
power x airtime. Only the UE's energy is counted (the edge's is the operator's).

Profile figures are public peak specs, rounded; energy per FLOP is the module's power over its peak
throughput (an upper bound: all power charged to arithmetic), so treat them as orders of magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field


from splitlab.channel import ChannelConfig, link_cost
from splitlab.config import ConfigModel
from splitlab.llm.cost import LayerCosts

Phase = Literal["prefill", "decode"]


class DeviceProfile(ConfigModel):
    """Compute, memory and radio of one device class."""

    model_config = ConfigDict(frozen=True)

    name: str
    """Short label used in tables."""
    compute_flops: float = Field(gt=0)
    """Peak FLOP/s at the deployed precision (fp16)."""
    memory_bw: float = Field(gt=0)
    """Peak DRAM bandwidth in bytes/s."""
    energy_per_flop_j: float = Field(ge=0)
    """Joules per FLOP."""
    energy_per_byte_j: float = Field(ge=0)
    """Joules per byte moved to or from DRAM."""
    tx_power_w: float = Field(ge=0)
    """Power drawn by the radio while transmitting, in watts (0: not a UE)."""
    bytes_per_weight: float = Field(default=2.0, gt=0)
    """Bytes per stored weight (2: fp16/bf16; 1: int8; 0.5: int4)."""
    bytes_per_kv: float = Field(default=2.0, gt=0)
    """Bytes per cached key/value element."""


PROFILES: dict[str, DeviceProfile] = {
    # A 2023 flagship phone SoC (Snapdragon 8 Gen 2 class).
    "phone": DeviceProfile(
        name="phone",
        compute_flops=2e12,  # mobile GPU, ~2 TFLOP/s fp16 peak (Adreno 740-class figures reported by reviewers)
        memory_bw=68.3e9,  # LPDDR5X-8533 on a 64-bit bus: 8533e6 transfers/s x 8 bytes
        energy_per_flop_j=2.5e-12,  # ~5 W sustained SoC GPU power / 2 TFLOP/s
        energy_per_byte_j=40e-12,  # LPDDR4/5 access ~4-5 pJ/bit (Horowitz, ISSCC 2014: DRAM 1.3-2.6 nJ / 64 bit)
        tx_power_w=1.3,  # LTE radio power while active, 1.29 W base (Huang et al., MobiSys 2012); 23 dBm class-3 output
    ),
    # An embedded AI board (NVIDIA Jetson Orin Nano 8GB).
    "jetson": DeviceProfile(
        name="jetson",
        compute_flops=10e12,  # datasheet 40 INT8 sparse TOPS -> 20 dense INT8 -> ~10 TFLOP/s dense fp16
        memory_bw=68e9,  # datasheet: 128-bit LPDDR5, 68 GB/s
        energy_per_flop_j=1.5e-12,  # 15 W module power mode / 10 TFLOP/s
        energy_per_byte_j=40e-12,  # LPDDR5, as the phone
        tx_power_w=1.3,  # a class-3 (23 dBm) cellular module, the same radio model as the phone
    ),
    # An edge-server inference GPU (NVIDIA L4).
    "edge-gpu": DeviceProfile(
        name="edge-gpu",
        compute_flops=121e12,  # datasheet: 242 fp16 tensor TFLOP/s with sparsity -> 121 dense
        memory_bw=300e9,  # datasheet: 24 GB GDDR6, 300 GB/s
        energy_per_flop_j=0.6e-12,  # 72 W board power / 121 TFLOP/s
        energy_per_byte_j=60e-12,  # GDDR6 ~7.5 pJ/bit (O'Connor et al., MICRO 2017: GDDR5 14, HBM2 3.9 pJ/bit)
        tx_power_w=0.0,  # the edge is not a UE: its downlink energy is not charged to the user
    ),
}
"""The built-in profiles: ``phone`` and ``jetson`` as UEs, ``edge-gpu`` as the edge."""


@dataclass(frozen=True)
class PhaseCost:
    """Cost of one phase at every split point; every array is [L + 1], index k = layers on the UE."""

    phase: str
    ue_flops: np.ndarray
    ue_bytes: np.ndarray
    ue_time_s: np.ndarray
    """Roofline time of the embedding and layers 0..k-1 on the UE."""
    ue_compute_energy_j: np.ndarray
    tx_time_s: np.ndarray
    """Airtime of the activation (retransmissions included, as the channel's link cost says)."""
    tx_energy_j: np.ndarray
    """Radio power x airtime."""
    edge_time_s: np.ndarray
    """Roofline time of layers k..L-1, the final norm and the head on the edge."""

    @property
    def latency_s(self) -> np.ndarray:
        """UE compute + airtime + edge compute (no queueing)."""
        return self.ue_time_s + self.tx_time_s + self.edge_time_s

    @property
    def energy_j(self) -> np.ndarray:
        """UE energy: compute and memory traffic plus the radio."""
        return self.ue_compute_energy_j + self.tx_energy_j


def _roofline(flops: np.ndarray, nbytes: np.ndarray, device: DeviceProfile) -> np.ndarray:
    return np.maximum(flops / device.compute_flops, nbytes / device.memory_bw)


class DeviceCostModel:
    """Latency and UE energy per split point from a model's layer costs, a UE, an edge and a channel.

    ``channel`` is the link the activation crosses (default: digital fp16 QPSK on 20 MHz, the
    project's default link model); ``snr_db`` its SNR (default: the channel's ``snr_db``).
    """

    def __init__(self, layers: LayerCosts, ue: DeviceProfile | str, edge: DeviceProfile | str = "edge-gpu",
                 channel: ChannelConfig | None = None, snr_db: float | None = None):
        self.layers = layers
        self.ue, self.edge = (_profile(p) for p in (ue, edge))
        self.channel = channel or ChannelConfig(kind="digital", quant="fp16", modulation="qpsk")
        self.snr_db = snr_db

    def per_k(self, phase: Phase, tokens: int = 128, context: int = 128) -> PhaseCost:
        """Arrays over k = 0..L for a ``prefill`` of ``tokens`` tokens or one ``decode`` step after ``context`` tokens.

        Generation needs the next-token logits of the last position only, so the edge's head runs
        over one token in both phases.
        """
        lc = self.layers
        if phase == "prefill":
            if tokens < 1:
                raise ValueError(f"prefill needs tokens >= 1, got {tokens}")
            flops, elements, n_sent = lc.prefill_flops(tokens), lc.prefill_elements(tokens), tokens
        elif phase == "decode":
            if context < 0:
                raise ValueError(f"decode needs context >= 0 (tokens already cached), got {context}")
            flops, elements, n_sent = lc.decode_flops(context), lc.decode_elements(context), 1
        else:
            raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
        # Weights and KV are stored at different precisions: split the element counts to price them.
        kv = elements - lc.params  # [L] KV elements moved
        zero = np.zeros(1)
        cum_flops = np.concatenate([zero, np.cumsum(flops)])  # [L + 1] layers < k
        cum_w = np.concatenate([zero, np.cumsum(lc.params)])
        cum_kv = np.concatenate([zero, np.cumsum(kv)])
        lookup = n_sent * lc.hidden * self.ue.bytes_per_weight  # embedding rows read
        ue_bytes = lookup + cum_w * self.ue.bytes_per_weight + cum_kv * self.ue.bytes_per_kv
        head = lc.head_flops(1)
        edge_flops = cum_flops[-1] - cum_flops + head
        edge_bytes = ((cum_w[-1] - cum_w + lc.head_params) * self.edge.bytes_per_weight
                      + (cum_kv[-1] - cum_kv) * self.edge.bytes_per_kv)
        airtime = link_cost(n_sent, lc.hidden, self.channel, self.snr_db).tx_time_s
        tx = np.full(lc.num_layers + 1, airtime)
        return PhaseCost(
            phase=phase, ue_flops=cum_flops, ue_bytes=ue_bytes, ue_time_s=_roofline(cum_flops, ue_bytes, self.ue),
            ue_compute_energy_j=cum_flops * self.ue.energy_per_flop_j + ue_bytes * self.ue.energy_per_byte_j,
            tx_time_s=tx, tx_energy_j=tx * self.ue.tx_power_w,
            edge_time_s=_roofline(edge_flops, edge_bytes, self.edge))


def _profile(p: DeviceProfile | str) -> DeviceProfile:
    if isinstance(p, DeviceProfile):
        return p
    if p not in PROFILES:
        raise ValueError(f"device profile must be one of {sorted(PROFILES)} or a DeviceProfile, got {p!r}")
    return PROFILES[p]
