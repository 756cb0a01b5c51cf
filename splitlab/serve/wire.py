"""The device path's binary wire format: activations up (UE -> edge), token ids down (edge -> UE).

Up, one **activation frame** per transmission (the prompt, one generated token, or a resend)::

    offset size  field
    0      4     magic      b"SLA1"
    4      1     version    1
    5      1     format     0 fp32 | 1 fp16 | 2 bf16 | 3 int8 (per-token absmax)
    6      2     k          split point: the hidden state is the output of layers 0..k-1 (k = 0: embeddings)
    8      4     start      position of the first token in the frame (0 for the prompt)
    12     4     tokens     T, tokens in the frame (>= 1)
    16     4     hidden     H, elements per token (must equal the model's hidden size)
    20     ...   payload    T rows of ``token_bits(format, H) / 8`` bytes, laid out by
                            :func:`splitlab.channel.quantisation.encode` (int8: fp32 scale, then H int8)

All integers little-endian. A frame is exactly ``20 + T * row_bytes`` long. Nothing else travels up:
no text, no token ids; sampling settings go once per stream (query string or the WebSocket's first
message).

Down, one **token frame** per activation frame::

    0  4  magic b"SLT1"    4  1  kind (1 token, 2 resend_from, 3 continue_from)
    5  1  flags (bit 0: full logprobs follow)      6  2  n_top
    8  4  value (token id; the position to resend from; or, during a split move whose past arrives in
            several frames, the next past position the edge expects)
    12 4  position (of the sampled token)        16 4  logprob (fp32, of the sampled token)
    20 4  edge_us (the edge's compute for this step, microseconds: telemetry for the device's cost model)
    24 ...  n_top x (int32 id, fp32 logprob), then if flag 0: uint32 T, uint32 V and T x V fp32
            log-probabilities (the next-token distribution after each position of the frame)

The receiver checks the header against :class:`WireLimits` before it looks at the payload, and
refuses payloads with NaN or +-inf (an honest encoder never produces them), int8 values outside the
symmetric range [-127, 127] and negative int8 scales. Every refusal is a
:class:`~splitlab.serve.protocol.RequestError` naming the field and what is accepted.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from splitlab.channel.quantisation import QUANT_FORMATS, decode, encode, token_bits
from splitlab.serve.protocol import RequestError

FRAME_MAGIC = b"SLA1"
TOKEN_MAGIC = b"SLT1"
WIRE_VERSION = 1
FORMAT_CODES: dict[str, int] = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3}
"""Payload format -> its code in the frame header (the formats of :mod:`splitlab.channel.quantisation`)."""
FORMAT_NAMES = {code: name for name, code in FORMAT_CODES.items()}
FRAME_HEADER = struct.Struct("<4sBBHIII")
"""magic, version, format, k, start, tokens, hidden: 20 bytes."""
TOKEN_HEADER = struct.Struct("<4sBBHiIfI")
"""magic, kind, flags, n_top, value, position, logprob, edge_us: 24 bytes."""
TOP_ENTRY = struct.Struct("<if")
KIND_TOKEN, KIND_RESEND, KIND_CONTINUE = 1, 2, 3
FLAG_FULL = 1
MAX_TOP_LOGPROBS = 20
"""Most alternatives a client may ask for per token."""

assert tuple(FORMAT_CODES) == QUANT_FORMATS  # one list of formats, two spellings


@dataclass(frozen=True)
class WireLimits:
    """What an edge accepts: the model's shape and the split range, and the largest frame."""

    hidden: int
    """Elements per token (the model's hidden size)."""
    min_split: int
    max_split: int
    max_tokens: int
    """Most tokens in one frame (the edge's context)."""
    formats: tuple[str, ...] = QUANT_FORMATS

    def max_frame_bytes(self) -> int:
        """The longest valid frame: ``max_tokens`` rows of the widest accepted format."""
        return FRAME_HEADER.size + self.max_tokens * max(token_bits(f, self.hidden) // 8 for f in self.formats)


@dataclass(frozen=True)
class FrameHeader:
    format: str
    k: int
    start: int
    tokens: int
    hidden: int

    @property
    def payload_bytes(self) -> int:
        return self.tokens * token_bits(self.format, self.hidden) // 8

    @property
    def frame_bytes(self) -> int:
        return FRAME_HEADER.size + self.payload_bytes


@dataclass(frozen=True)
class Frame:
    header: FrameHeader
    hidden: torch.Tensor  # [1, T, H] float32, dequantised


@dataclass(frozen=True)
class TokenReply:
    """One decoded token frame."""

    kind: int
    value: int
    position: int = 0
    logprob: float = 0.0
    edge_s: float = 0.0
    top: tuple[tuple[int, float], ...] = ()
    full: np.ndarray | None = None  # [T, V] float32 log-probabilities after each position of the frame

    @property
    def is_resend(self) -> bool:
        return self.kind == KIND_RESEND

    @property
    def is_continue(self) -> bool:
        return self.kind == KIND_CONTINUE


# ---------------------------------------------------------------------- activation frames (up)
def encode_frame(hidden: torch.Tensor, k: int, start: int, fmt: str) -> bytes:
    """``hidden`` [1, T, H] (or [T, H]) after k layers -> one frame (see the module docstring)."""
    if fmt not in FORMAT_CODES:
        raise ValueError(f"format must be one of {list(FORMAT_CODES)}, got {fmt!r}")
    if hidden.ndim == 3 and hidden.shape[0] != 1:
        raise ValueError(f"a frame carries one sequence: hidden must be [1, T, H], got {tuple(hidden.shape)}")
    rows = hidden.reshape(-1, hidden.shape[-1])  # [T, H]
    header = FRAME_HEADER.pack(FRAME_MAGIC, WIRE_VERSION, FORMAT_CODES[fmt], k, start, rows.shape[0], rows.shape[1])
    return header + encode(rows, fmt).tobytes()


def parse_header(raw: bytes, limits: WireLimits) -> FrameHeader:
    """Check the first 20 bytes of a frame against ``limits`` (before any payload is read)."""
    if len(raw) < FRAME_HEADER.size:
        raise RequestError(f"activation frame is {len(raw)} bytes; a frame starts with a "
                           f"{FRAME_HEADER.size}-byte header", "frame")
    magic, version, code, k, start, tokens, hidden = FRAME_HEADER.unpack_from(raw)
    if magic != FRAME_MAGIC:
        raise RequestError(f"activation frame must start with {FRAME_MAGIC!r}, got {magic!r}", "frame")
    if version != WIRE_VERSION:
        raise RequestError(f"wire version {version} is not supported; this edge speaks version {WIRE_VERSION}",
                           "version")
    fmt = FORMAT_NAMES.get(code)
    if fmt is None or fmt not in limits.formats:
        accepted = ", ".join(f"{FORMAT_CODES[f]} ({f})" for f in limits.formats)
        raise RequestError(f"payload format code {code} is not accepted; accepted: {accepted}", "format")
    if not limits.min_split <= k <= limits.max_split:
        raise RequestError(f"split point k must be in [{limits.min_split}, {limits.max_split}] on this edge, "
                           f"got {k}", "k")
    if hidden != limits.hidden:
        raise RequestError(f"hidden size must be {limits.hidden} (the served model's), got {hidden}", "hidden")
    if tokens < 1:
        raise RequestError("a frame carries at least one token, got 0", "tokens")
    if tokens > limits.max_tokens or start + tokens > limits.max_tokens:
        raise RequestError(f"positions {start}..{start + tokens - 1} exceed the edge's context of "
                           f"{limits.max_tokens} tokens", "tokens", status=413)
    return FrameHeader(fmt, k, start, tokens, hidden)


def decode_frame(raw: bytes, limits: WireLimits) -> Frame:
    """Validate a whole frame and dequantise its payload -> :class:`Frame` (hidden [1, T, H] float32)."""
    header = parse_header(raw, limits)
    if len(raw) != header.frame_bytes:
        raise RequestError(f"a {header.format} frame of {header.tokens} x {header.hidden} is {header.frame_bytes} "
                           f"bytes ({FRAME_HEADER.size} header + {header.payload_bytes} payload), got {len(raw)}",
                           "payload")
    payload = np.frombuffer(raw, dtype=np.uint8, offset=FRAME_HEADER.size).reshape(header.tokens, -1)
    _check_values(payload, header)
    like = torch.empty(1, header.tokens, header.hidden)
    return Frame(header, decode(payload, header.format, like))


def _check_values(payload: np.ndarray, header: FrameHeader) -> None:
    """Refuse what an honest encoder never sends; ``decode`` would silently zero non-finite values."""
    fmt = header.format
    if fmt == "int8":
        scale = np.ascontiguousarray(payload[:, :4]).view(np.float32)[:, 0]  # [T]
        q = np.ascontiguousarray(payload[:, 4:]).view(np.int8)  # [T, H]
        bad = ~np.isfinite(scale) | (scale < 0)
        if bad.any():
            t = int(np.argmax(bad))
            raise RequestError(f"int8 scale of token {t} must be finite and >= 0, got {float(scale[t])!r}", "payload")
        if (q == -128).any():
            t = int(np.argwhere(q == -128)[0, 0])
            raise RequestError(f"int8 values must lie in [-127, 127] (symmetric absmax), token {t} holds -128",
                               "payload")
        return
    if fmt == "bf16":
        bits = np.ascontiguousarray(payload).view(np.uint16)
        bad = (bits & 0x7F80) == 0x7F80  # exponent all ones: inf or NaN
    else:
        values = np.ascontiguousarray(payload).view(np.float32 if fmt == "fp32" else np.float16)
        bad = ~np.isfinite(values)
    if bad.any():
        t, i = (int(x) for x in np.argwhere(bad)[0])
        raise RequestError(f"activations must be finite: token {t}, element {i} is NaN or infinite", "payload")


# ---------------------------------------------------------------------- token frames (down)
def encode_token(token: int, position: int, logprob: float, top: list[tuple[int, float]] | None = None,
                 full: np.ndarray | None = None, edge_s: float = 0.0) -> bytes:
    """One sampled token (and optionally its alternatives and the whole distribution) -> bytes."""
    top = top or []
    edge_us = min(int(edge_s * 1e6), 2**32 - 1)
    out = [TOKEN_HEADER.pack(TOKEN_MAGIC, KIND_TOKEN, FLAG_FULL if full is not None else 0, len(top), token,
                             position, logprob, edge_us)]
    out += [TOP_ENTRY.pack(i, lp) for i, lp in top]
    if full is not None:
        full = np.ascontiguousarray(full, dtype="<f4").reshape(-1, np.shape(full)[-1])  # [T, V]
        out += [struct.pack("<II", *full.shape), full.tobytes()]
    return b"".join(out)


def encode_resend(start: int) -> bytes:
    """The edge lacks positions >= ``start`` of this stream's cache: resend them."""
    return TOKEN_HEADER.pack(TOKEN_MAGIC, KIND_RESEND, 0, 0, start, 0, 0.0, 0)


def encode_continue(start: int) -> bytes:
    """A split move's frame was taken; the edge expects the past from ``start`` next (no token yet)."""
    return TOKEN_HEADER.pack(TOKEN_MAGIC, KIND_CONTINUE, 0, 0, start, 0, 0.0, 0)


def decode_token(raw: bytes) -> TokenReply:
    """Parse a token frame (the client's side); ValueError on anything malformed."""
    if len(raw) < TOKEN_HEADER.size:
        raise ValueError(f"token frame is {len(raw)} bytes, shorter than its {TOKEN_HEADER.size}-byte header")
    magic, kind, flags, n_top, value, position, logprob, edge_us = TOKEN_HEADER.unpack_from(raw)
    if magic != TOKEN_MAGIC or kind not in (KIND_TOKEN, KIND_RESEND, KIND_CONTINUE):
        raise ValueError(f"not a token frame: magic {magic!r}, kind {kind}")
    offset = TOKEN_HEADER.size
    top = tuple(TOP_ENTRY.unpack_from(raw, offset + i * TOP_ENTRY.size) for i in range(n_top))
    offset += n_top * TOP_ENTRY.size
    full = None
    if flags & FLAG_FULL:
        rows, vocab = struct.unpack_from("<II", raw, offset)
        full = np.frombuffer(raw, dtype="<f4", count=rows * vocab, offset=offset + 8).reshape(rows, vocab)
        offset += 8 + 4 * rows * vocab
    if offset != len(raw):
        raise ValueError(f"token frame is {len(raw)} bytes, its header describes {offset}")
    return TokenReply(kind, value, position, logprob, edge_us / 1e6, top, full)
