"""A decoder-only LLM split after layer k: the UE runs the head, the edge runs the tail.

``head(input_ids, k)`` embeds and runs layers ``0..k-1``; its output, an :class:`Activation`, is what
crosses the wireless link. ``tail(activation, k)`` runs layers ``k..L-1``, the final norm and the
output head. ``tail(head(x, k), k)`` equals the unsplit logits for every k in ``0..L``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicCache

from splitlab.llm.families import Family, NotHeld, family_of
from splitlab.llm.loading import DEFAULT_MODEL, load_model, load_partial_model

Part = Literal["full", "ue", "edge"]
Corruption = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Activation:
    """What the UE sends to the edge: the hidden state after k layers and what the tail needs to continue."""

    hidden: torch.Tensor  # [B, T, H] hidden state after layer k (k = 0: the embedding output)
    position_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor | None  # [B, past + T] padding mask (1 = real token), None = no padding

    def corrupted(self, corrupt: Corruption | None) -> "Activation":
        """A copy whose hidden state went through ``corrupt`` (a channel); the metadata travels clean."""
        return self if corrupt is None else replace(self, hidden=corrupt(self.hidden))


class SplitModel:
    """A transformers causal LM seen as a head (UE) and a tail (edge) around a split point k.

    A ``full`` SplitModel holds every layer and can split anywhere. A ``ue`` or ``edge`` part holds only
    the weights of its own side of ``max_k`` (see :meth:`load`); a ``ue`` part runs any k <= ``max_k``,
    an ``edge`` part any k >= ``max_k``.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str = "",
                 part: Part = "full", k: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.part = part
        self.part_k = k
        self.family: Family = family_of(model)
        self.num_layers: int = len(self.family.layers)
        self.hidden_size: int = int(model.config.hidden_size)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: str = DEFAULT_MODEL, part: Part = "full", k: int | None = None) -> "SplitModel":
        """Load ``spec`` whole, or only one half of a split at ``k``.

        ``part="ue"`` keeps the embeddings and layers ``< k``; ``part="edge"`` keeps layers ``>= k``, the
        final norm and the output head. The other side's parameters are never read from disk.
        """
        if part not in ("full", "ue", "edge"):
            raise ValueError(f"part must be one of 'full', 'ue', 'edge', got {part!r}")
        if part == "full":
            model, tokenizer = load_model(spec)
            return cls(model, tokenizer, spec)
        if k is None:
            raise ValueError(f"part={part!r} needs a split point k")
        probe, _ = load_partial_model(spec, lambda name: False)
        fam = family_of(probe)
        n = len(fam.layers)
        _check_k(k, n)
        owned = range(0, k) if part == "ue" else range(k, n)
        prefixes = tuple(f"{fam.layer_prefix}{i}." for i in owned)
        prefixes += fam.embed_prefixes if part == "ue" else fam.final_prefixes
        model, tokenizer = load_partial_model(spec, lambda name: name.startswith(prefixes))
        _drop_unowned(model, family_of(model), part, owned)
        return cls(model, tokenizer, spec, part, k)

    # ------------------------------------------------------------------ the split
    @torch.no_grad()
    def head(self, input_ids: torch.Tensor, k: int, attention_mask: torch.Tensor | None = None,
             cache: Cache | None = None, position_ids: torch.Tensor | None = None) -> Activation:
        """Embed ``input_ids`` [B, T] and run layers ``0..k-1``.

        ``attention_mask`` [B, past + T] marks real tokens (left padding); ``cache`` holds this side's KV
        for incremental decoding. Positions follow ``generate``'s convention when a mask is given.
        """
        self._check_k(k, "ue")
        if input_ids.ndim != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, tokens] tensor, got shape {tuple(input_ids.shape)}")
        if position_ids is None:
            if cache is not None and k == 0:
                raise ValueError("with a cache and k = 0 the head holds no layers to count past tokens: pass position_ids")
            past = cache.get_seq_length(0) if cache is not None else 0
            position_ids = _positions(input_ids.shape, attention_mask, past, input_ids.device)
        hidden = self.family.embed(input_ids, position_ids)  # [B, T, H]
        hidden = self._run_layers(range(0, k), hidden, position_ids, attention_mask, cache)
        return Activation(hidden, position_ids, attention_mask)

    @torch.no_grad()
    def tail(self, activation: Activation, k: int, cache: Cache | None = None, last_only: bool = False) -> torch.Tensor:
        """Run layers ``k..L-1``, the final norm and the head on a (possibly corrupted) activation -> logits [B, T, V].

        ``last_only``: the head on the last position alone -> [B, 1, V] (decoding needs nothing else; on a
        prompt the head over every position is about a quarter of the edge's work on SmolLM2).
        """
        self._check_k(k, "edge")
        hidden = self._run_layers(range(k, self.num_layers), activation.hidden, activation.position_ids,
                                  activation.attention_mask, cache)
        return self.family.finish(hidden[:, -1:] if last_only else hidden)

    @torch.no_grad()
    def middle(self, activation: Activation, start: int, stop: int, cache: Cache | None = None) -> Activation:
        """Run layers ``start..stop-1`` on an activation after ``start`` layers -> the activation after ``stop``.

        Used when the split point moves: the side that takes over layers rebuilds their KV from the
        hidden states it holds. ``cache`` receives the KV of exactly those layers.
        """
        _check_k(start, self.num_layers)
        _check_k(stop, self.num_layers)
        if stop < start:
            raise ValueError(f"middle needs start <= stop, got start={start}, stop={stop}")
        if self.part == "ue" and stop > self.part_k or self.part == "edge" and start < self.part_k:
            raise ValueError(f"this {self.part} half was loaded for k={self.part_k}; it cannot run layers {start}..{stop - 1}")
        hidden = self._run_layers(range(start, stop), activation.hidden, activation.position_ids,
                                  activation.attention_mask, cache)  # [B, T, H]
        return replace(activation, hidden=hidden)

    @torch.no_grad()
    def layer_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[Activation]:
        """Activations after every split point 0..L from one pass (index k = after k layers)."""
        act = self.head(input_ids, 0, attention_mask)
        states = [act]
        ctx = self.family.context(act.hidden, act.position_ids, attention_mask, None, range(self.num_layers))
        hidden = act.hidden
        for i in range(self.num_layers):
            hidden = self.family.run_layer(i, hidden, ctx, None)  # [B, T, H]
            states.append(replace(act, hidden=hidden))
        return states

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unsplit logits through the library's own forward (the reference for exactness)."""
        position_ids = _positions(input_ids.shape, attention_mask, 0, input_ids.device)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for one side of one request."""
        return DynamicCache(config=self.model.config)

    # ------------------------------------------------------------------ helpers
    def _run_layers(self, layers: range, hidden, position_ids, attention_mask, cache) -> torch.Tensor:
        if len(layers) == 0:
            return hidden
        ctx = self.family.context(hidden, position_ids, attention_mask, cache, layers)
        for i in layers:
            hidden = self.family.run_layer(i, hidden, ctx, cache)  # [B, T, H]
        return hidden

    def _check_k(self, k: int, side: str) -> None:
        _check_k(k, self.num_layers)
        if self.part != "full" and self.part != side:
            raise RuntimeError(f"this is the {self.part} half; it cannot run the {side} side")
        # A UE half loaded for part_k holds layers < part_k, so it can run any k <= part_k (a prefix of
        # its layers); an edge half holds layers >= part_k, so it can run any k >= part_k.
        if self.part == side and (k > self.part_k if side == "ue" else k < self.part_k):
            accepted = f"k <= {self.part_k}" if side == "ue" else f"k >= {self.part_k}"
            raise ValueError(f"this {side} half was loaded for k={self.part_k} ({accepted}), got k={k}")


def _check_k(k: int, num_layers: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= num_layers:
        raise ValueError(f"split point k must be an integer in 0..{num_layers}, got {k!r}")


def _positions(shape: torch.Size, attention_mask: torch.Tensor | None, past: int, device) -> torch.Tensor:
    batch, length = shape
    if attention_mask is None:
        return (torch.arange(length, device=device) + past).unsqueeze(0).expand(batch, -1)  # [B, T]
    # As `generate` does for left padding: count real tokens; pads get a harmless position.
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 1)
    return pos[:, -length:]


def _drop_unowned(model: PreTrainedModel, fam: Family, part: Part, owned: range) -> None:
    for i in range(len(fam.layers)):
        if i not in owned:
            fam.layers[i] = NotHeld(f"layer {i}")
    if part == "ue":
        model.set_output_embeddings(NotHeld("the output head"))
        _replace(model, fam.final_prefixes[0].rstrip("."), NotHeld("the final norm"))
    else:
        for prefix in fam.embed_prefixes:
            _replace(model, prefix.rstrip("."), NotHeld("the embedding"))
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"{part} half has unloaded parameters: {leftover[:5]}")


def _replace(model: torch.nn.Module, dotted: str, new: torch.nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
