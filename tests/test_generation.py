"""Generation across the split with a KV cache on each side equals the library's generate."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from splitlab.envs.migration import MigrationPrices
from splitlab.llm import SplitModel
from splitlab.llm.generation import EdgeSession, UESession, generate, resplit, sample


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


def _owned_lengths(cache, n_layers: int) -> list[int]:
    return [cache.layers[i].get_seq_length() for i in range(n_layers)]


@pytest.mark.parametrize("migration", ["recompute", "transfer", "cheapest"])
def test_random_k_schedules_give_generate_tokens(tiny_model: SplitModel, migration: str):
    ids = tiny_model.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    reference = _reference(tiny_model, ids, 16)
    rng = np.random.default_rng(7)
    for trial in range(4):
        schedule = rng.integers(0, tiny_model.num_layers + 1, size=16).tolist()
        result = generate(tiny_model, ids, schedule, max_new_tokens=16, stop_at_eos=False, migration=migration)
        assert result.token_ids == reference, f"schedule={schedule}"
        assert result.ks == schedule
        changes = sum(a != b for a, b in zip(schedule, schedule[1:]))
        assert len(result.migrations) == changes
        if migration == "transfer" and changes:
            assert result.bytes_moved > 0 and all(m.mode == "transfer" for m in result.migrations)
        if migration == "recompute" and changes:
            assert result.recomputed_layers >= sum(abs(a - b) for a, b in zip(schedule, schedule[1:]))


@pytest.mark.parametrize("migration", ["recompute", "transfer"])
def test_each_side_holds_only_its_layers_after_a_move(tiny_llama: SplitModel, migration: str):
    n = tiny_llama.num_layers
    ids = tiny_llama.tokenizer("Once upon a time", return_tensors="pt").input_ids
    ue, edge = UESession(tiny_llama, 1), EdgeSession(tiny_llama, 1)
    token = sample(edge.consume(ue.prefill(ids)))
    for k_to in (3, 0, 4, 2):
        move = resplit(ue, edge, k_to, mode=migration)
        assert (move.k_from, move.k_to, move.mode) == (move.k_from, k_to, migration)
        token = sample(edge.consume(ue.step(token)))
        t = ue.length
        assert _owned_lengths(ue.cache, n) == [t if i < k_to else 0 for i in range(n)]
        assert _owned_lengths(edge.cache, n) == [0 if i < k_to else t for i in range(n)]
    # The edge rebuild from the UE's history still works after the moves.
    expected = edge.consume(ue.step(token))
    fresh = EdgeSession(tiny_llama, ue.k)
    torch.testing.assert_close(fresh.consume(ue.history()), expected, atol=1e-5, rtol=0)


def test_migration_bytes_and_recompute_counts(tiny_llama: SplitModel):
    ids = tiny_llama.tokenizer("Once upon a time there", return_tensors="pt").input_ids
    t = ids.shape[1]
    ue, edge = UESession(tiny_llama, 1), EdgeSession(tiny_llama, 1)
    edge.consume(ue.prefill(ids))
    kv = edge.cache.layers[1]
    kv_bytes = (kv.keys.numel() + kv.values.numel()) * kv.keys.element_size()  # one layer, t tokens
    up = resplit(ue, edge, 3, mode="transfer")
    assert (up.bytes_moved, up.recomputed_layers) == (2 * kv_bytes, 0)
    down = resplit(ue, edge, 2, mode="recompute")  # the UE rebuilds the states after layer 2, the edge reruns layer 2
    assert down.bytes_moved == t * tiny_llama.hidden_size * 4
    assert down.recomputed_layer_tokens == 2 * t + 1 * t
    up = resplit(ue, edge, 4, mode="recompute")  # from the states after layer 2 the UE holds now
    assert (up.bytes_moved, up.recomputed_layer_tokens) == (0, 2 * t)


def test_cheapest_migration_follows_the_prices(tiny_llama: SplitModel):
    ids = tiny_llama.tokenizer("Once upon a time there", return_tensors="pt").input_ids
    slow_link = MigrationPrices(ue_s_per_layer_token=1e-9, edge_s_per_layer_token=1e-9, link_bytes_per_s=1.0)
    slow_ue = MigrationPrices(ue_s_per_layer_token=1.0, edge_s_per_layer_token=1e-9, link_bytes_per_s=1e12)
    for prices, expected in ((slow_link, "recompute"), (slow_ue, "transfer")):
        ue, edge = UESession(tiny_llama, 0), EdgeSession(tiny_llama, 0)
        edge.consume(ue.prefill(ids))
        assert resplit(ue, edge, 3, prices).mode == expected
    with pytest.raises(ValueError, match="migration mode"):
        resplit(ue, edge, 1, mode="teleport")
    with pytest.raises(ValueError, match="split point k"):
        resplit(ue, edge, 9)


@pytest.mark.slow
def test_smollm2_random_k_schedule_gives_generate_tokens(smollm2: SplitModel):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt").input_ids
    reference = _reference(smollm2, ids, 12)
    schedule = np.random.default_rng(3).integers(0, smollm2.num_layers + 1, size=12).tolist()
    for migration in ("recompute", "transfer"):
        result = generate(smollm2, ids, schedule, 12, stop_at_eos=False, migration=migration)
        assert result.token_ids == reference, f"{migration}: schedule={schedule}"
