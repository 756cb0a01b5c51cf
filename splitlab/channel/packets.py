"""Where packets and tokens fall in the serialised payload.

The transmitted tensor is serialised token by token (batch and sequence dims flattened, each token
``token_bits`` long, side information first) and the bit stream is cut into packets of
``packet_bits`` (the last one may be shorter). Fading blocks are either packets or tokens, and the
two grids do not line up, so bit-level work happens on *segments*: the pieces of the stream between
consecutive packet or token boundaries. Inside a segment the packet and the token, hence the
bit error rate, are constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from splitlab.channel.validation import check_int


@dataclass(frozen=True)
class Segments:
    """Pieces of the bit stream with a constant packet and token; all arrays ``[n_segments]``."""

    start: np.ndarray
    """First bit of each segment (int64)."""
    length: np.ndarray
    """Bits in each segment (int64, > 0)."""
    packet: np.ndarray
    """Packet index of each segment."""
    token: np.ndarray
    """Token index (flattened over batch and sequence) of each segment."""


@dataclass(frozen=True)
class PacketLayout:
    """A payload of ``n_tokens`` tokens of ``token_bits`` bits cut into packets of ``packet_bits``."""

    n_tokens: int
    """Tokens in the payload (all leading dims of ``[..., tokens, hidden]`` flattened)."""
    token_bits: int
    """Bits per token, side information included."""
    packet_bits: int
    """Payload bits per packet (the last packet may be shorter)."""

    def __post_init__(self) -> None:
        check_int("n_tokens", self.n_tokens, 0)
        check_int("token_bits", self.token_bits, 1)
        check_int("packet_bits", self.packet_bits, 1)

    @property
    def n_bits(self) -> int:
        """Total payload bits."""
        return self.n_tokens * self.token_bits

    @property
    def n_packets(self) -> int:
        """Number of packets, ``ceil(n_bits / packet_bits)``."""
        return -(-self.n_bits // self.packet_bits)

    def packet_lengths(self) -> np.ndarray:
        """``[n_packets]`` bits in each packet."""
        starts = np.arange(self.n_packets, dtype=np.int64) * self.packet_bits
        return np.minimum(starts + self.packet_bits, self.n_bits) - starts

    def segments(self) -> Segments:
        """Split the stream at every packet and token boundary (read-only arrays, shared between calls)."""
        return _segments(self.n_bits, self.token_bits, self.packet_bits)

    def element_packets(self, hidden: int, side_bits: int, bits_per_element: int) -> np.ndarray:
        """Packet index of every element, for analog links that fade per packet.

        An element belongs to the packet holding its first bit.

        Returns:
            ``[n_tokens, hidden]`` int64.
        """
        token_offset = np.arange(self.n_tokens, dtype=np.int64)[:, None] * self.token_bits
        element_offset = side_bits + np.arange(hidden, dtype=np.int64)[None, :] * bits_per_element
        return (token_offset + element_offset) // self.packet_bits


@lru_cache(maxsize=256)
def _segments(n_bits: int, token_bits: int, packet_bits: int) -> Segments:
    # Cached: an environment costs the same few payload sizes on every step.
    packet_starts = np.arange(0, n_bits, packet_bits, dtype=np.int64)
    token_starts = np.arange(0, n_bits, token_bits, dtype=np.int64)
    start = np.union1d(packet_starts, token_starts)  # sorted and unique
    length = np.diff(np.append(start, n_bits))
    arrays = (start, length, start // packet_bits, start // token_bits)
    for array in arrays:
        array.setflags(write=False)
    return Segments(*arrays)
