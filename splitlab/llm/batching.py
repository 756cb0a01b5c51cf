"""One decode step for many requests at once, each request keeping its own KV cache.

Requests decode at different lengths, so a step stacks their caches left-padded to the longest one
(``[B, heads, L_max, d]`` per layer), masks the padding, runs the side's layers once on a batch of
``B`` new tokens, and hands every request back a view of its own rows (``[1, heads, L_b + 1, d]``).
Requests join and leave between steps; nothing but the step itself is shared. Greedy outputs equal
the one-request-at-a-time outputs (padding gets zero attention weight).

Only plain :class:`~transformers.cache_utils.DynamicLayer` caches are stacked; a model with sliding
or other special cache layers steps its requests one after another (same results, no speed-up).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from splitlab.llm.generation import EdgeSession, UESession
from splitlab.llm.split_model import Activation, SplitModel


def stackable(caches: Sequence[DynamicCache], layers: range) -> bool:
    """Whether every cache holds plain dynamic layers over ``layers`` (so rows can be stacked)."""
    return all(type(c.layers[i]) is DynamicLayer for c in caches for i in layers)


def _stack(model: SplitModel, caches: Sequence[DynamicCache], lengths: Sequence[int],
           layers: range) -> tuple[DynamicCache, torch.Tensor]:
    """A batch cache of ``caches`` left-padded to the longest, and the padding mask [B, L_max + 1]."""
    batch, longest = len(caches), max(lengths)
    stacked = model.new_cache()
    for i in layers:
        first = caches[0].layers[i].keys  # [1, heads, L_0, d]
        shape = (batch, first.shape[1], longest, first.shape[3])
        keys, values = first.new_zeros(shape), first.new_zeros(shape)  # [B, heads, L_max, d]
        for b, (cache, n) in enumerate(zip(caches, lengths)):
            keys[b, :, longest - n:] = cache.layers[i].keys[0]
            values[b, :, longest - n:] = cache.layers[i].values[0]
        layer = stacked.layers[i]
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
    mask = torch.zeros(batch, longest + 1, dtype=torch.long)  # [B, L_max + 1]; 1 = a real token
    for b, n in enumerate(lengths):
        mask[b, longest - n:] = 1
    return stacked, mask


def _unstack(stacked: DynamicCache, caches: Sequence[DynamicCache], lengths: Sequence[int], layers: range) -> None:
    """Give every request its own rows of the stepped batch cache (views, no copy)."""
    longest = max(lengths)
    for i in layers:
        keys, values = stacked.layers[i].keys, stacked.layers[i].values  # [B, heads, L_max + 1, d]
        for b, (cache, n) in enumerate(zip(caches, lengths)):
            cache.layers[i].keys = keys[b:b + 1, :, longest - n:]  # [1, heads, n + 1, d]
            cache.layers[i].values = values[b:b + 1, :, longest - n:]


def head_step(model: SplitModel, sessions: Sequence[UESession], token_ids: Sequence[int]) -> list[Activation]:
    """:meth:`UESession.step` for many sessions with the same k in one batch; one activation [1, 1, H] each."""
    if len({s.k for s in sessions}) != 1:
        raise ValueError(f"a batched step needs one split point, got k = {sorted({s.k for s in sessions})}")
    k, layers = sessions[0].k, range(0, sessions[0].k)
    caches = [s.cache for s in sessions]
    if len(sessions) == 1 or not stackable(caches, layers):
        return [s.step(t) for s, t in zip(sessions, token_ids)]
    lengths = [s.length for s in sessions]
    ids = torch.tensor([[t] for t in token_ids], dtype=torch.long)  # [B, 1]
    positions = torch.tensor([[n] for n in lengths], dtype=torch.long)  # [B, 1]
    if k == 0:  # no layers on the UE: the embedding alone, nothing cached
        act = model.head(ids, 0, position_ids=positions)
    else:
        stacked, mask = _stack(model, caches, lengths, layers)
        act = model.head(ids, k, attention_mask=mask, cache=stacked, position_ids=positions)
        _unstack(stacked, caches, lengths, layers)
    out = []
    for b, session in enumerate(sessions):
        one = Activation(act.hidden[b:b + 1], positions[b:b + 1], None)  # hidden [1, 1, H]
        session.length += 1
        session.sent.append(one)
        out.append(one)
    return out


def tail_step(model: SplitModel, sessions: Sequence[EdgeSession], hidden: torch.Tensor) -> torch.Tensor:
    """:meth:`EdgeSession.consume` of one received vector per session (same k) -> next-token logits [B, V].

    ``hidden`` is [B, 1, H], row b for ``sessions[b]``.
    """
    if len({s.k for s in sessions}) != 1:
        raise ValueError(f"a batched step needs one split point, got k = {sorted({s.k for s in sessions})}")
    k = sessions[0].k
    layers = range(k, model.num_layers)
    caches = [s.cache for s in sessions]
    lengths = [s.seen for s in sessions]
    positions = torch.tensor([[n] for n in lengths], dtype=torch.long)  # [B, 1]
    if len(sessions) == 1 or not stackable(caches, layers):
        return torch.stack([s.consume(Activation(hidden[b:b + 1], positions[b:b + 1], None))
                            for b, s in enumerate(sessions)])
    stacked, mask = _stack(model, caches, lengths, layers)
    logits = model.tail(Activation(hidden, positions, mask), k, cache=stacked)  # [B, 1, V]
    _unstack(stacked, caches, lengths, layers)
    for session in sessions:
        session.seen += 1
    return logits[:, -1]
