"""Architecture adapters: how to call one family's own modules piece by piece.

An adapter never re-implements a layer. It names the model's own embedding, decoder layers, final
norm and output head, and calls them in the order the family's ``forward`` does, so that a split
is a slice over ``layers``. Llama, Mistral, Qwen2, Qwen3, Gemma, Phi3 and SmolLM share the Llama
layout; Gemma2 and Gemma3 add a soft cap on the output logits (and Gemma3 one rotary table per layer
type); GPT-2 has its own.

Which attention mask each layer gets follows the library: ``config.layer_types`` when the config has
it (Qwen2/3, Gemma2/3), else every layer slides when ``config.sliding_window`` is set (Mistral, Phi3),
the same rule ``DynamicCache(config=...)`` uses to give sliding layers a sliding cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask


@dataclass
class LayerContext:
    """What every decoder layer on one side needs besides the hidden state."""

    position_ids: torch.Tensor  # [B, T]
    masks: dict[str, torch.Tensor | None]  # layer type -> 4D mask (None: plain causal)
    position_embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None  # layer type -> rotary (cos, sin) [B, T, d]


class Family:
    """Base adapter; subclasses name the modules of one architecture family."""

    embed_prefixes: tuple[str, ...]
    layer_prefix: str
    final_prefixes: tuple[str, ...]

    def __init__(self, model: PreTrainedModel):
        self.model = model
        self.config = model.config

    @property
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def run_layer(self, i: int, hidden: torch.Tensor, ctx: LayerContext, cache: Cache | None) -> torch.Tensor:
        raise NotImplementedError

    def layer_type(self, i: int) -> str:
        """``full_attention`` or ``sliding_attention``: the mask layer ``i`` gets in the library's forward."""
        types = getattr(self.config, "layer_types", None)
        if types:
            return types[i]
        return "sliding_attention" if getattr(self.config, "sliding_window", None) else "full_attention"

    def context(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: Cache | None, layers: range) -> LayerContext:
        """Masks and position embeddings for running ``layers`` (one side of the split) on ``hidden``.

        With a cache, each mask is sized against the first layer of its type on this side: the other
        side's layers are empty in this side's cache.
        """
        masks: dict[str, torch.Tensor | None] = {}
        types = [self.layer_type(i) for i in layers]
        makers = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        for kind in dict.fromkeys(types):
            if kind not in makers:
                raise ValueError(f"layer type {kind!r} is not supported for splitting; supported: {sorted(makers)}")
            first = layers[types.index(kind)]
            masks[kind] = makers[kind](config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                                       cache=cache, position_ids=position_ids,
                                       layer_idx=first if cache is not None else None)
        return LayerContext(position_ids, masks, self._position_embeddings(hidden, position_ids, set(types)))

    def _position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, types: set[str]):
        return None


class LlamaFamily(Family):
    """Llama, Mistral, Qwen2/3, Gemma, Phi3, SmolLM: ``model.model.{embed_tokens, layers, norm, rotary_emb}``, ``lm_head``.

    Gemma's embedding module scales by sqrt(hidden) itself, so calling ``embed_tokens`` covers it.
    """

    embed_prefixes = ("model.embed_tokens.",)
    layer_prefix = "model.layers."
    final_prefixes = ("model.norm.", "lm_head.")

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def embed(self, input_ids, position_ids):
        return self.model.model.embed_tokens(input_ids)  # [B, T, H]

    def _position_embeddings(self, hidden, position_ids, types):
        shared = self.model.model.rotary_emb(hidden, position_ids=position_ids)  # one table for every layer
        return {kind: shared for kind in types}

    def run_layer(self, i, hidden, ctx, cache):
        kind = self.layer_type(i)
        return self.layers[i](hidden, attention_mask=ctx.masks[kind], position_ids=ctx.position_ids,
                              position_embeddings=ctx.position_embeddings[kind], cache=cache,
                              use_cache=cache is not None)

    def finish(self, hidden):
        logits = self.model.lm_head(self.model.model.norm(hidden))  # [B, T, V]
        cap = getattr(self.config, "final_logit_softcapping", None)
        if cap is not None:  # Gemma2/3 ForCausalLM squash the logits after the head
            logits = torch.tanh(logits / cap) * cap
        return logits


class Gemma3TextFamily(LlamaFamily):
    """Gemma3 (text): the Llama layout with one rotary table per layer type (local and global)."""

    def __init__(self, model: PreTrainedModel):
        super().__init__(model)
        if getattr(self.config, "use_bidirectional_attention", False):
            raise ValueError("Gemma3 with use_bidirectional_attention=True is not a causal decoder; it cannot be split")

    def _position_embeddings(self, hidden, position_ids, types):
        return {kind: self.model.model.rotary_emb(hidden, position_ids, kind) for kind in types}


class GPT2Family(Family):
    """GPT-2: ``transformer.{wte, wpe, drop, h, ln_f}``, ``lm_head``; learned absolute positions."""

    embed_prefixes = ("transformer.wte.", "transformer.wpe.")
    layer_prefix = "transformer.h."
    final_prefixes = ("transformer.ln_f.", "lm_head.")

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.transformer.h

    def embed(self, input_ids, position_ids):
        t = self.model.transformer
        return t.drop(t.wte(input_ids) + t.wpe(position_ids))  # [B, T, H]

    def run_layer(self, i, hidden, ctx, cache):
        return self.layers[i](hidden, cache, ctx.masks["full_attention"], use_cache=cache is not None,
                              position_ids=ctx.position_ids)

    def finish(self, hidden):
        return self.model.lm_head(self.model.transformer.ln_f(hidden))


FAMILIES: dict[str, type[Family]] = {
    "llama": LlamaFamily, "mistral": LlamaFamily, "qwen2": LlamaFamily, "qwen3": LlamaFamily,
    "gemma": LlamaFamily, "gemma2": LlamaFamily, "gemma3_text": Gemma3TextFamily, "phi3": LlamaFamily,
    "gpt2": GPT2Family,
}


def family_of(model: PreTrainedModel) -> Family:
    model_type = model.config.model_type
    if model_type not in FAMILIES:
        raise ValueError(f"model_type {model_type!r} is not supported for splitting; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type](model)


class NotHeld(nn.Module):
    """Stands in for a module whose weights live on the other side of the split."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.what} is not held by this half of the split model")
