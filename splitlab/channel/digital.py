"""Bit errors, packets and CRC on a quantised payload.

Bits are flipped independently at the theoretical bit error rate of the modulation at each
block's instantaneous SNR (:func:`splitlab.channel.modulation.theoretical_ber`); simulating every
symbol would be exact but orders of magnitude slower, and the tests check that the two agree.

Flips are drawn per segment (a piece of the stream with one packet and one token, so one BER):
at low BER a binomial count, then that many distinct positions; at high BER a draw per bit
(:func:`draw_flip_positions`). Cost grows with the number of flips, not with the payload, except
in segments whose BER is so high that nearly every bit is drawn anyway.

A CRC is modelled as ideal: a packet fails its check exactly when at least one of its bits flipped
(the CRC's own overhead bits are neither counted nor corrupted). What happens to a failed packet:

- ``erase``: the receiver drops it; its elements become 0.
- ``retransmit``: it is sent again, up to ``max_retx`` times, and delivered exactly on the first
  clean copy. Each retry fails with the packet's error rate ``1 - prod(1 - p_bit)`` at the *same*
  instantaneous SNR (the block is assumed to outlast the retries, which is pessimistic in deep
  fades). After ``max_retx`` failed retries the packet is erased. Retries cost time, not accuracy.
- ``deliver``: no CRC: flipped bits reach the decoder (whose sanity check zeroes inf/NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitlab.channel.packets import PacketLayout, Segments
from splitlab.channel.validation import check_choice, check_int, check_range, check_rng

PACKET_ERROR_POLICIES = ("erase", "retransmit", "deliver")
"""Accepted values of ``on_packet_error``."""

FADING_BLOCKS = ("packet", "token")
"""Accepted values of ``fading_block``: one fading gain per packet or per token."""


@dataclass(frozen=True)
class PacketOutcome:
    """What the packet layer did to one payload. Counts are realised values, or expectations when
    produced by :func:`expected_outcome`."""

    received: np.ndarray | None
    """``[n_tokens, token_bytes]`` uint8 bytes at the receiver (None for expectations)."""
    lost_bytes: np.ndarray | None
    """``[n_tokens, token_bytes]`` bool, bytes of erased packets (None for expectations)."""
    packets: int
    """Packets in the payload."""
    packets_failed: float
    """Packets with at least one bit error on their first transmission (CRC failures)."""
    packets_erased: float
    """Packets whose elements the receiver zeroes."""
    retransmissions: float
    """Extra packet transmissions."""
    retransmitted_bits: float
    """Bits sent again by those retransmissions (for latency)."""
    bit_errors: float
    """Flipped bits that reach the decoder (only with ``deliver``)."""


DENSE_BER = 1.0 / 64.0
"""Above this BER a segment's bits are drawn one by one; below it, a count then positions."""

_CHUNK_BITS = 1 << 22  # bounds the memory of per-bit draws (4M float32 = 16 MB)


def distinct_positions(
    start: np.ndarray, length: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``counts[i]`` distinct bit positions uniformly inside each segment ``i``.

    Vectorised rejection: draw the missing positions for every segment at once, drop repeats,
    and redraw what is still missing. The procedure treats all positions of a segment alike, so
    the final set is a uniform random subset of the requested size. Efficient when counts are a
    small fraction of the lengths (a few rounds); dense segments go through per-bit draws instead.

    Args:
        start, length, counts: ``[n_segments]`` int arrays, ``0 <= counts <= length``.
        rng: the only source of randomness.

    Returns:
        Sorted ``[sum(counts)]`` int64 global bit positions.
    """
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    if np.any(counts > length) or np.any(counts < 0):
        raise ValueError("counts must satisfy 0 <= counts <= length in every segment")
    segment_ids = np.arange(start.size)
    chosen = np.empty(0, dtype=np.int64)
    missing = counts
    while missing.any():
        pending = np.repeat(segment_ids, missing)
        offsets = np.floor(rng.random(pending.size) * length[pending]).astype(np.int64)
        chosen = np.unique(np.concatenate([chosen, start[pending] + offsets]))
        held = np.bincount(np.searchsorted(start, chosen, side="right") - 1, minlength=start.size)
        missing = counts - held
    return chosen


def _per_bit_positions(
    start: np.ndarray, length: np.ndarray, ber: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Bernoulli draw on every bit of the given segments, in chunks of about ``_CHUNK_BITS``."""
    ends = np.cumsum(length)
    chunk_of_segment = (ends - 1) // _CHUNK_BITS
    found = []
    for chunk in np.unique(chunk_of_segment):  # a loop over memory-sized chunks, not bits
        seg = np.flatnonzero(chunk_of_segment == chunk)
        local_start = np.concatenate([[0], np.cumsum(length[seg])[:-1]])
        flipped = rng.random(int(length[seg].sum()), dtype=np.float32) < np.repeat(ber[seg], length[seg])
        local = np.flatnonzero(flipped)
        owner = np.searchsorted(local_start, local, side="right") - 1
        found.append(start[seg][owner] + local - local_start[owner])
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def draw_flip_positions(
    start: np.ndarray, length: np.ndarray, ber: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Positions of the flipped bits when every bit of segment ``i`` flips with prob ``ber[i]``.

    Sparse segments (``ber <= DENSE_BER``) draw a binomial count and then distinct positions;
    dense ones draw each bit. Both are exact; the split (on the BER, never on a random outcome)
    only keeps the cost near ``O(flips + bits of dense segments)``.

    Args:
        start, length: ``[n_segments]`` int64 first bit and length of each segment.
        ber: ``[n_segments]`` flip probability in [0, 1].
        rng: the only source of randomness.

    Returns:
        Sorted int64 global positions of the flipped bits.
    """
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    ber = np.asarray(ber, dtype=np.float64)
    dense = ber > DENSE_BER
    sparse = ~dense & (ber > 0)
    counts = rng.binomial(length[sparse], ber[sparse])
    positions = np.concatenate(
        [
            distinct_positions(start[sparse], length[sparse], counts, rng),
            _per_bit_positions(start[dense], length[dense], ber[dense], rng),
        ]
    )
    return np.sort(positions)


def apply_bit_flips(payload: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Return a copy of a uint8 payload with the bits at ``positions`` (global, LSB-first) flipped."""
    flat = np.array(payload, dtype=np.uint8).reshape(-1)
    positions = np.asarray(positions, dtype=np.int64)
    # ufunc.at is unbuffered, so two flips in the same byte both land.
    np.bitwise_xor.at(flat, positions // 8, (1 << (positions % 8)).astype(np.uint8))
    return flat.reshape(np.shape(payload))


def flip_bits(payload: np.ndarray, ber: float, rng: np.random.Generator) -> np.ndarray:
    """Flip every bit of a uint8 payload independently with probability ``ber``.

    Args:
        payload: uint8 array of any shape.
        ber: bit error probability in [0, 1].
        rng: the only source of randomness.

    Returns:
        A flipped copy with the same shape.
    """
    check_range("ber", ber, 0.0, 1.0)
    check_rng("rng", rng)
    n_bits = np.asarray(payload).size * 8
    positions = draw_flip_positions(np.zeros(1), np.array([n_bits]), np.array([ber]), rng)
    return apply_bit_flips(payload, positions)


def _segment_ber(segments: Segments, block_ber: np.ndarray, fading_block: str) -> np.ndarray:
    block = segments.packet if fading_block == "packet" else segments.token
    return np.asarray(block_ber, dtype=np.float64)[block]


def _packet_success_probability(layout: PacketLayout, segments: Segments, seg_ber: np.ndarray) -> np.ndarray:
    """``[n_packets]`` probability that a packet arrives with no bit error: prod over its bits."""
    log_ok = np.bincount(
        segments.packet, weights=segments.length * np.log1p(-seg_ber), minlength=layout.n_packets
    )
    return np.exp(log_ok)


def _check_link_args(
    block_ber: np.ndarray, layout: PacketLayout, fading_block: str, policy: str, max_retx: int
) -> None:
    check_choice("fading_block", fading_block, FADING_BLOCKS)
    check_choice("on_packet_error", policy, PACKET_ERROR_POLICIES)
    check_int("max_retx", max_retx, 0)
    check_range("ber", block_ber, 0.0, 0.5)
    n_blocks = layout.n_packets if fading_block == "packet" else layout.n_tokens
    if np.shape(block_ber) != (n_blocks,):
        raise ValueError(
            f"ber must have one value per {fading_block} ({n_blocks}), got shape {np.shape(block_ber)}"
        )


def send_packets(
    payload: np.ndarray,
    packet_bits: int,
    block_ber: np.ndarray,
    fading_block: str,
    on_packet_error: str,
    max_retx: int,
    rng: np.random.Generator,
) -> PacketOutcome:
    """Send a payload through a bit-flipping channel in CRC-checked packets.

    Args:
        payload: ``[n_tokens, token_bytes]`` uint8 from :func:`splitlab.channel.quantisation.encode`.
        packet_bits: payload bits per packet, a multiple of 8 so that erasure is byte-aligned.
        block_ber: ``[n_blocks]`` bit error rate of each fading block (packets or tokens).
        fading_block: ``"packet"`` or ``"token"``: what ``block_ber`` is indexed by.
        on_packet_error: ``"erase"``, ``"retransmit"`` or ``"deliver"`` (see module docstring).
        max_retx: most retransmissions per packet.
        rng: the only source of randomness.

    Returns:
        The received bytes, the bytes to treat as lost, and the packet counts.
    """
    check_int("packet_bits", packet_bits, 8)
    if packet_bits % 8:
        raise ValueError(f"packet_bits must be a multiple of 8, got {packet_bits}")
    check_rng("rng", rng)
    payload = np.asarray(payload, dtype=np.uint8)
    layout = PacketLayout(payload.shape[0], payload.shape[1] * 8, packet_bits)
    _check_link_args(block_ber, layout, fading_block, on_packet_error, max_retx)
    segments = layout.segments()
    seg_ber = _segment_ber(segments, block_ber, fading_block)

    if on_packet_error == "deliver":
        positions = draw_flip_positions(segments.start, segments.length, seg_ber, rng)
        failed = np.bincount(positions // packet_bits, minlength=layout.n_packets) > 0
        return PacketOutcome(
            received=apply_bit_flips(payload, positions),
            lost_bytes=np.zeros(payload.shape, dtype=bool),
            packets=layout.n_packets,
            packets_failed=int(failed.sum()),
            packets_erased=0,
            retransmissions=0,
            retransmitted_bits=0,
            bit_errors=int(positions.size),
        )

    # With a CRC the bits of failed packets never reach the decoder, so flip positions are not
    # needed, only whether a packet has any: it is either erased or, after retries, delivered exactly.
    flips = rng.binomial(segments.length, seg_ber)  # [n_segments]
    failed = np.bincount(segments.packet, weights=flips, minlength=layout.n_packets) > 0
    lengths = layout.packet_lengths()
    failed_ids = np.flatnonzero(failed)
    retx = np.zeros(failed_ids.size, dtype=np.int64)
    erased_ids = failed_ids
    if on_packet_error == "retransmit" and max_retx > 0 and failed_ids.size:
        p_ok = _packet_success_probability(layout, segments, seg_ber)[failed_ids]
        retry_ok = rng.random((failed_ids.size, max_retx)) < p_ok[:, None]  # [n_failed, max_retx]
        delivered = retry_ok.any(axis=1)
        retx = np.where(delivered, retry_ok.argmax(axis=1) + 1, max_retx)
        erased_ids = failed_ids[~delivered]

    packet_erased = np.zeros(layout.n_packets, dtype=bool)
    packet_erased[erased_ids] = True
    byte_packet = np.arange(payload.size, dtype=np.int64) * 8 // packet_bits
    return PacketOutcome(
        received=payload.copy(),
        lost_bytes=packet_erased[byte_packet].reshape(payload.shape),
        packets=layout.n_packets,
        packets_failed=int(failed_ids.size),
        packets_erased=int(erased_ids.size),
        retransmissions=int(retx.sum()),
        retransmitted_bits=int((retx * lengths[failed_ids]).sum()),
        bit_errors=0,
    )


def expected_outcome(
    layout: PacketLayout,
    block_ber: np.ndarray,
    fading_block: str,
    on_packet_error: str,
    max_retx: int,
) -> PacketOutcome:
    """Expected packet counts without drawing anything (for latency estimates).

    A packet fails with probability ``q = 1 - prod(1 - p_bit)``; retry ``j`` happens when the
    first ``j`` attempts failed (probability ``q**j``), and the packet is erased after
    ``1 + max_retx`` failures (``q**(1 + max_retx)``).
    """
    _check_link_args(block_ber, layout, fading_block, on_packet_error, max_retx)
    segments = layout.segments()
    seg_ber = _segment_ber(segments, block_ber, fading_block)
    q = 1.0 - _packet_success_probability(layout, segments, seg_ber)  # [n_packets]
    lengths = layout.packet_lengths()
    retx = np.zeros_like(q)
    erased = q if on_packet_error == "erase" else np.zeros_like(q)
    if on_packet_error == "retransmit":
        retx = sum((q**j for j in range(1, max_retx + 1)), np.zeros_like(q))
        erased = q ** (1 + max_retx)
    bit_errors = float((segments.length * seg_ber).sum()) if on_packet_error == "deliver" else 0.0
    return PacketOutcome(
        received=None,
        lost_bytes=None,
        packets=layout.n_packets,
        packets_failed=float(q.sum()),
        packets_erased=float(np.sum(erased)),
        retransmissions=float(np.sum(retx)),
        retransmitted_bits=float(np.sum(retx * lengths)),
        bit_errors=bit_errors,
    )
