"""Quality of split inference: perplexity, LAMBADA last-word accuracy, HellaSwag accuracy.

Each metric takes a split point k and an optional corruption (a channel) applied to the transmitted
activation. ``perplexity_grid`` reuses one pass's per-layer hidden states for every (k, channel).
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, Iterable

import torch
import torch.nn.functional as F

from splitlab.llm.corpora import Cloze, MultipleChoice
from splitlab.llm.split_model import Activation, Corruption, SplitModel


def _nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL. ``logits`` [B, T, V] predict ``targets`` [B, T] shifted by one."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), reduction="sum")


@torch.no_grad()
def perplexity(model: SplitModel, windows: torch.Tensor, k: int, corrupt: Corruption | None = None,
               batch_size: int = 8) -> float:
    """Perplexity over token windows [N, W] with the split at k and the activation corrupted."""
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        act = model.head(batch, k).corrupted(corrupt)
        total += float(_nll_sum(model.tail(act, k), batch))
        count += batch.numel() - batch.shape[0]
    return math.exp(total / count)


@torch.no_grad()
def perplexity_grid(model: SplitModel, windows: torch.Tensor, points: dict[Hashable, tuple[int, Corruption | None]],
                    batch_size: int = 8, on_point: Callable[[], None] | None = None) -> dict[Hashable, float]:
    """Perplexity at many points ``key -> (k, corruption)`` from one clean pass per batch.

    Only tails are rerun per point: the head's work is shared through ``layer_states``. Each
    corruption is called once per batch, so a seeded channel draws fresh noise for every batch.
    """
    sums = dict.fromkeys(points, 0.0)
    count = 0
    for batch in windows.split(batch_size):
        states = model.layer_states(batch)  # L + 1 activations, each [B, W, H]
        for key, (k, corrupt) in points.items():
            sums[key] += float(_nll_sum(model.tail(states[k].corrupted(corrupt), k), batch))
            if on_point:
                on_point()
        count += batch.numel() - batch.shape[0]
    return {key: math.exp(s / count) for key, s in sums.items()}


def _continuation_logprobs(model: SplitModel, context: str, continuation: str, k: int,
                           corrupt: Corruption | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities [C, V] at the continuation's C positions and its token ids [C]."""
    ctx = model.tokenizer(context).input_ids
    cont = model.tokenizer(context + continuation).input_ids[len(ctx):]
    if not cont:  # the tokenizer merged the continuation into the context's last token
        cont = model.tokenizer(continuation).input_ids
    ids = torch.tensor([ctx + cont])
    logits = model.tail(model.head(ids, k).corrupted(corrupt), k)[0]  # [T, V]
    logprobs = logits[len(ctx) - 1: -1].log_softmax(-1)  # [C, V]
    return logprobs, torch.tensor(cont)


@torch.no_grad()
def lambada_accuracy(model: SplitModel, items: Iterable[Cloze], k: int, corrupt: Corruption | None = None) -> float:
    """Fraction of passages whose last word is the greedy prediction, every token of it."""
    hits, n = 0, 0
    for item in items:
        logprobs, target = _continuation_logprobs(model, item.context, item.continuation, k, corrupt)
        hits += bool((logprobs.argmax(-1) == target).all())
        n += 1
    return hits / max(n, 1)


@torch.no_grad()
def hellaswag_accuracy(model: SplitModel, items: Iterable[MultipleChoice], k: int,
                       corrupt: Corruption | None = None) -> float:
    """Accuracy choosing the ending with the highest log-likelihood per character (acc_norm)."""
    hits, n = 0, 0
    for item in items:
        scores = []
        for ending in item.endings:
            logprobs, target = _continuation_logprobs(model, item.context, ending, k, corrupt)
            scores.append(float(logprobs.gather(-1, target[:, None]).sum()) / len(ending))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == item.gold)
        n += 1
    return hits / max(n, 1)


__all__ = ["Activation", "hellaswag_accuracy", "lambada_accuracy", "perplexity", "perplexity_grid"]
