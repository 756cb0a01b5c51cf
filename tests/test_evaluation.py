"""Perplexity and task accuracy across the split, with and without a corruption."""
from __future__ import annotations

import math

import pytest
import torch

from splitlab.llm import SplitModel
from splitlab.llm.corpora import hellaswag, lambada, token_windows, wiki_text
from splitlab.llm.evaluation import accuracy_grid, hellaswag_accuracy, lambada_accuracy, perplexity, perplexity_grid


def test_corpora_are_read_from_packages():
    assert "<doc" not in wiki_text()[:10000] and len(wiki_text().split()) > 200_000
    items = lambada()
    assert len(items) == 5153 and all(c.continuation.startswith(" ") for c in items[:50])
    mc = hellaswag()
    assert len(mc) == 10042 and all(len(m.endings) == 4 and 0 <= m.gold < 4 for m in mc[:50])


def test_token_windows_shape_and_errors(tiny_llama: SplitModel):
    w = token_windows(tiny_llama.tokenizer, "wiki", 300, 64)
    assert w.shape == (4, 64)
    with pytest.raises(ValueError, match="corpus must be one of"):
        token_windows(tiny_llama.tokenizer, "books", 300, 64)
    with pytest.raises(ValueError, match="window"):
        token_windows(tiny_llama.tokenizer, "wiki", 10, 64)


def test_perplexity_is_split_invariant_and_corruption_hurts(tiny_llama: SplitModel):
    windows = token_windows(tiny_llama.tokenizer, "wiki", 256, 64)
    clean = [perplexity(tiny_llama, windows, k) for k in range(tiny_llama.num_layers + 1)]
    assert max(clean) - min(clean) < 1e-3 * clean[0]
    # A random tiny model is near uniform over the vocabulary.
    assert 0.2 * 49152 < clean[0] < 5 * 49152
    noisy = perplexity(tiny_llama, windows, 2, corrupt=lambda h: h + 5 * torch.randn_like(h))
    assert noisy != pytest.approx(clean[2], rel=1e-4)


def test_grid_reuses_prefix_and_matches_direct(tiny_llama: SplitModel):
    windows = token_windows(tiny_llama.tokenizer, "wiki", 256, 64)
    half = lambda h: h * 0.5  # noqa: E731 - a deterministic corruption
    points = {(k, name): (k, fn) for k in (0, 2, 4) for name, fn in (("clean", None), ("half", half))}
    grid = perplexity_grid(tiny_llama, windows, points)
    for k in (0, 2, 4):
        assert grid[k, "clean"] == pytest.approx(perplexity(tiny_llama, windows, k), rel=1e-5)
        assert grid[k, "half"] == pytest.approx(perplexity(tiny_llama, windows, k, lambda h: h * 0.5), rel=1e-5)


def unsplit_accuracy(model: SplitModel, task: str, items) -> float:
    """The task scored on transformers' own unsplit forward, independently of splitlab's scoring."""
    hits = 0
    for item in items:
        ctx = model.tokenizer(item.context).input_ids
        scores, greedy = [], True
        for text in ([item.continuation] if task == "lambada" else item.endings):
            full = model.tokenizer(item.context + text).input_ids
            cont = full[len(ctx):] or model.tokenizer(text).input_ids
            ids = ctx + cont
            logprobs = model.logits(torch.tensor([ids]))[0, len(ctx) - 1: -1].log_softmax(-1)
            target = torch.tensor(cont)
            greedy = bool((logprobs.argmax(-1) == target).all())
            scores.append(float(logprobs[torch.arange(len(cont)), target].sum()) / len(text))
        hits += greedy if task == "lambada" else int(scores.index(max(scores)) == item.gold)
    return hits / len(items)


def test_accuracy_grid_equals_the_unsplit_model_at_every_clean_split(tiny_llama: SplitModel):
    items = hellaswag()[:12]
    expected = unsplit_accuracy(tiny_llama, "hellaswag", items)
    assert 0.0 < expected < 1.0  # a random model still prefers some endings: the check is not vacuous
    grid = accuracy_grid(tiny_llama, "hellaswag", items, {k: (k, None) for k in range(tiny_llama.num_layers + 1)})
    assert set(grid.values()) == {expected}
    assert hellaswag_accuracy(tiny_llama, items, 2) == expected


def test_accuracy_grid_draws_the_corruption_once_per_sequence(tiny_llama: SplitModel):
    calls = []

    def counting(h: torch.Tensor) -> torch.Tensor:
        calls.append(h.shape)
        return h + torch.randn_like(h)

    accuracy_grid(tiny_llama, "hellaswag", hellaswag()[:3], {"noisy": (2, counting), "clean": (2, None)})
    assert len(calls) == 3 * 4 and all(shape[0] == 1 for shape in calls)  # 4 endings per item
    with pytest.raises(ValueError, match="task must be one of"):
        accuracy_grid(tiny_llama, "mmlu", [], {})


def test_smollm2_quality_is_real_and_split_invariant(smollm2: SplitModel):
    windows = token_windows(smollm2.tokenizer, "wiki", 256, 128)
    ppl0, ppl10 = perplexity(smollm2, windows, 0), perplexity(smollm2, windows, 10)
    assert ppl0 == pytest.approx(ppl10, rel=1e-5)
    assert 5 < ppl0 < 60  # a trained 135M model on Wikipedia prose, far from uniform (49152)
    erased = perplexity(smollm2, windows, 10, corrupt=lambda h: h * (torch.rand_like(h) > 0.3))
    assert erased > ppl10 and math.isfinite(erased)
    items = lambada()[:12]
    acc = lambada_accuracy(smollm2, items, 10)
    assert acc == unsplit_accuracy(smollm2, "lambada", items) and acc > 0.05  # 0.34 on the first 200 passages
