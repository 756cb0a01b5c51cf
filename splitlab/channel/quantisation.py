"""Number formats for the digital link: tensor <-> bytes on the wire.

A payload is ``[n_tokens, token_bytes]`` uint8: one row per token (all leading dims of
``[..., tokens, hidden]`` flattened), so packet and fading-block arithmetic can work on a flat
byte stream. Formats:

- ``fp32``: 32 bits per element, exact.
- ``fp16``: 16 bits; values beyond the fp16 range (+-65504) are clamped first rather than sent as
  inf, since a real encoder would saturate too.
- ``bf16``: 16 bits, round to nearest even; fp32 range, 8 significant bits.
- ``int8``: symmetric per-token absmax: ``scale = max|h| / 127``, ``q = round(h / scale)``.
  The scale travels as fp32 side information in front of the token's ``hidden`` int8 bytes (32 bits per token
  counted in the payload) and is as exposed to bit errors as the data: a corrupted scale spoils
  the whole token, which is what an unprotected header would do.

Receiver sanity check: bit errors in an exponent can produce inf or NaN; :func:`decode` replaces
every non-finite value with 0 (as if the receiver discarded impossible values), so no NaN reaches
the model. Large but finite values from flipped exponent bits are passed on unchanged: they are
the realistic damage of an unprotected float payload.
"""

from __future__ import annotations

import numpy as np
import torch

from splitlab.channel.validation import check_choice, check_hidden_states, check_int

QUANT_FORMATS = ("fp32", "fp16", "bf16", "int8")
"""Accepted values of ``quant``."""

BITS_PER_ELEMENT = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}
"""Bits per hidden-state element of each format, side information excluded."""

SIDE_INFO_BITS_PER_TOKEN = {"fp32": 0, "fp16": 0, "bf16": 0, "int8": 32}
"""Extra bits per token: the fp32 scale of int8."""

_INT8_MAX = 127  # symmetric range, -128 is never produced by the encoder
_FP16_MAX = float(torch.finfo(torch.float16).max)


def token_bits(quant: str, hidden: int) -> int:
    """Bits on the wire for one token of ``hidden`` elements, side information included."""
    check_choice("quant", quant, QUANT_FORMATS)
    check_int("hidden", hidden, 1)
    return hidden * BITS_PER_ELEMENT[quant] + SIDE_INFO_BITS_PER_TOKEN[quant]


def payload_bits(quant: str, n_tokens: int, hidden: int) -> int:
    """Total payload bits for ``n_tokens`` tokens: ``n_tokens * (hidden * bits + side info)``."""
    check_int("n_tokens", n_tokens, 0)
    return n_tokens * token_bits(quant, hidden)


def _as_bytes(t: torch.Tensor) -> np.ndarray:
    """``[n, H]`` tensor -> ``[n, H * itemsize]`` uint8 view of its little-endian memory."""
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret as int16 first
        t = t.view(torch.int16)
    array = np.ascontiguousarray(t.numpy())
    return array.view(np.uint8).reshape(array.shape[0], -1)


def encode(h: torch.Tensor, quant: str) -> np.ndarray:
    """Quantise hidden states into the bytes that go on the wire.

    Args:
        h: ``[..., tokens, hidden]`` floating tensor (any device).
        quant: one of ``QUANT_FORMATS``.

    Returns:
        ``[n_tokens, token_bits(quant, hidden) / 8]`` uint8, ``n_tokens = h.numel() / hidden``.
    """
    check_hidden_states("h", h, min_ndim=1)
    check_choice("quant", quant, QUANT_FORMATS)
    rows = h.detach().to("cpu", torch.float32).reshape(-1, h.shape[-1])  # [n, H]
    if quant == "fp32":
        return _as_bytes(rows)
    if quant == "fp16":
        return _as_bytes(rows.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16))
    if quant == "bf16":
        return _as_bytes(rows.to(torch.bfloat16))
    scale = rows.abs().amax(dim=-1) / _INT8_MAX  # [n]
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero token -> q = 0
    q = (rows / safe_scale[:, None]).round().clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)  # [n, H]
    return np.concatenate([_as_bytes(scale[:, None]), _as_bytes(q)], axis=1)


def decode(payload: np.ndarray, quant: str, like: torch.Tensor) -> torch.Tensor:
    """Dequantise received bytes into a tensor shaped, typed and placed like ``like``.

    Non-finite values (from flipped exponent bits) are replaced by 0; see the module docstring.

    Args:
        payload: ``[n_tokens, token_bytes]`` uint8 as produced by :func:`encode`.
        quant: the format used by :func:`encode`.
        like: ``[..., tokens, hidden]`` reference tensor for shape, dtype and device.

    Returns:
        ``like.shape`` tensor of ``like.dtype`` on ``like.device``.
    """
    check_choice("quant", quant, QUANT_FORMATS)
    hidden = like.shape[-1]
    expected = (like.numel() // hidden, token_bits(quant, hidden) // 8)
    payload = np.ascontiguousarray(payload, dtype=np.uint8)
    if payload.shape != expected:
        raise ValueError(f"payload must have shape {expected} for quant={quant!r}, got {payload.shape}")
    if quant == "fp32":
        values = torch.from_numpy(payload.view(np.float32).copy())
    elif quant == "fp16":
        values = torch.from_numpy(payload.view(np.float16).copy()).to(torch.float32)
    elif quant == "bf16":
        values = torch.from_numpy(payload.view(np.int16).copy()).view(torch.bfloat16).to(torch.float32)
    else:
        scale = torch.from_numpy(np.ascontiguousarray(payload[:, :4]).view(np.float32).copy())  # [n, 1]
        q = torch.from_numpy(np.ascontiguousarray(payload[:, 4:]).view(np.int8).copy())  # [n, H]
        values = q.to(torch.float32) * scale
    values = values.to(like.dtype)  # casting may overflow (e.g. to fp16): sanitise afterwards
    values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return values.reshape(like.shape).to(like.device)


def quantise_dequantise(h: torch.Tensor, quant: str) -> torch.Tensor:
    """Round trip through ``quant`` without channel errors: ``decode(encode(h))``."""
    return decode(encode(h, quant), quant, h)


def lost_elements(lost_bytes: np.ndarray, quant: str, hidden: int) -> np.ndarray:
    """Which elements a receiver must drop when some bytes of the payload are lost.

    An element is lost when any of its bytes is; with ``int8`` a lost scale loses the whole token.

    Args:
        lost_bytes: ``[n_tokens, token_bytes]`` bool, as laid out by :func:`encode`.
        quant: the payload's format.
        hidden: elements per token.

    Returns:
        ``[n_tokens, hidden]`` bool.
    """
    check_choice("quant", quant, QUANT_FORMATS)
    lost_bytes = np.asarray(lost_bytes, dtype=bool)
    side_bytes = SIDE_INFO_BITS_PER_TOKEN[quant] // 8
    element_bytes = BITS_PER_ELEMENT[quant] // 8
    data = lost_bytes[:, side_bytes:].reshape(lost_bytes.shape[0], hidden, element_bytes).any(axis=-1)
    if side_bytes:
        data = data | lost_bytes[:, :side_bytes].any(axis=-1, keepdims=True)
    return data
