"""Generation across the split with a KV cache on each side equals the library's generate."""
from __future__ import annotations

import pytest
import torch

from splitlab.llm import SplitModel
from splitlab.llm.generation import EdgeSession, UESession, generate, sample


def _reference(model: SplitModel, ids: torch.Tensor, n: int) -> list[int]:
    out = model.model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_split_generation_equals_generate(tiny_model: SplitModel):
    ids = tiny_model.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    reference = _reference(tiny_model, ids, 10)
    for k in range(tiny_model.num_layers + 1):
        result = generate(tiny_model, ids, k, max_new_tokens=10, stop_at_eos=False)
        assert result.token_ids == reference, f"k={k}"
        # One vector per prompt token, then one per generated token but the last.
        assert result.vectors_up == ids.shape[1] + 9
        assert result.tokens_down == 10


def test_edge_rebuilds_a_lost_cache_from_the_ue_history(tiny_llama: SplitModel):
    k = 2
    ids = tiny_llama.tokenizer("Once upon a time", return_tensors="pt").input_ids
    ue, edge = UESession(tiny_llama, k), EdgeSession(tiny_llama, k)
    token = sample(edge.consume(ue.prefill(ids)))
    token = sample(edge.consume(ue.step(token)))
    expected = edge.consume(ue.step(token))
    fresh = EdgeSession(tiny_llama, k)  # a restarted edge replica
    torch.testing.assert_close(fresh.consume(ue.history()), expected, atol=1e-5, rtol=0)


def test_sampling_is_seeded_and_respects_top_p(tiny_llama: SplitModel):
    a = generate(tiny_llama, "Hello there", 1, 8, temperature=1.0, seed=3, stop_at_eos=False)
    b = generate(tiny_llama, "Hello there", 1, 8, temperature=1.0, seed=3, stop_at_eos=False)
    assert a.token_ids == b.token_ids
    logits = torch.tensor([5.0, 4.0, -10.0, -10.0])
    draws = {sample(logits, 1.0, top_p=0.5, generator=torch.Generator().manual_seed(i)) for i in range(50)}
    assert draws == {0}


def test_bad_generation_arguments(tiny_llama: SplitModel):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny_llama, "hi", 1, 0)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(tiny_llama, torch.zeros((1, 0), dtype=torch.long), 1, 4)


def test_smollm2_split_generation_equals_generate(smollm2: SplitModel):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    reference = _reference(smollm2, ids, 8)
    for k in (0, 10, 30):
        assert generate(smollm2, ids, k, 8, stop_at_eos=False).token_ids == reference, f"k={k}"
