"""Link rate, transmission time and the cost record of one transmission.

One airtime model per kind, so that a result's noise and its cost come from the same link:

- ``digital``: ``rate = bandwidth * bits_per_symbol`` (symbol rate = bandwidth, i.e. Nyquist
  signalling with no roll-off and no channel coding), plus retransmitted packets.
- analog (``clean``, ``erasure``, ``awgn``): the symbol count, two real elements per complex symbol
  at the same symbol rate (``channel._analog_cost``); the SNR changes the noise, not the airtime.

``shannon_rate`` (the capacity ``bandwidth * log2(1 + gamma)``) stays available for bounds, but no
channel kind charges its airtime: it would pair a capacity-achieving code's time with uncoded noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from splitlab.channel.modulation import BITS_PER_SYMBOL, MODULATIONS
from splitlab.channel.validation import check_choice, check_range


@dataclass(frozen=True)
class LinkCost:
    """Cost of sending one hidden-state tensor (or its expectation, from ``link_cost``)."""

    payload_bits: int
    """Bits of one copy of the payload: tokens x hidden x bits per element + side information."""
    rate_bps: float
    """Rate of first transmissions: ``payload_bits / time`` without retransmissions."""
    tx_time_s: float
    """Time on air, retransmissions included."""
    retransmissions: float = 0.0
    """Extra packet transmissions (an expectation in ``link_cost``)."""
    packets: int = 0
    """Packets the payload is cut into."""
    packets_failed: float = 0.0
    """Packets that failed the CRC on their first transmission."""
    packets_erased: float = 0.0
    """Packets the receiver gave up on (their elements are zero)."""
    bit_errors: float = 0.0
    """Flipped bits delivered to the decoder (``on_packet_error="deliver"`` only)."""

    @property
    def payload_bytes(self) -> float:
        """``payload_bits / 8``."""
        return self.payload_bits / 8

    def as_metrics(self, prefix: str = "link/") -> dict[str, float]:
        """Flat metric dict with namespaced names, e.g. ``link/tx_time_s``, for MLflow."""
        metrics = {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}
        metrics[f"{prefix}payload_bytes"] = self.payload_bytes
        return metrics


def shannon_rate(bandwidth_hz: float, snr_linear: np.ndarray | float) -> np.ndarray:
    """Capacity ``bandwidth * log2(1 + snr)`` in bit/s (float64, shaped like ``snr_linear``)."""
    check_range("bandwidth_hz", bandwidth_hz, 0.0, low_open=True)
    check_range("snr_linear", snr_linear, 0.0)
    return bandwidth_hz * np.log2(1.0 + np.asarray(snr_linear, dtype=np.float64))


def modulation_rate(bandwidth_hz: float, modulation: str) -> float:
    """Uncoded rate ``bandwidth * bits_per_symbol`` in bit/s (one symbol per second per hertz)."""
    check_range("bandwidth_hz", bandwidth_hz, 0.0, low_open=True)
    check_choice("modulation", modulation, MODULATIONS)
    return float(bandwidth_hz * BITS_PER_SYMBOL[modulation])


def transmission_time(bits: np.ndarray | float, rate_bps: np.ndarray | float) -> float:
    """``sum(bits / rate)`` in seconds over blocks that each go at their own rate.

    A rate of 0 (SNR of exactly 0 on a Shannon link) gives ``inf``: nothing gets through.
    """
    bits = np.asarray(bits, dtype=np.float64)
    rate = np.asarray(rate_bps, dtype=np.float64)
    with np.errstate(divide="ignore"):
        per_block = np.where(bits > 0, bits / rate, 0.0)
    return float(np.sum(per_block))
