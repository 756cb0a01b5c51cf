"""Analog corruptions of a hidden-state tensor: element erasure and additive white Gaussian noise.

Both act on ``h`` shaped ``[..., tokens, hidden]`` and return a new tensor of the same shape, dtype
and device. Randomness is drawn on the CPU from the given ``numpy.random.Generator`` and moved to
``h.device``, so a seed gives the same corruption on every device.
"""

from __future__ import annotations

import numpy as np
import torch

from splitlab.channel.fading import db_to_linear
from splitlab.channel.validation import (
    check_bool,
    check_finite,
    check_hidden_states,
    check_range,
    check_rng,
)


def _work_dtype(h: torch.Tensor) -> torch.dtype:
    # fp16/bf16 would overflow in h**2 and lose the noise's low bits; float64 inputs keep float64.
    return torch.float64 if h.dtype == torch.float64 else torch.float32


def erasure(h: torch.Tensor, rho: float, rng: np.random.Generator) -> torch.Tensor:
    """Zero each element independently with probability ``rho``.

    No rescaling of the survivors (unlike dropout): this is the erasure model of the paper's
    released code, so the expected activation shrinks by ``1 - rho``.

    Args:
        h: ``[..., tokens, hidden]`` hidden states.
        rho: erasure probability in [0, 1].
        rng: the only source of randomness.

    Returns:
        ``[..., tokens, hidden]``, same dtype and device as ``h``.
    """
    check_hidden_states("h", h)
    check_range("rho", rho, 0.0, 1.0)
    check_rng("rng", rng)
    erased = rng.random(tuple(h.shape), dtype=np.float32) < rho  # [..., T, H] bool
    return h.masked_fill(torch.from_numpy(erased).to(h.device), 0.0)


def snr_linear_for(h: torch.Tensor, snr_db: float | np.ndarray) -> torch.Tensor:
    """Turn an SNR in dB into a linear SNR tensor that broadcasts against ``h``.

    Args:
        h: ``[..., tokens, hidden]``.
        snr_db: a scalar; an array broadcastable to the token shape ``h.shape[:-1]`` (one SNR per
            token, e.g. per-token fading); or an array of exactly ``h.shape`` (one per element, for
            fading blocks that cut across tokens).

    Returns:
        float64 tensor on ``h.device`` shaped ``[]``, ``[..., tokens, 1]`` or ``[..., tokens, hidden]``.
    """
    snr = np.asarray(snr_db, dtype=np.float64)
    check_finite("snr_db", snr)
    if snr.ndim > 0 and snr.shape != tuple(h.shape):
        try:
            snr = np.broadcast_to(snr, tuple(h.shape[:-1]))[..., None]  # [..., T, 1]
        except ValueError:
            raise ValueError(
                f"snr_db must be a scalar, an array broadcastable to the token shape "
                f"{tuple(h.shape[:-1])}, or an array of shape {tuple(h.shape)}; got shape {snr.shape}"
            ) from None
    return torch.from_numpy(np.ascontiguousarray(db_to_linear(snr))).to(h.device)


def signal_power(h: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """Mean power used to scale the noise.

    Args:
        h: ``[..., tokens, hidden]``.
        per_channel: False: mean of ``h**2`` over the hidden dim, one power per token
            (``[..., tokens, 1]``). True: mean of ``h**2`` over the tokens, one power per hidden
            channel (``[..., 1, hidden]``).

    Returns:
        float64 power tensor that broadcasts against ``h``.
    """
    squared = h.to(torch.float64).square()
    return squared.mean(dim=-2 if per_channel else -1, keepdim=True)


def awgn(
    h: torch.Tensor,
    snr_db: float | np.ndarray,
    rng: np.random.Generator,
    per_channel: bool = False,
) -> torch.Tensor:
    """Add white Gaussian noise at a given SNR: ``h' = h + n``, ``n ~ N(0, P / 10**(snr_db/10))``.

    With ``per_channel=False`` (the paper's normalisation) ``P`` is the mean of ``h**2`` over the
    hidden dim of each token. A few huge activation channels in middle layers dominate that mean,
    so every other channel sees far more noise than its own power suggests. ``per_channel=True``
    takes ``P`` per hidden channel (mean of ``h**2`` over the tokens of the sequence), which gives
    each channel the requested SNR and lets that effect be measured rather than hidden.

    In both cases the total signal-to-noise energy ratio of the tensor equals the requested SNR
    when ``snr_db`` is a scalar.

    Args:
        h: ``[..., tokens, hidden]`` hidden states.
        snr_db: SNR in dB; scalar, per token (broadcastable to ``h.shape[:-1]``) or per element
            (``h.shape``). See :func:`snr_linear_for`.
        rng: the only source of randomness.
        per_channel: normalise the noise per hidden channel instead of per token.

    Returns:
        ``[..., tokens, hidden]``, same dtype and device as ``h``.
    """
    check_hidden_states("h", h)
    check_rng("rng", rng)
    per_channel = check_bool("per_channel", per_channel)
    snr_linear = snr_linear_for(h, snr_db)
    noise_std = (signal_power(h, per_channel) / snr_linear).sqrt()  # broadcasts to [..., T, H]
    work = _work_dtype(h)
    unit_noise = rng.standard_normal(tuple(h.shape), dtype=np.float64 if work == torch.float64 else np.float32)
    noise = torch.from_numpy(unit_noise).to(h.device) * noise_std.to(work)
    return (h.to(work) + noise).to(h.dtype)


def measured_snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Empirical SNR of a corrupted tensor: ``10 log10(sum clean**2 / sum (noisy - clean)**2)``."""
    check_hidden_states("clean", clean, min_ndim=1)
    check_hidden_states("noisy", noisy, min_ndim=1)
    clean64 = clean.to(torch.float64)
    noise_energy = (noisy.to(torch.float64) - clean64).square().sum()
    return float(10.0 * torch.log10(clean64.square().sum() / noise_energy))
