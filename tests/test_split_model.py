"""The split is exact: tail(head(x, k), k) equals the unsplit logits, halves hold only their weights."""
from __future__ import annotations

import pytest
import torch

from splitlab.llm import ModelNotAvailable, SplitModel, load_model


def _batch_with_padding(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as generate uses
    mask[2, :1] = 0
    return ids, mask


def test_every_split_point_is_exact(tiny_model: SplitModel):
    ids, mask = _batch_with_padding(tiny_model.model.config.vocab_size)
    reference = tiny_model.logits(ids, mask)
    for k in range(tiny_model.num_layers + 1):
        logits = tiny_model.tail(tiny_model.head(ids, k, mask), k)
        real = mask.bool()
        assert (logits - reference)[real].abs().max() <= 1e-5, f"k={k}"


def test_the_head_on_the_last_position_alone_gives_its_logits(tiny_model: SplitModel):
    ids, mask = _batch_with_padding(tiny_model.model.config.vocab_size, seed=3)
    k = tiny_model.num_layers // 2
    full, last = tiny_model.new_cache(), tiny_model.new_cache()
    every = tiny_model.tail(tiny_model.head(ids, k, mask), k, cache=full)  # [B, T, V]
    only = tiny_model.tail(tiny_model.head(ids, k, mask), k, cache=last, last_only=True)  # [B, 1, V]
    assert only.shape == (ids.shape[0], 1, every.shape[-1])
    torch.testing.assert_close(only, every[:, -1:], atol=1e-5, rtol=0)
    for i in range(k, tiny_model.num_layers):  # the cache still holds every position
        torch.testing.assert_close(last.layers[i].keys, full.layers[i].keys)


def test_layer_states_match_head(tiny_model: SplitModel):
    ids, mask = _batch_with_padding(tiny_model.model.config.vocab_size, seed=1)
    states = tiny_model.layer_states(ids, mask)
    assert len(states) == tiny_model.num_layers + 1
    for k in (0, tiny_model.num_layers // 2, tiny_model.num_layers):
        torch.testing.assert_close(states[k].hidden, tiny_model.head(ids, k, mask).hidden, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [0, 1, 3, 4])
def test_halves_hold_only_their_parameters(k: int):
    full = SplitModel.load("tiny-llama")
    ue = SplitModel.load("tiny-llama", part="ue", k=k)
    edge = SplitModel.load("tiny-llama", part="edge", k=k)
    cfg = full.model.config
    embed = cfg.vocab_size * cfg.hidden_size
    per_layer = sum(p.numel() for p in full.family.layers[0].parameters())
    norm = cfg.hidden_size
    count = lambda m: sum(p.numel() for p in m.model.parameters())  # noqa: E731
    assert count(ue) == embed + k * per_layer
    # The tied output head needs the embedding matrix on the edge too.
    assert count(edge) == (cfg.num_hidden_layers - k) * per_layer + norm + embed
    ids, mask = _batch_with_padding(cfg.vocab_size, seed=2)
    logits = edge.tail(ue.head(ids, k, mask), k)
    assert (logits - full.logits(ids, mask))[mask.bool()].abs().max() <= 1e-5


def test_a_half_refuses_the_other_side():
    ue = SplitModel.load("tiny-gpt2", part="ue", k=2)
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="ue half"):
        ue.tail(ue.head(ids, 2), 2)
    with pytest.raises(ValueError, match="loaded for k=2"):
        ue.head(ids, 3)


def test_k_out_of_range_and_empty_input(tiny_llama: SplitModel):
    ids = torch.tensor([[1, 2, 3]])
    for bad in (-1, tiny_llama.num_layers + 1, 1.5):
        with pytest.raises(ValueError, match=r"split point k must be an integer in 0\.\.4"):
            tiny_llama.head(ids, bad)
    with pytest.raises(ValueError, match="non-empty"):
        tiny_llama.head(torch.zeros((1, 0), dtype=torch.long), 1)


def test_missing_model_names_what_to_use(tmp_path):
    with pytest.raises(ModelNotAvailable, match="not available offline.*smollm2"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ValueError, match="non-empty string"):
        load_model("")


def test_missing_package_file_says_what_to_install():
    from splitlab.llm.package_files import MissingPackageFile, package_file

    with pytest.raises(MissingPackageFile, match="pip install --no-deps some-dist"):
        package_file("splitlab_no_such_pkg", "x.bin", "some-dist")
    with pytest.raises(MissingPackageFile, match="not found in package"):
        package_file("splitlab", "no/such/file", "splitlab")


def test_smollm2_split_is_exact(smollm2: SplitModel):
    assert (smollm2.num_layers, smollm2.hidden_size) == (30, 576)
    ids = smollm2.tokenizer(["The capital of France is Paris. The capital of Italy is", "Hello"],
                            return_tensors="pt", padding=True, padding_side="left")
    reference = smollm2.logits(ids.input_ids, ids.attention_mask)
    real = ids.attention_mask.bool()
    for k in (0, 1, 10, 29, 30):
        logits = smollm2.tail(smollm2.head(ids.input_ids, k, ids.attention_mask), k)
        assert (logits - reference)[real].abs().max() <= 1e-5, f"k={k}"
