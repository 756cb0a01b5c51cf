"""Named channel profiles a request can pick with ``channel_profile``, and the link's downlink cost.

A profile is a :class:`~splitlab.channel.ChannelConfig`. ``snr_db`` in a request overrides the
profile's mean SNR; a request with ``snr_db`` and no profile gets :data:`SNR_ONLY_PROFILE` (an analog
AWGN link without fading) at that SNR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from splitlab.channel import ChannelConfig, db_to_linear, modulation_rate, shannon_rate

CHANNEL_PROFILES: dict[str, ChannelConfig] = {
    # Costs are still computed at snr_db; the hidden state arrives untouched.
    "clean": ChannelConfig(kind="clean", snr_db=30.0),
    "good": ChannelConfig(kind="awgn", snr_db=25.0),
    "fair": ChannelConfig(kind="awgn", snr_db=12.0),
    "poor": ChannelConfig(kind="awgn", snr_db=5.0, fading="rayleigh", fading_block="packet"),
    "digital-qpsk": ChannelConfig(kind="digital", snr_db=10.0, modulation="qpsk", quant="fp16",
                                  fading="rayleigh", on_packet_error="retransmit"),
    "digital-16qam": ChannelConfig(kind="digital", snr_db=18.0, modulation="16qam", quant="int8",
                                   on_packet_error="retransmit"),
}
"""Profile name -> channel. ``poor`` and ``digital-qpsk`` draw a new Rayleigh gain per packet."""

SNR_ONLY_PROFILE = "good"
"""Profile whose channel a request with ``snr_db`` but no ``channel_profile`` uses."""

SNR_DB_RANGE = (-20.0, 60.0)
"""Mean SNRs a request may ask for, in dB."""

TOKEN_ID_BITS = 32
"""The edge sends each token id down as one 32-bit integer."""


@dataclass(frozen=True)
class LinkChoice:
    """The channel one request runs over."""

    profile: str
    config: ChannelConfig
    snr_db: float

    def downlink_time_s(self, bits: int = TOKEN_ID_BITS) -> float:
        """Air time of ``bits`` edge -> UE at the mean SNR (same bandwidth; no fading, no errors)."""
        if self.config.kind == "digital":
            rate = modulation_rate(self.config.bandwidth_hz, self.config.modulation)
        else:
            rate = float(shannon_rate(self.config.bandwidth_hz, db_to_linear(self.snr_db)))
        return bits / rate if rate > 0 else math.inf


def resolve_link(profile: str | None, snr_db: float | None, default_profile: str) -> LinkChoice:
    """The channel for a request's ``channel_profile`` / ``snr_db`` (both already validated)."""
    name = profile or (SNR_ONLY_PROFILE if snr_db is not None else default_profile)
    if name not in CHANNEL_PROFILES:
        raise ValueError(f"channel_profile must be one of {sorted(CHANNEL_PROFILES)}, got {name!r}")
    config = CHANNEL_PROFILES[name]
    return LinkChoice(name, config, float(config.snr_db if snr_db is None else snr_db))


def profile_summary() -> dict[str, dict]:
    """Profiles as plain dicts (for ``GET /v1/models``)."""
    return {name: {"kind": c.kind, "snr_db": c.snr_db, "fading": c.fading, "modulation": c.modulation,
                   "quant": c.quant} for name, c in CHANNEL_PROFILES.items()}


def request_rng(seed: int) -> np.random.Generator:
    """The channel's random source for one request (independent of the sampling stream)."""
    return np.random.default_rng([seed, 0x5EED])
