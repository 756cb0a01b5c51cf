"""Quality of split inference: perplexity, LAMBADA last-word accuracy, HellaSwag accuracy.

Each metric takes a split point k and an optional corruption (a channel) applied to the transmitted
activation. ``perplexity_grid`` and ``accuracy_grid`` reuse one pass's per-layer hidden states for
every (k, channel).
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


TASKS = ("lambada", "hellaswag")
"""Accuracy tasks: LAMBADA last-word accuracy, HellaSwag acc_norm."""


def _scored_sequences(model: SplitModel, task: str, item) -> list[tuple[torch.Tensor, int, torch.Tensor, int]]:
    """(ids [1, T], context tokens, continuation ids [C], continuation characters) per continuation of ``item``."""
    ctx = model.tokenizer(item.context).input_ids
    out = []
    for text in ([item.continuation] if task == "lambada" else item.endings):
        cont = model.tokenizer(item.context + text).input_ids[len(ctx):]
        if not cont:  # the tokenizer merged the continuation into the context's last token
            cont = model.tokenizer(text).input_ids
        out.append((torch.tensor([ctx + cont]), len(ctx), torch.tensor(cont), len(text)))
    return out


def _hit(task: str, item, scored: list[tuple[torch.Tensor, torch.Tensor, int]]) -> bool:
    """Whether the model got ``item`` right from (log-probabilities [C, V], continuation [C], characters)."""
    if task == "lambada":  # every token of the last word is the greedy prediction
        logprobs, target, _ = scored[0]
        return bool((logprobs.argmax(-1) == target).all())
    per_char = [float(lp.gather(-1, t[:, None]).sum()) / chars for lp, t, chars in scored]
    return max(range(len(per_char)), key=per_char.__getitem__) == item.gold


@torch.no_grad()
def accuracy_grid(model: SplitModel, task: str, items: Iterable[Cloze | MultipleChoice],
                  points: dict[Hashable, tuple[int, Corruption | None]],
                  on_item: Callable[[], None] | None = None) -> dict[Hashable, float]:
    """Accuracy on ``task`` (one of TASKS) at many points ``key -> (k, corruption)``.

    As in :func:`perplexity_grid`, each sequence's clean per-layer states come from one pass and only
    tails are rerun per point; each corruption is called once per sequence (fresh noise per sequence).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    hits = dict.fromkeys(points, 0)
    n = 0
    for item in items:
        sequences = _scored_sequences(model, task, item)
        states = [model.layer_states(ids) for ids, *_ in sequences]
        for key, (k, corrupt) in points.items():
            scored = []
            for (_, n_ctx, cont, chars), layer in zip(sequences, states):
                logits = model.tail(layer[k].corrupted(corrupt), k)[0]  # [T, V]
                scored.append((logits[n_ctx - 1: -1].log_softmax(-1), cont, chars))
            hits[key] += _hit(task, item, scored)
        n += 1
        if on_item:
            on_item()
    return {key: h / max(n, 1) for key, h in hits.items()}


def lambada_accuracy(model: SplitModel, items: Iterable[Cloze], k: int, corrupt: Corruption | None = None) -> float:
    """Fraction of passages whose last word is the greedy prediction, every token of it."""
    return accuracy_grid(model, "lambada", items, {k: (k, corrupt)})[k]


def hellaswag_accuracy(model: SplitModel, items: Iterable[MultipleChoice], k: int,
                       corrupt: Corruption | None = None) -> float:
    """Accuracy choosing the ending with the highest log-likelihood per character (acc_norm)."""
    return accuracy_grid(model, "hellaswag", items, {k: (k, corrupt)})[k]


__all__ = ["TASKS", "Activation", "accuracy_grid", "hellaswag_accuracy", "lambada_accuracy", "perplexity",
           "perplexity_grid"]
