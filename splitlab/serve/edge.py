"""The edge half: layers k..L-1, the final norm and the output head, one KV cache per request.

The cache is soft state. Each step names the position of its first token (``start``); an edge that
does not hold the request's cache up to ``start`` (a restarted replica, a request routed to another
replica, an evicted or expired cache) answers ``{"resend_from": n}`` with the tokens it does hold,
and the UE resends its history from n, which the edge consumes in one tail prefill. Sampling uses a
generator seeded by (request seed, position), so a rebuilt request samples as the original would.

Concurrent requests decode as one batch per step: a UE sends the steps of all its requests on one
replica as one ``step_batch`` call (:mod:`splitlab.serve.edge_client`); the calls' steps go through a
:class:`~splitlab.serve.batching.StepBatcher` (steps of several UE replicas join one batch), and
:meth:`EdgeStore.step_many` runs the single-vector steps at the same k as one batch over the requests'
own caches (:mod:`splitlab.llm.batching`); prompts and resends run one by one. A step that fails
fails alone: its reply is the exception. With ``logprobs`` a reply also carries the sampled token's
log-probability and the top alternatives; with ``score_ids`` (echo scoring) those of the prompt's tokens.

Requests reach the replica holding their cache: a request's first call is routed by its request id
(``edge.options(multiplexed_model_id=request_id)``, rendezvous hashing in the edge deployment's
:class:`~splitlab.serve.routing.RequestIdRouter`); every reply names the replica that answered, and the
UE pins the request's later steps to it.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from ray import serve

from splitlab.llm.batching import tail_step
from splitlab.llm.generation import EdgeSession, sample
from splitlab.llm.split_model import Activation, SplitModel
from splitlab.serve.batching import StepBatcher
from splitlab.serve.config import ServeConfig
from splitlab.serve.metrics import edge_metrics


def step_generator(seed: int, position: int) -> torch.Generator:
    """The sampling stream for the token at ``position`` of a request (replica independent)."""
    return torch.Generator().manual_seed((seed * 6364136223846793005 + position) % (2**63))


@dataclass
class EdgeMessage:
    """One UE -> edge transmission: the received hidden states of positions ``start .. start + T - 1``."""

    k: int
    start: int
    hidden: torch.Tensor  # [1, T, H] after the channel
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    logprobs: int | None = None  # also return the sampled token's log-probability and this many alternatives
    score_ids: list[int] | None = None  # token ids at positions start+1 .. start+T-1: return their log-probabilities
    context: int = 0  # tokens the request may reach (prompt + max_tokens): the cache the edge reserves


@dataclass
class _Entry:
    session: EdgeSession
    last_used: float = field(default_factory=time.monotonic)


def top_logprobs(logprobs: torch.Tensor, n: int) -> list[list[float]]:
    """The ``n`` most likely tokens of a log-probability row [V] as ``[[token_id, logprob], ...]``."""
    if n <= 0:
        return []
    values, ids = logprobs.topk(n)
    return [[int(i), float(v)] for i, v in zip(ids, values)]


class EdgeStore:
    """The KV caches of one edge replica, by request id; bounded in number, bytes and idle time.

    ``max_bytes`` bounds the caches' memory: a new request reserves its cache at its full context
    (``EdgeMessage.context``) and least-recently-used caches are dropped to make room (their UEs
    rebuild them if they come back).
    """

    def __init__(self, model: SplitModel, max_sessions: int = 64, ttl_s: float = 300.0, max_bytes: float | None = None):
        self.model, self.max_sessions, self.ttl_s, self.max_bytes = model, max_sessions, ttl_s, max_bytes
        self.sessions: OrderedDict[str, _Entry] = OrderedDict()
        self.rebuilds = 0  # requests that arrived here without their cache
        self.evictions = 0  # caches dropped to make room (not by release or TTL)
        self.resplits = 0  # split points moved within a stream (_resplit)
        self.recomputed_layer_tokens = 0  # of which the edge's work: layers taken over x past tokens
        self.lock = threading.Lock()  # the compute thread and the sweeper
        cfg = model.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        element = next(model.model.parameters()).element_size()
        self.bytes_per_layer_token = 2 * heads * head_dim * element  # keys and values

    def cache_bytes(self, k: int, tokens: int) -> int:
        """Bytes of one request's cache of layers k..L-1 over ``tokens`` tokens."""
        return (self.model.num_layers - k) * tokens * self.bytes_per_layer_token

    def used_bytes(self) -> int:
        entries = tuple(self.sessions.values())  # one atomic copy: the sweeper and metrics read from other threads
        return sum(self.cache_bytes(e.session.k, e.session.seen) for e in entries)

    def step(self, request_id: str, msg: EdgeMessage) -> dict[str, Any]:
        """Consume ``msg``; returns ``{"token": id}`` or ``{"resend_from": n}`` when positions < start are missing."""
        return self.step_many([(request_id, msg)])[0]

    def step_many(self, items: list[tuple[str, EdgeMessage]]) -> list[dict[str, Any] | Exception]:
        """:meth:`step` for many requests: single-vector steps at the same k run as one batch."""
        with self.lock:
            t0 = time.perf_counter()
            replies: list[Any] = [None] * len(items)
            ready: dict[int, list[tuple[int, _Entry, EdgeMessage]]] = {}
            singles: list[tuple[int, _Entry, EdgeMessage]] = []
            taken: set[str] = set()
            for i, (request_id, msg) in enumerate(items):
                if request_id in taken:  # two steps of one request in one batch: a stale retry; let it retry
                    replies[i] = {"resend_from": 0}
                    continue
                try:
                    self._check(msg)
                except ValueError as err:
                    replies[i] = err
                    continue
                try:
                    entry, reply, msg = self._admit(request_id, msg)
                except Exception as err:  # noqa: BLE001 - a failed move fails its own request alone
                    self._drop(request_id)
                    replies[i] = err
                    continue
                if reply is not None:
                    replies[i] = reply
                    continue
                taken.add(request_id)
                if msg.hidden.shape[1] == 1 and not msg.score_ids and entry.session.seen > 0:  # a decode step
                    ready.setdefault(msg.k, []).append((i, entry, msg))
                else:
                    singles.append((i, entry, msg))
            for i, entry, msg in singles:
                replies[i] = self._single_or_error(items[i][0], entry, msg)
            for group in ready.values():
                try:
                    hidden = torch.cat([msg.hidden for _, _, msg in group])  # [B, 1, H]
                    logits = tail_step(self.model, [entry.session for _, entry, _ in group], hidden)  # [B, V]
                    for row, (i, _, msg) in enumerate(group):
                        replies[i] = self._sample(logits[row], msg, msg.start + 1)
                except Exception:  # noqa: BLE001 - find the step at fault: one at a time, each fails alone
                    # The batched step ran on a stacked copy of the caches, so they are as before it.
                    for i, entry, msg in group:
                        replies[i] = self._single_or_error(items[i][0], entry, msg)
            compute_s = time.perf_counter() - t0
            for reply in replies:
                if isinstance(reply, dict) and "token" in reply:
                    reply["compute_s"] = compute_s
                    reply["batch"] = len(items)
            return replies

    def _admit(self, request_id: str, msg: EdgeMessage) -> tuple[_Entry | None, dict | None, EdgeMessage]:
        """The request's cache, ready for ``msg`` (a changed split point moved, :meth:`_resplit`), or the
        reply the UE gets instead (a resend it must make first; the next position of a move in progress).
        Returns (entry, reply, what of ``msg`` is left to consume)."""
        entry = self.sessions.get(request_id)
        if entry is not None and (entry.session.k != msg.k or entry.session.moving_to is not None):
            moved = self._resplit(entry.session, msg)
            if moved is None:
                self._drop(request_id)  # neither a move nor a step: start over from what the UE resends
                entry = None
            elif moved.hidden.shape[1] == 0:
                entry.last_used = time.monotonic()
                return entry, {"continue_from": moved.start}, moved
            else:
                msg = moved
        if entry is not None and msg.start < entry.session.seen:
            # A replay of positions already consumed (a retried step): start over from what the UE resends.
            self._drop(request_id)
            entry = None
        if entry is None:
            if msg.start != 0:
                self.rebuilds += 1
                return None, {"resend_from": 0}, msg
            entry = self._open(request_id, msg)
        elif msg.start > entry.session.seen:
            self.rebuilds += 1
            return None, {"resend_from": entry.session.seen}, msg
        self.sessions.move_to_end(request_id)
        entry.last_used = time.monotonic()
        return entry, None, msg

    def _resplit(self, session: EdgeSession, msg: EdgeMessage) -> EdgeMessage | None:
        """Move the split to ``msg.k`` when ``msg`` is how a UE that changed it continues; returns the part
        of ``msg`` left to consume at the new split, or None when ``msg`` is no such continuation.

        Up (the UE took layers k..k'-1 over, recomputing them from its own copies): the next position at
        k'; the edge drops those layers. Down (the edge takes layers k'..k-1 over): the hidden states after
        layer k' of every past position, from 0 and in order (one frame or several), then the new ones;
        the edge rebuilds the KV of those layers alone and keeps its deeper layers' KV.
        """
        if session.moving_to is None and msg.k > session.k and msg.start == session.seen:
            session.give_layers(msg.k, "recompute")
            self.resplits += 1
            return msg
        start = session.moved if session.moving_to is not None else 0
        if msg.k < session.k and msg.start == start and session.seen > 0 \
                and session.moving_to in (None, msg.k):
            past = min(msg.hidden.shape[1], session.seen - start)
            positions = torch.arange(start, start + past).unsqueeze(0)  # [1, past]
            if session.moving_to is None:
                self.resplits += 1
            self.recomputed_layer_tokens += past * (session.k - msg.k)
            session.move_down(msg.k, Activation(msg.hidden[:, :past], positions, None))
            return replace(msg, start=start + past, hidden=msg.hidden[:, past:])
        return None

    def _check(self, msg: EdgeMessage) -> None:
        """Refuse a malformed message before it joins a batch (where it would fail its batch-mates)."""
        hidden = msg.hidden
        if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or hidden.shape[0] != 1 \
                or hidden.shape[1] < 1 or hidden.shape[2] != self.model.hidden_size:
            shape = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
            raise ValueError(f"an edge step's hidden must be [1, T >= 1, {self.model.hidden_size}], got {shape}")
        if not 0 <= msg.k <= self.model.num_layers:
            raise ValueError(f"an edge step's k must be in 0..{self.model.num_layers}, got {msg.k}")

    def _single_or_error(self, request_id: str, entry: _Entry, msg: EdgeMessage) -> dict[str, Any] | Exception:
        """One request's step alone; a failure is returned, and the cache it may have left half-updated dropped."""
        try:
            return self._single(entry, msg)
        except Exception as err:  # noqa: BLE001 - one bad step must not fail the batch
            self._drop(request_id)
            return err

    def _single(self, entry: _Entry, msg: EdgeMessage) -> dict[str, Any]:
        length = msg.hidden.shape[1]
        positions = torch.arange(msg.start, msg.start + length).unsqueeze(0)  # [1, T]
        logits = entry.session.consume(Activation(msg.hidden, positions, None), every_position=bool(msg.score_ids))
        if not msg.score_ids:
            return self._sample(logits, msg, msg.start + length)
        if len(msg.score_ids) != length - 1:
            raise ValueError(f"score_ids must hold {length - 1} ids (one per received position but the last), "
                             f"got {len(msg.score_ids)}")
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
        n = msg.logprobs or 0
        scores = [{"logprob": float(logprobs[j, token]), "top": top_logprobs(logprobs[j], n)}
                  for j, token in enumerate(msg.score_ids)]
        return {**self._sample(logits[-1], msg, msg.start + length), "scores": scores}

    def _sample(self, logits: torch.Tensor, msg: EdgeMessage, position: int) -> dict[str, Any]:
        generator = step_generator(msg.seed, position) if msg.temperature > 0 else None
        token = sample(logits, msg.temperature, msg.top_p, generator)
        reply: dict[str, Any] = {"token": token}
        if msg.logprobs is not None:
            logprobs = torch.log_softmax(logits.float(), dim=-1)  # [V]
            reply["logprob"] = float(logprobs[token])
            reply["top"] = top_logprobs(logprobs, msg.logprobs)
        return reply

    def consume(self, request_id: str, msg: EdgeMessage, every_position: bool = True) -> dict[str, Any]:
        """Like :meth:`step`, but returns the logits of every position sent: ``{"logits": [T, V], "compute_s"}``
        (``every_position=False``: of the last alone, [1, V]) or ``{"resend_from": n}``.

        The device path (:mod:`splitlab.serve.activation_step`) samples and scores the token itself.
        """
        self.sweep()
        with self.lock:
            try:
                entry, reply, msg = self._admit(request_id, msg)
            except Exception:
                self._drop(request_id)
                raise
            if reply is not None:
                return reply
            t0 = time.perf_counter()
            positions = torch.arange(msg.start, msg.start + msg.hidden.shape[1]).unsqueeze(0)  # [1, T]
            logits = entry.session.consume(Activation(msg.hidden, positions, None), every_position)  # [T or 1, V]
            logits = logits if every_position else logits[None]
            return {"logits": logits, "compute_s": time.perf_counter() - t0}

    def release(self, request_id: str) -> bool:
        """Free a request's cache; True if there was one."""
        with self.lock:
            return self._drop(request_id)

    def _drop(self, request_id: str) -> bool:
        return self.sessions.pop(request_id, None) is not None

    def sweep(self, blocking: bool = True) -> int:
        """Drop caches idle longer than ``ttl_s`` (their UE is gone); returns how many.

        ``blocking=False`` (the background sweeper) skips the sweep while a step is computing.
        """
        if not self.lock.acquire(blocking=blocking):
            return 0
        try:
            now = time.monotonic()
            stale = [rid for rid, e in self.sessions.items() if now - e.last_used > self.ttl_s]
            for rid in stale:
                del self.sessions[rid]
            return len(stale)
        finally:
            self.lock.release()

    def clear(self) -> None:
        with self.lock:
            self.sessions.clear()

    def _open(self, request_id: str, msg: EdgeMessage) -> _Entry:
        need = self.cache_bytes(msg.k, max(msg.context, msg.hidden.shape[1]))
        while self.sessions and (len(self.sessions) >= self.max_sessions or
                                 (self.max_bytes is not None and self.used_bytes() + need > self.max_bytes)):
            self.sessions.popitem(last=False)  # least recently used; its UE can rebuild it
            self.evictions += 1
        entry = _Entry(EdgeSession(self.model, msg.k))
        self.sessions[request_id] = entry
        return entry


@serve.deployment(name="EdgeHalf")
class EdgeHalf:
    """Serve deployment of the edge half (see the module docstring)."""

    def __init__(self, config: dict):
        torch.set_num_threads(1)
        self.config = ServeConfig.from_dict(config)
        self.model = SplitModel.load(self.config.model, part="edge", k=self.config.min_split)
        self.store = EdgeStore(self.model, self.config.edge_max_caches or 2 * self.config.max_streams,
                               self.config.session_ttl_s, self.config.edge_cache_mib * 2**20)
        # One compute thread: the caches are touched by one thread only, and the event loop stays free.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge")
        self.batcher = StepBatcher(self.store.step_many, self.pool, self.config.max_batch, self.config.batch_wait_s)
        self.metrics = edge_metrics()
        self.exported = {"resplits": 0, "resplit_layer_tokens": 0}  # the store's counts already in the metrics
        self.replica_id = serve.get_replica_context().replica_id.unique_id

    def _export(self) -> None:
        """Bring the gauges and the store's move counters up to date."""
        self.metrics["sessions"].set(len(self.store.sessions))
        for name, now in (("resplits", self.store.resplits),
                          ("resplit_layer_tokens", self.store.recomputed_layer_tokens)):
            if now > self.exported[name]:
                self.metrics[name].inc(now - self.exported[name])
                self.exported[name] = now

    async def step_batch(self, items: list[tuple[str, EdgeMessage]]) -> list[dict[str, Any] | Exception]:
        """The steps ``(request_id, msg)`` of several requests; one reply each (see :meth:`EdgeStore.step`),
        with ``"replica"``: this replica's id, or the exception that step raised (the others go on)."""
        if not isinstance(items, list) or not all(isinstance(i, tuple) and len(i) == 2 for i in items):
            raise TypeError(f"step_batch takes a list of (request_id, EdgeMessage) pairs, got {type(items).__name__}")
        replies = await self.batcher.submit_many([(request_id, (request_id, msg)) for request_id, msg in items])
        for reply in replies:
            if not isinstance(reply, dict):
                continue
            reply["replica"] = self.replica_id
            if "resend_from" in reply:
                self.metrics["rebuilds"].inc()
            else:
                self.metrics["batch"].observe(reply.get("batch", 1))
        self._export()
        return replies

    async def step_activation(self, msg: EdgeMessage, top_logprobs: int = 0, full_logprobs: bool = False) -> dict:
        """The device path's step: see :func:`splitlab.serve.activation_step.activation_step`."""
        from splitlab.serve.activation_step import activation_step

        request_id = serve.get_multiplexed_model_id()
        if not request_id:
            raise ValueError("edge steps need the request id as multiplexed_model_id")
        reply = await asyncio.get_running_loop().run_in_executor(
            self.pool, activation_step, self.store, request_id, msg, top_logprobs, full_logprobs)
        self._export()
        return reply

    async def release(self, request_id: str) -> bool:
        self.batcher.forget(request_id)
        freed = await asyncio.get_running_loop().run_in_executor(self.pool, self.store.release, request_id)
        self.metrics["sessions"].set(len(self.store.sessions))
        return freed

    async def stats(self, request_id: str | None = None) -> dict[str, Any]:
        """This replica's view: caches held (``holds``: whether it has ``request_id``'s), rebuild requests."""
        return {"sessions": len(self.store.sessions), "rebuilds": self.store.rebuilds,
                "evictions": self.store.evictions, "cache_bytes": self.store.used_bytes(),
                "resplits": self.store.resplits, "resplit_layer_tokens": self.store.recomputed_layer_tokens,
                "holds": request_id in self.store.sessions if request_id else None,
                "batches": self.batcher.batches, "mean_batch": self.batcher.mean_batch,
                "pending_steps": len(self.batcher.pending),
                "min_split": self.config.min_split, "num_layers": self.model.num_layers,
                "replica": self.replica_id}

    def check_health(self) -> None:
        """Serve calls this every ``health_check_period_s``: it doubles as the TTL sweeper of idle caches."""
        try:
            self.store.sweep(blocking=False)
            self.metrics["sessions"].set(len(self.store.sessions))
            self.metrics["cache_bytes"].set(self.store.used_bytes())
        except Exception:  # noqa: BLE001 - bookkeeping must never fail the health check (Serve would restart us)
            pass

    def __del__(self):
        # Scale-down or shutdown: free the caches now rather than with the process.
        self.store.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
