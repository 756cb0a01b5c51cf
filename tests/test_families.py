"""Every supported decoder family splits exactly: tail(head(x, k), k) equals the library's own forward.

Tiny random configs of each family, 3 layers and a sliding window of 4 tokens (where the family has
one), on sequences of 13 tokens (longer than any window), with and without left padding, and with a
KV cache on each side decoding past the window.
"""
from __future__ import annotations

import pytest
import torch
from transformers import (AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config,
                          LlamaConfig, MistralConfig, Phi3Config, Qwen2Config, Qwen3Config)

from splitlab.llm.split_model import SplitModel

VOCAB, WINDOW, LENGTH = 96, 4, 13
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON, sliding_window=WINDOW),
    "qwen2": lambda: Qwen2Config(**_COMMON, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=8, use_sliding_window=True, sliding_window=WINDOW,
                                 max_window_layers=1),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=8),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=8, sliding_window=WINDOW, final_logit_softcapping=5.0,
                                   attn_logit_softcapping=10.0, layer_types=["sliding_attention",
                                                                             "full_attention", "sliding_attention"]),
    "gemma3_text": lambda: Gemma3TextConfig(**_COMMON, head_dim=8, sliding_window=WINDOW,
                                            final_logit_softcapping=5.0, sliding_window_pattern=2),
    "phi3": lambda: Phi3Config(**_COMMON, sliding_window=WINDOW),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128,
                               bos_token_id=1, eos_token_id=2),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family_model(request) -> SplitModel:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[request.param](), dtype=torch.float32).eval()
    assert model.config.model_type == request.param
    return SplitModel(model, tokenizer=None, name=f"tiny-{request.param}")


def _ids(batch: int, seed: int) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, LENGTH), generator=torch.Generator().manual_seed(seed))


def _assert_every_k_exact(model: SplitModel, ids: torch.Tensor, mask: torch.Tensor | None) -> None:
    reference = model.logits(ids, mask)  # the library's own forward
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    for k in range(model.num_layers + 1):
        logits = model.tail(model.head(ids, k, mask), k)
        assert (logits - reference)[real].abs().max() <= 1e-5, f"{model.name} k={k}"


def test_sliding_window_is_set_where_the_family_has_one(family_model: SplitModel):
    types = [family_model.family.layer_type(i) for i in range(family_model.num_layers)]
    has_window = family_model.model.config.model_type not in ("llama", "gemma", "gpt2")
    assert ("sliding_attention" in types) == has_window, types
    if has_window:
        assert LENGTH > family_model.model.config.sliding_window


def test_every_split_is_exact_without_padding(family_model: SplitModel):
    _assert_every_k_exact(family_model, _ids(2, seed=1), None)


def test_every_split_is_exact_with_left_padding(family_model: SplitModel):
    ids = _ids(3, seed=2)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    mask[2, :1] = 0
    _assert_every_k_exact(family_model, ids, mask)


def test_split_decoding_with_caches_matches_the_full_forward(family_model: SplitModel):
    """Prefill 3 tokens, then decode one at a time past the window; each side caches only its layers."""
    ids = _ids(1, seed=3)
    reference = family_model.logits(ids, None)[0]  # [T, V]
    for k in range(family_model.num_layers + 1):
        ue, edge = family_model.new_cache(), family_model.new_cache()
        got = []
        for start, stop in [(0, 3)] + [(t, t + 1) for t in range(3, LENGTH)]:
            pos = torch.arange(start, stop).unsqueeze(0)
            act = family_model.head(ids[:, start:stop], k, cache=ue, position_ids=pos)
            got.append(family_model.tail(act, k, cache=edge)[0])
        assert (torch.cat(got) - reference).abs().max() <= 1e-5, f"{family_model.name} k={k}"


def test_layer_states_are_the_head_outputs(family_model: SplitModel):
    ids = _ids(2, seed=4)
    states = family_model.layer_states(ids)
    for k in range(family_model.num_layers + 1):
        torch.testing.assert_close(states[k].hidden, family_model.head(ids, k).hidden, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["gemma", "gemma3_text"])
def test_halves_load_only_their_weights_and_stay_exact(family: str, tmp_path):
    """Each half reads only its own tensors from disk (Gemma's embedding scale and Gemma3's per-type rotary
    tables are rebuilt, not read) and the two halves reproduce the whole model."""
    from splitlab.llm.loading import resolve_checkpoint
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(CONFIGS[family](), dtype=torch.float32).eval()
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(resolve_checkpoint("tiny-llama")).save_pretrained(tmp_path)
    full = SplitModel(model, tokenizer=None)
    ids = _ids(2, seed=5)
    for k in (0, 2, 3):
        ue = SplitModel.load(str(tmp_path), part="ue", k=k)
        edge = SplitModel.load(str(tmp_path), part="edge", k=k)
        assert (edge.tail(ue.head(ids, k), k) - full.logits(ids)).abs().max() <= 1e-5, f"{family} k={k}"
