"""Token-by-token generation across the split, each side keeping the KV cache of its own layers.

Per new token the UE sends one hidden vector up (``UESession.step``) and the edge sends one token
id down (``EdgeSession.consume`` + sampling). The UE keeps every activation it has sent, so that an
edge that lost its cache (a restarted replica) can rebuild it with one tail prefill.

The split point may change between tokens (:func:`resplit`): the KV of the layers that change sides
moves over the link or is recomputed by the side that takes them over, whichever
:class:`~splitlab.envs.migration.MigrationPrices` says is cheaper; each side drops what it no longer owns.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from transformers.cache_utils import Cache

from splitlab.envs.device import DeviceModel
from splitlab.envs.migration import MIGRATION_MODES, MigrationMode, MigrationPrices, migration_work
from splitlab.llm.split_model import Activation, Corruption, SplitModel


class UESession:
    """The UE's state for one request: its KV cache, the tokens so far, and the hidden states it sent.

    ``k`` may change between tokens (:func:`resplit`). The UE keeps the token ids and, while it holds
    them, the clean hidden states after layer ``k`` of every past token (what it sent): the input for
    an edge rebuild and for taking over more layers by recompute.
    """

    def __init__(self, model: SplitModel, k: int):
        self.model, self.k = model, k
        self.cache = model.new_cache()
        self.ids: list[torch.Tensor] = []  # token-id chunks [1, T_i], in order
        # The clean hidden states after layer k of every past token, as sent; None once a move by transfer
        # left the UE without them (rebuilt from the token ids when needed).
        self.sent: list[Activation] | None = []
        self.length = 0  # tokens processed; at k = 0 the (empty) cache cannot tell
        self.rebuilt_layer_tokens = 0  # layer-tokens spent rebuilding hidden states from the token ids

    @property
    def holds_boundary(self) -> bool:
        """Whether the UE holds the hidden states after layer ``k`` of every past token."""
        return self.sent is not None

    def prefill(self, input_ids: torch.Tensor) -> Activation:
        """Run the head over the prompt [1, T]; returns the activation to transmit."""
        return self._send(input_ids)

    def step(self, token_id: int) -> Activation:
        """Run the head over one new token; returns one hidden vector [1, 1, H] to transmit."""
        return self._send(torch.tensor([[token_id]], dtype=torch.long))

    def history(self) -> Activation:
        """The hidden states after layer ``k`` of every past token [1, T, H] (for an edge rebuild)."""
        if self.sent is None:
            self.sent = [self.rebuild(self.k)]
        return Activation(torch.cat([a.hidden for a in self.sent], dim=1),
                          torch.cat([a.position_ids for a in self.sent], dim=1), None)

    def rebuild(self, k: int) -> Activation:
        """The hidden states after layer ``k`` of every past token, recomputed from the token ids (no cache)."""
        self.rebuilt_layer_tokens += k * self.length
        return self.model.head(torch.cat(self.ids, dim=1), k)  # [1, T, H]

    def take_layers(self, k_to: int, kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Move the split up to ``k_to``: adopt the edge's KV of layers k..k_to-1, or recompute it (``kv=None``)."""
        layers = range(self.k, k_to)
        if kv is None:
            after = self.model.middle(self.history(), self.k, k_to, cache=self.cache)  # [1, T, H] after k_to
            self.sent = [after]
        else:
            adopt_kv(self.cache, layers, kv)
            self.sent = None
        self.k = k_to

    def give_layers(self, k_to: int, by: MigrationMode) -> Activation | list[tuple[torch.Tensor, torch.Tensor]]:
        """Move the split down to ``k_to``; returns what goes up: the KV of layers k_to..k-1, or the hidden
        states after ``k_to`` (rebuilt from the token ids) for the edge to recompute them."""
        layers = range(k_to, self.k)
        if by == "transfer":
            payload = export_kv(self.cache, layers)
            self.sent = None
        else:
            payload = self.rebuild(k_to)
            self.sent = [payload]
        drop_kv(self.cache, layers)
        self.k = k_to
        return payload

    def move_by_recompute(self, k_to: int) -> Activation | None:
        """Move the split to ``k_to`` where only hidden states cross the link (the serving paths): up, recompute
        layers k..k_to-1 from the hidden states it sent (the edge drops them); down, drop layers k_to..k-1 and
        return the hidden states after ``k_to`` of every past token [1, T, H], rebuilt from the token ids, for
        the edge to rebuild those layers from. Returns None when nothing goes up."""
        if k_to > self.k:
            self.take_layers(k_to, None)
        elif k_to < self.k:
            return self.give_layers(k_to, "recompute")
        return None

    def record(self, ids: torch.Tensor, act: Activation) -> None:
        """Book tokens ``ids`` [1, T] whose head output ``act`` was computed outside :meth:`step` (a batched step)."""
        self.length += ids.shape[1]
        self.ids.append(ids)
        if self.sent is not None:
            self.sent.append(act)

    def _send(self, ids: torch.Tensor) -> Activation:
        positions = torch.arange(self.length, self.length + ids.shape[1]).unsqueeze(0)  # [1, T]
        act = self.model.head(ids, self.k, cache=self.cache, position_ids=positions)
        self.record(ids, act)
        return act


class EdgeSession:
    """The edge's state for one request: the KV cache of layers k..L-1 (``k`` may change, :func:`resplit`)."""

    def __init__(self, model: SplitModel, k: int):
        self.model, self.k = model, k
        self.cache = model.new_cache()
        self.seen = 0
        # A move down in progress (the UE's hidden states arrive in chunks): the target split and how many
        # past positions of layers moving_to..k-1 are rebuilt so far.
        self.moving_to: int | None = None
        self.moved = 0

    def consume(self, act: Activation, every_position: bool = False) -> torch.Tensor:
        """Run the tail over received activations; returns next-token logits [V] of the last position
        (``every_position``: of every received position, [T, V], for scoring a prompt)."""
        logits = self.model.tail(act, self.k, cache=self.cache, last_only=not every_position)  # [1, T or 1, V]
        self.seen += act.hidden.shape[1]
        return logits[0] if every_position else logits[0, -1]

    def give_layers(self, k_to: int, by: MigrationMode) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Move the split up to ``k_to``: drop layers k..k_to-1, returning their KV when it is to be sent."""
        layers = range(self.k, k_to)
        payload = export_kv(self.cache, layers) if by == "transfer" else None
        drop_kv(self.cache, layers)
        self.k = k_to
        return payload

    def take_layers(self, k_to: int, payload: Activation | list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Move the split down to ``k_to``: adopt the UE's KV of layers k_to..k-1, or recompute it from the
        hidden states after ``k_to`` that the UE sent."""
        if isinstance(payload, Activation):
            if not self.move_down(k_to, payload):
                raise ValueError(f"the hidden states of {payload.hidden.shape[1]} past tokens arrived; "
                                 f"the edge holds {self.seen}")
            return
        adopt_kv(self.cache, range(k_to, self.k), payload)
        self.k = k_to

    def move_down(self, k_to: int, part: Activation) -> bool:
        """One chunk of a move down to ``k_to`` by recompute: ``part`` holds the hidden states after layer
        ``k_to`` of the next past positions (``self.moved`` onwards, in order). Returns True once every past
        position is moved; the split is ``k_to`` from then on."""
        if self.moving_to is None:
            self.moving_to, self.moved = k_to, 0
        if k_to != self.moving_to or self.moved + part.hidden.shape[1] > self.seen:
            raise ValueError(f"a move to k={k_to} of positions {self.moved}.. does not fit the move to "
                             f"k={self.moving_to} of {self.seen} past positions in progress")
        self.model.middle(part, k_to, self.k, cache=self.cache)
        self.moved += part.hidden.shape[1]
        if self.moved < self.seen:
            return False
        self.k, self.moving_to = k_to, None
        return True


def export_kv(cache: Cache, layers: range) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (keys, values) of ``layers``, each [B, heads_kv, T, d]."""
    return [(cache.layers[i].keys, cache.layers[i].values) for i in layers]


def adopt_kv(cache: Cache, layers: range, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if len(kv) != len(layers):
        raise ValueError(f"KV for {len(kv)} layers received, layers {layers.start}..{layers.stop - 1} expected")
    for i, (keys, values) in zip(layers, kv):
        cache.layers[i].reset()
        cache.layers[i].update(keys, values)


def drop_kv(cache: Cache, layers: range) -> None:
    """Forget the KV of ``layers`` (the other side owns them now)."""
    for i in layers:
        cache.layers[i].reset()


def _nbytes(payload: Activation | list[tuple[torch.Tensor, torch.Tensor]] | None) -> int:
    if payload is None:
        return 0
    if isinstance(payload, Activation):
        return payload.hidden.numel() * payload.hidden.element_size()
    return sum(t.numel() * t.element_size() for pair in payload for t in pair)


@dataclass(frozen=True)
class Migration:
    """One change of the split point during a generation and what it cost."""

    k_from: int
    k_to: int
    tokens: int  # past tokens whose KV changed sides
    mode: MigrationMode
    bytes_moved: int  # payload over the link (KV entries, or hidden states for an edge recompute)
    recomputed_layers: int  # layers run again over the past tokens (UE and edge)
    recomputed_layer_tokens: int  # the same, times the tokens each ran over
    estimated_s: float  # the price of the chosen way under the MigrationPrices used


def default_prices(model: SplitModel, link_bytes_per_s: float = 1e7) -> MigrationPrices:
    """Prices from :class:`DeviceModel`'s default UE and edge speeds and a 10 MB/s link."""
    device = DeviceModel()
    per_token = device.layer_flops(model.hidden_size) / device.tokens  # FLOPs of one layer on one token
    return MigrationPrices(per_token / device.ue_flops, per_token / device.edge_flops, link_bytes_per_s)


def resplit(ue: UESession, edge: EdgeSession, k_to: int, prices: MigrationPrices | None = None,
            mode: str = "cheapest") -> Migration:
    """Move the split of one request from ``ue.k`` to ``k_to`` between two tokens.

    ``mode`` is ``recompute``, ``transfer`` or ``cheapest`` (the lower price under ``prices``; default
    :func:`default_prices`). The payload crosses the link reliably (a real link would protect it with
    retransmissions): the channel corrupts only the per-token activations.
    """
    if mode not in MIGRATION_MODES:
        raise ValueError(f"migration mode must be one of {MIGRATION_MODES}, got {mode!r}")
    if ue.k != edge.k:
        raise RuntimeError(f"UE split {ue.k} and edge split {edge.k} disagree")
    k_from, tokens = ue.k, ue.length
    if not isinstance(k_to, int) or isinstance(k_to, bool) or not 0 <= k_to <= ue.model.num_layers:
        raise ValueError(f"split point k must be an integer in 0..{ue.model.num_layers}, got {k_to!r}")
    if k_to == k_from:
        return Migration(k_from, k_to, tokens, "recompute", 0, 0, 0, 0.0)
    owner = edge.cache if k_to > k_from else ue.cache
    first = owner.layers[min(k_from, k_to)]
    kv_bytes = (first.keys.numel() + first.values.numel()) * first.keys.element_size() / max(tokens, 1)
    hidden_bytes = ue.model.hidden_size * first.keys.element_size()
    work = migration_work(k_from, k_to, tokens, kv_bytes, hidden_bytes, ue.holds_boundary)
    prices = prices if prices is not None else default_prices(ue.model)
    by: MigrationMode = prices.choose(work) if mode == "cheapest" else mode  # type: ignore[assignment]
    seconds = prices.seconds(work)[0 if by == "recompute" else 1]
    rebuilt_before = ue.rebuilt_layer_tokens
    if k_to > k_from:
        payload = edge.give_layers(k_to, by)
        ue.take_layers(k_to, payload)
    else:
        payload = ue.give_layers(k_to, by)
        edge.take_layers(k_to, payload)
    recomputed = 0 if by == "transfer" else abs(k_to - k_from)
    rebuilt = ue.rebuilt_layer_tokens - rebuilt_before
    layers = recomputed + (rebuilt // tokens if tokens else 0)
    return Migration(k_from, k_to, tokens, by, _nbytes(payload), layers, recomputed * tokens + rebuilt, float(seconds))


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
    """Result of :func:`generate`: the tokens, what crossed the link, and every change of the split."""

    token_ids: list[int]
    text: str
    k: int  # the split of the prompt
    vectors_up: int = 0  # hidden vectors sent UE -> edge
    tokens_down: int = 0  # token ids sent edge -> UE
    per_step_tokens: list[int] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)  # the split that produced each new token
    migrations: list[Migration] = field(default_factory=list)

    @property
    def bytes_moved(self) -> int:
        """Migration payload over the link, all moves together."""
        return sum(m.bytes_moved for m in self.migrations)

    @property
    def recomputed_layers(self) -> int:
        """Layers run again over past tokens, all moves together."""
        return sum(m.recomputed_layers for m in self.migrations)


def generate(model: SplitModel, prompt: str | torch.Tensor, k: int | Sequence[int], max_new_tokens: int = 32,
             channel: Corruption | None = None, temperature: float = 0.0, top_p: float = 1.0,
             seed: int | None = None, stop_at_eos: bool = True, migration: str = "cheapest",
             prices: MigrationPrices | None = None) -> SplitGeneration:
    """Generate across the split; ``channel`` corrupts every transmitted hidden state.

    ``k`` is one split point, or a schedule: ``k[i]`` is the split that produces new token ``i`` (the
    last entry holds for the rest). When it changes the KV of the layers that change sides moves by
    ``migration`` (``recompute``, ``transfer`` or ``cheapest`` under ``prices``, see :func:`resplit`).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    schedule = [k] if isinstance(k, int) else list(k)
    if not schedule:
        raise ValueError("k schedule is empty: give a split point or a non-empty list of them")
    ids = model.tokenizer(prompt, return_tensors="pt").input_ids if isinstance(prompt, str) else prompt
    if ids.shape[-1] == 0:
        raise ValueError("prompt is empty: give at least one token")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ue, edge = UESession(model, schedule[0]), EdgeSession(model, schedule[0])
    act = ue.prefill(ids)
    result = SplitGeneration([], "", schedule[0])
    eos = model.tokenizer.eos_token_id
    for i in range(max_new_tokens):
        result.vectors_up += act.hidden.shape[1]
        token = sample(edge.consume(act.corrupted(channel)), temperature, top_p, generator)
        result.tokens_down += 1
        result.token_ids.append(token)
        result.ks.append(ue.k)
        if stop_at_eos and token == eos:
            break
        if len(result.token_ids) < max_new_tokens:
            k_next = schedule[min(i + 1, len(schedule) - 1)]
            if k_next != ue.k:
                result.migrations.append(resplit(ue, edge, k_next, prices, migration))
            act = ue.step(token)
    result.text = model.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    return result
