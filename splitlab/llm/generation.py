"""Token-by-token generation across the split, each side keeping the KV cache of its own layers.

Per new token the UE sends one hidden vector up (``UESession.step``) and the edge sends one token
id down (``EdgeSession.consume`` + sampling). The UE keeps every activation it has sent, so that an
edge that lost its cache (a restarted replica) can rebuild it with one tail prefill.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitlab.llm.split_model import Activation, Corruption, SplitModel


class UESession:
    """The UE's state for one request: its KV cache, the tokens so far, and the activations sent."""

    def __init__(self, model: SplitModel, k: int):
        self.model, self.k = model, k
        self.cache = model.new_cache()
        self.sent: list[Activation] = []
        self.length = 0  # tokens processed; at k = 0 the (empty) cache cannot tell

    def prefill(self, input_ids: torch.Tensor) -> Activation:
        """Run the head over the prompt [1, T]; returns the activation to transmit."""
        return self._send(input_ids)

    def step(self, token_id: int) -> Activation:
        """Run the head over one new token; returns one hidden vector [1, 1, H] to transmit."""
        return self._send(torch.tensor([[token_id]], dtype=torch.long))

    def history(self) -> Activation:
        """Every activation sent so far, concatenated along tokens (for an edge rebuild)."""
        return Activation(torch.cat([a.hidden for a in self.sent], dim=1),
                          torch.cat([a.position_ids for a in self.sent], dim=1), None)

    def _send(self, ids: torch.Tensor) -> Activation:
        positions = torch.arange(self.length, self.length + ids.shape[1]).unsqueeze(0)  # [1, T]
        act = self.model.head(ids, self.k, cache=self.cache, position_ids=positions)
        self.length += ids.shape[1]
        self.sent.append(act)
        return act


class EdgeSession:
    """The edge's state for one request: the KV cache of layers k..L-1."""

    def __init__(self, model: SplitModel, k: int):
        self.model, self.k = model, k
        self.cache = model.new_cache()
        self.seen = 0

    def consume(self, act: Activation, every_position: bool = False) -> torch.Tensor:
        """Run the tail over received activations; returns next-token logits [V] of the last position
        (``every_position``: of every received position, [T, V], for scoring a prompt)."""
        logits = self.model.tail(act, self.k, cache=self.cache)  # [1, T, V]
        self.seen += act.hidden.shape[1]
        return logits[0] if every_position else logits[0, -1]


def sample(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> int:
    """Greedy when temperature == 0, else temperature + nucleus sampling. ``logits`` [V]."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@dataclass
class SplitGeneration:
    """Result of :func:`generate`: the tokens and what crossed the link."""

    token_ids: list[int]
    text: str
    k: int
    vectors_up: int = 0  # hidden vectors sent UE -> edge
    tokens_down: int = 0  # token ids sent edge -> UE
    per_step_tokens: list[int] = field(default_factory=list)


def generate(model: SplitModel, prompt: str | torch.Tensor, k: int, max_new_tokens: int = 32,
             channel: Corruption | None = None, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, stop_at_eos: bool = True) -> SplitGeneration:
    """Generate across the split at ``k``; ``channel`` corrupts every transmitted hidden state."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids if isinstance(prompt, str) else prompt
    if ids.shape[-1] == 0:
        raise ValueError("prompt is empty: give at least one token")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ue, edge = UESession(model, k), EdgeSession(model, k)
    act = ue.prefill(ids)
    result = SplitGeneration([], "", k)
    eos = model.tokenizer.eos_token_id
    for _ in range(max_new_tokens):
        result.vectors_up += act.hidden.shape[1]
        token = sample(edge.consume(act.corrupted(channel)), temperature, top_p, generator)
        result.tokens_down += 1
        result.token_ids.append(token)
        if stop_at_eos and token == eos:
            break
        if len(result.token_ids) < max_new_tokens:
            act = ue.step(token)
    result.text = model.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return result
