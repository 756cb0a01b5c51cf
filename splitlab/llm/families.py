"""Architecture adapters: how to call one family's own modules piece by piece.

An adapter never re-implements a layer. It names the model's own embedding, decoder layers, final
norm and output head, and calls them in the order the family's ``forward`` does, so that a split
is a slice over ``layers``. Llama, Mistral, Qwen2 and SmolLM share the Llama layout; GPT-2 has its
own.
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
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None  # rotary (cos, sin), each [B, T, d]


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

    def _layer_type(self, i: int) -> str:
        types = getattr(self.config, "layer_types", None)
        return types[i] if types else "full_attention"

    def context(self, hidden: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: Cache | None, first_layer: int) -> LayerContext:
        """Masks (sized against this side's first cached layer) and position embeddings."""
        kwargs = dict(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                      cache=cache, position_ids=position_ids, layer_idx=first_layer if cache is not None else None)
        masks: dict[str, torch.Tensor | None] = {"full_attention": create_causal_mask(**kwargs)}
        if "sliding_attention" in (getattr(self.config, "layer_types", None) or ()):
            masks["sliding_attention"] = create_sliding_window_causal_mask(**kwargs)
        return LayerContext(position_ids, masks, self._position_embeddings(hidden, position_ids))

    def _position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor):
        return None


class LlamaFamily(Family):
    """Llama, Mistral, Qwen2, SmolLM: ``model.model.{embed_tokens, layers, norm, rotary_emb}``, ``lm_head``."""

    embed_prefixes = ("model.embed_tokens.",)
    layer_prefix = "model.layers."
    final_prefixes = ("model.norm.", "lm_head.")

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def embed(self, input_ids, position_ids):
        return self.model.model.embed_tokens(input_ids)  # [B, T, H]

    def _position_embeddings(self, hidden, position_ids):
        return self.model.model.rotary_emb(hidden, position_ids=position_ids)

    def run_layer(self, i, hidden, ctx, cache):
        return self.layers[i](hidden, attention_mask=ctx.masks[self._layer_type(i)], position_ids=ctx.position_ids,
                              position_embeddings=ctx.position_embeddings, cache=cache, use_cache=cache is not None)

    def finish(self, hidden):
        return self.model.lm_head(self.model.model.norm(hidden))  # [B, T, V]


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
    "llama": LlamaFamily, "mistral": LlamaFamily, "qwen2": LlamaFamily, "gpt2": GPT2Family,
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
