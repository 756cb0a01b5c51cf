"""Leakage per split point and channel: inversion attacks scored on held-out text, with bootstrap CIs.

``leakage_grid`` follows ``splitlab.llm.evaluation.perplexity_grid``: the clean hidden states after
every layer come from one pass per batch (``SplitModel.layer_states``), and each point
``key -> (k, eval corruption, fit corruption)`` only applies its channel to the stored states. The
learned attack is fitted on the fit windows pushed through the same k and the same channel (an edge
knows its own channel; fresh noise from the fit corruption's generator), then scored on the eval
windows, which share no text with the fit windows.

Confidence intervals: percentile bootstrap over sequences (windows), 2,000 resamples, because
tokens of one window are not independent; a window's score is its hit rate averaged over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import numpy as np
import torch

from splitlab.llm.split_model import Corruption, SplitModel
from splitlab.platform.statistics import bootstrap_ci
from splitlab.privacy.inversion import NearestNeighbourInverter, RidgeInverter, input_embeddings, recovered

ATTACKS = ("nn", "learned")
"""Attacks: ``nn`` nearest neighbour in the input embeddings; ``learned`` ridge regression then nearest neighbour."""


@dataclass(frozen=True)
class Hits:
    """Per-token recovery of one attack at one point: top-1 and top-5 hits, each [n_windows, window] bool."""

    top1: np.ndarray
    top5: np.ndarray


@dataclass(frozen=True)
class Leakage:
    """Token recovery of one attack at one (k, channel), pooled over noise seeds."""

    top1: float
    top1_ci95: tuple[float, float]
    top5: float
    top5_ci95: tuple[float, float]
    tokens: int
    """Tokens scored per seed."""
    sequences: int
    """Windows the bootstrap resamples."""
    seeds: int

    def as_row(self, prefix: str) -> dict[str, float | int]:
        """Flat columns, e.g. ``leak_nn_top1``, ``leak_nn_top1_lo``, ``leak_nn_top1_hi``."""
        return {f"{prefix}_top1": self.top1, f"{prefix}_top1_lo": self.top1_ci95[0],
                f"{prefix}_top1_hi": self.top1_ci95[1], f"{prefix}_top5": self.top5,
                f"{prefix}_top5_lo": self.top5_ci95[0], f"{prefix}_top5_hi": self.top5_ci95[1]}


def mean_ci(per_sequence: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the mean of ``per_sequence`` [S], resampling sequences."""
    return bootstrap_ci(per_sequence, np.mean, seed=seed, outward=False)


def pooled(hits_per_seed: Sequence[Hits], seed: int = 0) -> Leakage:
    """One :class:`Leakage` from the hits of several noise seeds at the same point."""
    if not hits_per_seed:
        raise ValueError("pooled needs the hits of at least one seed")
    top1 = np.mean([h.top1.mean(1) for h in hits_per_seed], axis=0)  # [n_windows]
    top5 = np.mean([h.top5.mean(1) for h in hits_per_seed], axis=0)
    first = hits_per_seed[0].top1
    return Leakage(float(top1.mean()), mean_ci(top1, seed), float(top5.mean()), mean_ci(top5, seed),
                   tokens=int(first.size), sequences=int(first.shape[0]), seeds=len(hits_per_seed))


@torch.no_grad()
def layer_states_at(model: SplitModel, windows: torch.Tensor, ks: Sequence[int], batch_size: int = 8
                    ) -> dict[int, torch.Tensor]:
    """Clean hidden states after ``k`` layers for each k in ``ks``: ``windows`` [N, W] -> {k: [N, W, H]}."""
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for batch in windows.split(batch_size):
        states = model.layer_states(batch)  # L + 1 activations, each [B, W, H]
        for k in ks:
            out[k].append(states[k].hidden)
    return {k: torch.cat(parts) for k, parts in out.items()}


@torch.no_grad()
def attack_hits(received: torch.Tensor, token_ids: torch.Tensor, nn: NearestNeighbourInverter,
                attacks: Sequence[str] = ATTACKS, fit: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, Hits]:
    """Score ``attacks`` on what the edge received, ``received`` [N, W, H] for input ``token_ids`` [N, W].

    ``fit`` = (received fit vectors [M, W, H], their token ids [M, W]) trains the learned attack; its
    text must be disjoint from ``token_ids``'s.
    """
    _check_attacks(attacks, fit is not None)
    flat = received.flatten(0, 1)  # [N*W, H]
    out: dict[str, Hits] = {}
    for attack in attacks:
        if attack == "nn":
            guesses = nn.top(flat)
        else:
            ridge = RidgeInverter(nn.embeddings, nn=nn).fit(fit[0].flatten(0, 1), fit[1].flatten())
            guesses = ridge.top(flat)
        top1, top5 = recovered(guesses, token_ids.flatten())
        out[attack] = Hits(top1.reshape(token_ids.shape), top5.reshape(token_ids.shape))
    return out


def _check_attacks(attacks: Sequence[str], have_fit: bool) -> None:
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"attacks must be a non-empty list from {list(ATTACKS)}, got {list(attacks)}")
    if "learned" in attacks and not have_fit:
        raise ValueError("the learned attack needs fit_windows (text disjoint from the eval windows)")


def received(states: torch.Tensor, corrupt: Corruption | None, batch_size: int = 8) -> torch.Tensor:
    """``states`` [N, W, H] through the channel, one call per batch as the perplexity grid does -> [N, W, H]."""
    if corrupt is None:
        return states
    return torch.cat([corrupt(b) for b in states.split(batch_size)])


@torch.no_grad()
def leakage_grid(model: SplitModel, eval_windows: torch.Tensor, fit_windows: torch.Tensor | None,
                 points: dict[Hashable, tuple[int, Corruption | None, Corruption | None]],
                 attacks: Sequence[str] = ATTACKS, batch_size: int = 8,
                 on_point: Callable[[], None] | None = None) -> dict[Hashable, dict[str, Hits]]:
    """Token recovery at many points ``key -> (k, eval corruption, fit corruption)``.

    ``eval_windows`` [N, W] are scored; ``fit_windows`` [M, W] (text disjoint from them) train the
    learned attack and may be None when only ``nn`` is asked for. Returns ``key -> {attack: Hits}``.
    """
    _check_attacks(attacks, fit_windows is not None)
    ks = sorted({k for k, _, _ in points.values()})
    eval_states = layer_states_at(model, eval_windows, ks, batch_size)
    fit_states = layer_states_at(model, fit_windows, ks, batch_size) if "learned" in attacks else {}
    nn = NearestNeighbourInverter(input_embeddings(model))
    results: dict[Hashable, dict[str, Hits]] = {}
    for key, (k, corrupt_eval, corrupt_fit) in points.items():
        fit = (received(fit_states[k], corrupt_fit, batch_size), fit_windows) if "learned" in attacks else None
        results[key] = attack_hits(received(eval_states[k], corrupt_eval, batch_size), eval_windows, nn, attacks, fit)
        if on_point:
            on_point()
    return results


def split_windows(windows: torch.Tensor, n_eval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n_eval`` windows to score and the rest to fit on: disjoint text by construction."""
    if not 0 < n_eval < len(windows):
        raise ValueError(f"n_eval must leave at least one window on each side of {len(windows)}, got {n_eval}")
    return windows[:n_eval], windows[n_eval:]
