"""Channel models for split inference: what happens to the hidden state between UE and edge.

Start with :class:`ChannelConfig` and :func:`transmit` (or :class:`Channel`); the other names are
the parts they are built from, public so that analyses can use them on their own.

Every function takes hidden states ``[..., tokens, hidden]`` as a torch float tensor and draws all
randomness from an explicit ``numpy.random.Generator``. SNRs are per symbol (Es/N0).
"""

from splitlab.channel.channel import (
    CHANNEL_KINDS,
    Channel,
    ChannelConfig,
    link_cost,
    transmit,
)
from splitlab.channel.corruption import awgn, erasure, measured_snr_db, signal_power
from splitlab.channel.digital import (
    FADING_BLOCKS,
    PACKET_ERROR_POLICIES,
    PacketOutcome,
    expected_outcome,
    flip_bits,
    send_packets,
)
from splitlab.channel.dynamics import GaussMarkovSNR, PathLossMobility
from splitlab.channel.fading import (
    FADING_KINDS,
    db_to_linear,
    fading_gains,
    instantaneous_snr_db,
    linear_to_db,
)
from splitlab.channel.link import LinkCost, modulation_rate, shannon_rate, transmission_time
from splitlab.channel.modulation import (
    BITS_PER_SYMBOL,
    MODULATIONS,
    demodulate,
    modulate,
    q_function,
    theoretical_ber,
)
from splitlab.channel.packets import PacketLayout
from splitlab.channel.quantisation import (
    BITS_PER_ELEMENT,
    QUANT_FORMATS,
    decode,
    encode,
    payload_bits,
    quantise_dequantise,
    token_bits,
)
from splitlab.channel.validation import check_choice, check_finite, check_int, check_range

__all__ = [
    "BITS_PER_ELEMENT",
    "BITS_PER_SYMBOL",
    "CHANNEL_KINDS",
    "FADING_BLOCKS",
    "FADING_KINDS",
    "MODULATIONS",
    "PACKET_ERROR_POLICIES",
    "QUANT_FORMATS",
    "Channel",
    "ChannelConfig",
    "GaussMarkovSNR",
    "LinkCost",
    "PacketLayout",
    "PacketOutcome",
    "PathLossMobility",
    "awgn",
    "check_choice",
    "check_finite",
    "check_int",
    "check_range",
    "db_to_linear",
    "decode",
    "demodulate",
    "encode",
    "erasure",
    "expected_outcome",
    "fading_gains",
    "flip_bits",
    "instantaneous_snr_db",
    "linear_to_db",
    "link_cost",
    "measured_snr_db",
    "modulate",
    "modulation_rate",
    "payload_bits",
    "q_function",
    "quantise_dequantise",
    "send_packets",
    "shannon_rate",
    "signal_power",
    "theoretical_ber",
    "token_bits",
    "transmission_time",
    "transmit",
]
