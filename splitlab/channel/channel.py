"""The channel as the rest of splitlab sees it: a validated config, ``transmit`` and ``link_cost``.

``transmit(h, cfg, rng)`` corrupts a hidden-state tensor the way ``cfg`` says and reports what it
cost on the link; ``link_cost(n_tokens, hidden, cfg)`` gives the nominal cost without a tensor
(for an environment's latency term); ``Channel`` binds a config to both.

Order of random draws, fixed so that a seed reproduces a run: fading gains (one per block), then
the corruption itself (erasure mask, noise, or bit errors and retries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from splitlab.channel.corruption import awgn, erasure
from splitlab.channel.digital import (
    FADING_BLOCKS,
    PACKET_ERROR_POLICIES,
    PacketOutcome,
    expected_outcome,
    send_packets,
)
from splitlab.channel.fading import (
    FADING_KINDS,
    NAKAGAMI_M_RANGE,
    db_to_linear,
    fading_gains,
    instantaneous_snr_db,
)
from splitlab.channel.link import LinkCost, modulation_rate
from splitlab.channel.modulation import MODULATIONS, theoretical_ber
from splitlab.channel.packets import PacketLayout
from splitlab.channel.quantisation import (
    BITS_PER_ELEMENT,
    QUANT_FORMATS,
    SIDE_INFO_BITS_PER_TOKEN,
    decode,
    encode,
    lost_elements,
    token_bits,
)
from splitlab.channel.validation import check_hidden_states, check_int, check_range, check_rng
from splitlab.config import Bool, ConfigModel, Float, Int, PositiveFloat

CHANNEL_KINDS = ("clean", "erasure", "awgn", "digital")
"""Accepted values of ``kind``."""

MAX_RETX_LIMIT = 100
"""Upper bound on ``max_retx``; beyond it a retry budget is a typo, not a protocol."""


class ChannelConfig(ConfigModel):
    """How the hidden state travels from the UE to the edge. Validated on construction.

    Fields that a kind does not use are still validated, so a spec cannot carry a silent typo.
    """

    label: ClassVar[str] = "channel config"

    model_config = ConfigDict(frozen=True)

    kind: Literal[CHANNEL_KINDS] = "digital"
    """``digital`` (the default: quantise, modulate, bit errors, packets; airtime at the modulation
    rate plus retransmissions), or an analog kind whose airtime is its symbol count (two real
    elements per complex symbol): ``clean`` (no corruption), ``erasure`` or ``awgn``."""
    rho: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.0
    """Erasure probability per element, in [0, 1] (``erasure``)."""
    snr_db: Float = 20.0
    """Mean SNR per symbol in dB (Es/N0); ``transmit(snr_db=...)`` overrides it per call."""
    per_channel: Bool = False
    """``awgn``: normalise noise power per hidden channel instead of per token."""
    fading: Literal[FADING_KINDS] = "none"
    """Block fading: ``none``, ``rayleigh`` or ``nakagami``."""
    nakagami_m: Annotated[Float, Field(ge=NAKAGAMI_M_RANGE[0], le=NAKAGAMI_M_RANGE[1])] = 1.0
    """Nakagami shape m >= 0.5 (``nakagami`` only; m = 1 is Rayleigh)."""
    fading_block: Literal[FADING_BLOCKS] = "packet"
    """One fading gain per ``packet`` or per ``token``."""
    quant: Literal[QUANT_FORMATS] = "fp16"
    """Wire format: ``fp32``, ``fp16``, ``bf16`` or ``int8`` (per-token absmax, fp32 scale). Sets the
    payload size of every kind and the bits the ``digital`` link corrupts."""
    modulation: Literal[MODULATIONS] = "qpsk"
    """``digital``: ``bpsk``, ``qpsk`` or ``16qam`` (Gray coded); sets BER and rate."""
    packet_bits: Annotated[Int, Field(ge=8, multiple_of=8)] = 12000
    """Payload bits per packet (1500 bytes), a multiple of 8; also the fading block for
    ``fading_block='packet'``."""
    on_packet_error: Literal[PACKET_ERROR_POLICIES] = "erase"
    """``digital``: a packet failing its CRC is ``erase``d, ``retransmit``ted, or ``deliver``ed
    with its bit errors (no CRC)."""
    max_retx: Annotated[Int, Field(ge=0, le=MAX_RETX_LIMIT)] = 3
    """Most retransmissions per packet before it is erased, in [0, 100]."""
    bandwidth_hz: PositiveFloat = 20e6
    """Channel bandwidth in Hz (20 MHz, one LTE/NR carrier)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | ChannelConfig, name: str = "") -> ChannelConfig:
        """Build from a mapping (e.g. a YAML ``channel:`` section); unknown keys are an error."""
        if d is None:  # a config must be given here; None is not "defaults"
            raise ValueError(f"channel config must be a mapping of {list(cls.model_fields)}, got None")
        return super().from_dict(d, name)


def _mean_snr_db(cfg: ChannelConfig, snr_db: float | None) -> float:
    if snr_db is None:
        return float(cfg.snr_db)
    return float(check_range("snr_db", snr_db))


def _layout(cfg: ChannelConfig, n_tokens: int, hidden: int) -> PacketLayout:
    return PacketLayout(n_tokens, token_bits(cfg.quant, hidden), cfg.packet_bits)


def _n_blocks(cfg: ChannelConfig, layout: PacketLayout) -> int:
    return layout.n_packets if cfg.fading_block == "packet" else layout.n_tokens


ANALOG_ELEMENTS_PER_SYMBOL = 2
"""Real elements per complex channel symbol for the analog kinds (one on I, one on Q)."""


def _analog_cost(cfg: ChannelConfig, layout: PacketLayout, hidden: int) -> LinkCost:
    """Cost of analog transmission: airtime is the symbol count at one symbol per second per hertz.

    Each real element rides one quadrature of a complex symbol; the symbol rate is the bandwidth, as
    for the digital link (Nyquist signalling, no roll-off). The SNR and fading set the noise the
    elements receive, never the airtime: pairing analog noise with a Shannon-capacity rate would
    charge a digital code's time for an uncoded analog signal. ``payload_bits`` stays the size in
    the configured ``quant`` format, so byte counts compare across kinds.
    """
    symbols = math.ceil(layout.n_tokens * hidden / ANALOG_ELEMENTS_PER_SYMBOL)
    time = symbols / cfg.bandwidth_hz
    return LinkCost(
        payload_bits=layout.n_bits,
        rate_bps=layout.n_bits / time if time > 0 else 0.0,
        tx_time_s=time,
        packets=layout.n_packets,
    )


def _digital_cost(cfg: ChannelConfig, layout: PacketLayout, outcome: PacketOutcome) -> LinkCost:
    rate = modulation_rate(cfg.bandwidth_hz, cfg.modulation)
    return LinkCost(
        payload_bits=layout.n_bits,
        rate_bps=rate,
        tx_time_s=(layout.n_bits + outcome.retransmitted_bits) / rate,
        retransmissions=outcome.retransmissions,
        packets=outcome.packets,
        packets_failed=outcome.packets_failed,
        packets_erased=outcome.packets_erased,
        bit_errors=outcome.bit_errors,
    )


def _analog_snr_db(
    h: torch.Tensor, cfg: ChannelConfig, layout: PacketLayout, mean_snr_db: float, gains: np.ndarray
) -> float | np.ndarray:
    """SNR for :func:`awgn`: a scalar, ``[..., tokens]`` or ``[..., tokens, hidden]`` in dB."""
    if cfg.fading == "none":
        return mean_snr_db
    block_snr_db = instantaneous_snr_db(mean_snr_db, gains)
    if cfg.fading_block == "token":
        return block_snr_db.reshape(tuple(h.shape[:-1]))
    element_packet = layout.element_packets(
        h.shape[-1], SIDE_INFO_BITS_PER_TOKEN[cfg.quant], BITS_PER_ELEMENT[cfg.quant]
    )  # [n_tokens, H]
    return block_snr_db[element_packet].reshape(tuple(h.shape))


def transmit(
    h: torch.Tensor,
    cfg: ChannelConfig,
    rng: np.random.Generator,
    snr_db: float | None = None,
) -> tuple[torch.Tensor, LinkCost]:
    """Send hidden states over the channel.

    Args:
        h: ``[..., tokens, hidden]`` hidden states (typically ``[batch, T, 576]``).
        cfg: the channel.
        rng: the only source of randomness.
        snr_db: mean SNR for this call (e.g. the current step of an episode's SNR trace);
            ``None`` uses ``cfg.snr_db``.

    Returns:
        ``(h_received, cost)``: ``h_received`` has the shape, dtype and device of ``h``; ``cost``
        the realised link cost (fading and retransmissions included).
    """
    check_hidden_states("h", h)
    check_rng("rng", rng)
    mean_snr_db = _mean_snr_db(cfg, snr_db)
    hidden = h.shape[-1]
    layout = _layout(cfg, h.numel() // hidden, hidden)
    gains = fading_gains(cfg.fading, _n_blocks(cfg, layout), rng, cfg.nakagami_m)
    block_snr = db_to_linear(mean_snr_db) * gains  # [n_blocks] linear Es/N0

    if cfg.kind == "digital":
        outcome = send_packets(
            encode(h, cfg.quant),
            cfg.packet_bits,
            theoretical_ber(block_snr, cfg.modulation),
            cfg.fading_block,
            cfg.on_packet_error,
            cfg.max_retx,
            rng,
        )
        received = decode(outcome.received, cfg.quant, h)
        lost = torch.from_numpy(lost_elements(outcome.lost_bytes, cfg.quant, hidden))
        received = received.masked_fill(lost.reshape(h.shape).to(h.device), 0.0)
        return received, _digital_cost(cfg, layout, outcome)

    if cfg.kind == "clean":
        received = h.clone()
    elif cfg.kind == "erasure":
        received = erasure(h, cfg.rho, rng)
    else:
        received = awgn(h, _analog_snr_db(h, cfg, layout, mean_snr_db, gains), rng, cfg.per_channel)
    return received, _analog_cost(cfg, layout, hidden)


def link_cost(n_tokens: int, hidden: int, cfg: ChannelConfig, snr_db: float | None = None) -> LinkCost:
    """Nominal cost of sending ``n_tokens`` tokens of ``hidden`` elements, without a tensor.

    Fading is ignored (every block at ``snr_db``); for ``digital`` with ``retransmit`` or ``erase``
    the packet counts are expectations at that SNR. Deterministic, so an environment can use it
    as its latency model.
    """
    check_int("n_tokens", n_tokens, 0)
    check_int("hidden", hidden, 1)
    mean_snr_db = _mean_snr_db(cfg, snr_db)
    layout = _layout(cfg, n_tokens, hidden)
    block_snr = np.full(_n_blocks(cfg, layout), db_to_linear(mean_snr_db))
    if cfg.kind != "digital":
        return _analog_cost(cfg, layout, hidden)
    outcome = expected_outcome(
        layout,
        theoretical_ber(block_snr, cfg.modulation),
        cfg.fading_block,
        cfg.on_packet_error,
        cfg.max_retx,
    )
    return _digital_cost(cfg, layout, outcome)


class Channel:
    """A :class:`ChannelConfig` bound to :func:`transmit` and :func:`link_cost`."""

    def __init__(self, config: ChannelConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = ChannelConfig()
        elif not isinstance(config, ChannelConfig):
            config = ChannelConfig.from_dict(config)
        self.config = config

    def __repr__(self) -> str:
        return f"Channel({self.config!r})"

    def transmit(
        self, h: torch.Tensor, rng: np.random.Generator, snr_db: float | None = None
    ) -> tuple[torch.Tensor, LinkCost]:
        """See :func:`transmit`."""
        return transmit(h, self.config, rng, snr_db)

    def link_cost(self, n_tokens: int, hidden: int, snr_db: float | None = None) -> LinkCost:
        """See :func:`link_cost`."""
        return link_cost(n_tokens, hidden, self.config, snr_db)

    def as_corruption(
        self, rng: np.random.Generator, snr_db: float | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function ``h -> h'`` for evaluation code that only wants the corrupted activation.

        Every call draws from ``rng``, so repeated calls give fresh, reproducible corruptions.
        """
        check_rng("rng", rng)

        def corrupt(h: torch.Tensor) -> torch.Tensor:
            return self.transmit(h, rng, snr_db)[0]

        return corrupt
