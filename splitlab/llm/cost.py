"""The model's own compute and memory traffic per decoder layer, for prefill and for one decoded token.

Counted from the loaded model, not from a formula of the hidden size: the parameters of each
``layers[i]``, of the embedding and of the final norm + output head; the KV elements per token from
the config (key/value heads x head dim); the attention span per layer (a sliding window caps it).

FLOPs per token in layer i at context c (tokens attended, this one included):
``2 * params_i`` (one multiply-add per weight) ``+ 4 * attn_dim * min(c, window_i)`` (scores QK^T and
the weighted sum AV, one multiply-add per element each). Norms, activations and softmax are small
next to these and left out. Memory traffic per layer and phase: its weights read once, the KV cache
read (decode) and the new KV written, in elements; a device profile turns elements into bytes.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerCosts:
    """Per-layer sizes of a decoder-only model (arrays are [L], one entry per decoder layer)."""

    params: np.ndarray
    """Weights of each decoder layer."""
    kv_per_token: np.ndarray
    """Key + value elements each layer caches per token."""
    window: np.ndarray
    """Tokens each layer attends to at most (inf: full causal attention)."""
    attn_dim: int
    """Query heads x head dim: the width of the attention products."""
    hidden: int
    """Hidden size: elements of the activation sent per token."""
    embed_params: int
    """Input embedding weights (a lookup reads ``hidden`` of them per token)."""
    head_params: int
    """Final norm + output head weights (the edge's work after the last layer)."""

    @property
    def num_layers(self) -> int:
        return len(self.params)

    @classmethod
    def from_model(cls, model) -> "LayerCosts":
        """Count a :class:`~splitlab.llm.split_model.SplitModel` (``full`` part: every weight held)."""
        if model.part != "full":
            raise ValueError(f"LayerCosts.from_model needs the full model to count every layer, got part={model.part!r}")
        cfg, fam = model.model.config, model.family
        n_heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
        n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
        params = np.array([sum(p.numel() for p in layer.parameters()) for layer in fam.layers], dtype=np.float64)
        window = np.array([float(cfg.sliding_window) if fam.layer_type(i) == "sliding_attention" else np.inf
                           for i in range(len(params))])
        embed = model.model.get_input_embeddings()
        head = model.model.get_output_embeddings()
        norm = sum(p.numel() for name, p in model.model.named_parameters()
                   if any(name.startswith(prefix) for prefix in fam.final_prefixes[:1]))
        return cls(params=params, kv_per_token=np.full(len(params), 2.0 * n_kv * head_dim), window=window,
                   attn_dim=n_heads * head_dim, hidden=int(cfg.hidden_size), embed_params=embed.weight.numel(),
                   head_params=head.weight.numel() + norm)

    def _attended(self, context: np.ndarray) -> np.ndarray:
        """Tokens each layer attends to for queries at contexts ``context`` [T] -> [L, T]."""
        return np.minimum(context[None, :], self.window[:, None])

    def prefill_flops(self, tokens: int) -> np.ndarray:
        """FLOPs of each layer over a causal prefill of ``tokens`` tokens -> [L]."""
        ctx = np.arange(1, tokens + 1, dtype=np.float64)  # query t attends to t tokens
        return 2.0 * self.params * tokens + 4.0 * self.attn_dim * self._attended(ctx).sum(1)

    def decode_flops(self, context: int) -> np.ndarray:
        """FLOPs of each layer for one new token with ``context`` tokens before it -> [L]."""
        return 2.0 * self.params + 4.0 * self.attn_dim * self._attended(np.array([context + 1.0]))[:, 0]

    def prefill_elements(self, tokens: int) -> np.ndarray:
        """Elements each layer moves in a prefill: weights once, the new KV written -> [L]."""
        return self.params + self.kv_per_token * tokens

    def decode_elements(self, context: int) -> np.ndarray:
        """Elements each layer moves for one token: weights, the cached KV it attends to read, its own KV written -> [L]."""
        attended = self._attended(np.array([context + 1.0]))[:, 0]  # cached ones read + its own written
        return self.params + self.kv_per_token * attended

    def head_flops(self, tokens: int) -> float:
        """Final norm + output head over ``tokens`` tokens."""
        return 2.0 * self.head_params * tokens


@functools.lru_cache(maxsize=4)
def layer_costs_of(name: str) -> LayerCosts:
    """:meth:`LayerCosts.from_model` of a model by name (loaded once per process, then dropped)."""
    from splitlab.llm.split_model import SplitModel

    return LayerCosts.from_model(SplitModel.load(name))
