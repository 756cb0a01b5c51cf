"""The edge half: layers k..L-1, the final norm and the output head, one KV cache per request.

The cache is soft state. Each step names the position of its first token (``start``); an edge that
does not hold the request's cache up to ``start`` (a restarted replica, a request routed to another
replica, an evicted or expired cache) answers ``{"resend_from": n}`` with the tokens it does hold,
and the UE resends its history from n, which the edge consumes in one tail prefill. Sampling uses a
generator seeded by (request seed, position), so a rebuilt request samples as the original would.

Requests reach the replica holding their cache by request id: the UE calls
``edge.options(multiplexed_model_id=request_id).step.remote(...)`` and the edge deployment's
:class:`~splitlab.serve.routing.RequestIdRouter` sends every call with that id to the same replica.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from ray import serve

from splitlab.llm.generation import EdgeSession, sample
from splitlab.llm.split_model import Activation, SplitModel
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


@dataclass
class _Entry:
    session: EdgeSession
    last_used: float = field(default_factory=time.monotonic)


class EdgeStore:
    """The KV caches of one edge replica, by request id; bounded in number and idle time."""

    def __init__(self, model: SplitModel, max_sessions: int = 64, ttl_s: float = 300.0):
        self.model, self.max_sessions, self.ttl_s = model, max_sessions, ttl_s
        self.sessions: OrderedDict[str, _Entry] = OrderedDict()
        self.rebuilds = 0  # requests that arrived here without their cache

    def step(self, request_id: str, msg: EdgeMessage) -> dict[str, Any]:
        """Consume ``msg``; returns ``{"token": id}`` or ``{"resend_from": n}`` when positions < start are missing."""
        self.sweep()
        entry = self.sessions.get(request_id)
        if entry is not None and (entry.session.k != msg.k or msg.start < entry.session.seen):
            # A replay of positions already consumed (a retried step): start over from what the UE resends.
            self.release(request_id)
            entry = None
        if entry is None:
            if msg.start != 0:
                self.rebuilds += 1
                return {"resend_from": 0}
            entry = self._open(request_id, msg.k)
        elif msg.start > entry.session.seen:
            self.rebuilds += 1
            return {"resend_from": entry.session.seen}
        self.sessions.move_to_end(request_id)
        entry.last_used = time.monotonic()
        t0 = time.perf_counter()
        length = msg.hidden.shape[1]
        positions = torch.arange(msg.start, msg.start + length).unsqueeze(0)  # [1, T]
        logits = entry.session.consume(Activation(msg.hidden, positions, None))  # [V]
        generator = step_generator(msg.seed, msg.start + length) if msg.temperature > 0 else None
        token = sample(logits, msg.temperature, msg.top_p, generator)
        return {"token": token, "compute_s": time.perf_counter() - t0}

    def consume(self, request_id: str, msg: EdgeMessage) -> dict[str, Any]:
        """Like :meth:`step`, but returns the logits of every position sent: ``{"logits": [T, V], "compute_s"}``
        or ``{"resend_from": n}``.

        The device path (:mod:`splitlab.serve.activation_step`) samples and scores the token itself.
        """
        self.sweep()
        entry = self.sessions.get(request_id)
        if entry is not None and (entry.session.k != msg.k or msg.start < entry.session.seen):
            self.release(request_id)
            entry = None
        if entry is None:
            if msg.start != 0:
                self.rebuilds += 1
                return {"resend_from": 0}
            entry = self._open(request_id, msg.k)
        elif msg.start > entry.session.seen:
            self.rebuilds += 1
            return {"resend_from": entry.session.seen}
        self.sessions.move_to_end(request_id)
        entry.last_used = time.monotonic()
        t0 = time.perf_counter()
        session = entry.session
        positions = torch.arange(msg.start, msg.start + msg.hidden.shape[1]).unsqueeze(0)  # [1, T]
        logits = session.model.tail(Activation(msg.hidden, positions, None), session.k, cache=session.cache)  # [1, T, V]
        session.seen += msg.hidden.shape[1]
        return {"logits": logits[0], "compute_s": time.perf_counter() - t0}

    def release(self, request_id: str) -> bool:
        """Free a request's cache; True if there was one."""
        return self.sessions.pop(request_id, None) is not None

    def sweep(self) -> None:
        """Drop caches idle longer than ``ttl_s`` (their UE is gone)."""
        now = time.monotonic()
        for rid in [rid for rid, e in self.sessions.items() if now - e.last_used > self.ttl_s]:
            del self.sessions[rid]

    def _open(self, request_id: str, k: int) -> _Entry:
        while len(self.sessions) >= self.max_sessions:
            self.sessions.popitem(last=False)  # least recently used; its UE can rebuild it
        entry = _Entry(EdgeSession(self.model, k))
        self.sessions[request_id] = entry
        return entry


@serve.deployment(name="EdgeHalf")
class EdgeHalf:
    """Serve deployment of the edge half (see the module docstring)."""

    def __init__(self, config: dict):
        torch.set_num_threads(1)
        self.config = ServeConfig.from_dict(config)
        self.model = SplitModel.load(self.config.model, part="edge", k=self.config.min_split)
        self.store = EdgeStore(self.model, self.config.max_streams, self.config.session_ttl_s)
        # One compute thread: the caches are touched by one thread only, and the event loop stays free.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge")
        self.metrics = edge_metrics()

    async def step(self, msg: EdgeMessage) -> dict[str, Any]:
        request_id = serve.get_multiplexed_model_id()
        if not request_id:
            raise ValueError("edge steps need the request id as multiplexed_model_id")
        reply = await asyncio.get_running_loop().run_in_executor(self.pool, self.store.step, request_id, msg)
        if "resend_from" in reply:
            self.metrics["rebuilds"].inc()
        self.metrics["sessions"].set(len(self.store.sessions))
        return reply

    async def step_activation(self, msg: EdgeMessage, top_logprobs: int = 0, full_logprobs: bool = False) -> dict:
        """The device path's step: see :func:`splitlab.serve.activation_step.activation_step`."""
        from splitlab.serve.activation_step import activation_step

        request_id = serve.get_multiplexed_model_id()
        if not request_id:
            raise ValueError("edge steps need the request id as multiplexed_model_id")
        reply = await asyncio.get_running_loop().run_in_executor(
            self.pool, activation_step, self.store, request_id, msg, top_logprobs, full_logprobs)
        self.metrics["sessions"].set(len(self.store.sessions))
        return reply

    async def release(self, request_id: str) -> bool:
        freed = await asyncio.get_running_loop().run_in_executor(self.pool, self.store.release, request_id)
        self.metrics["sessions"].set(len(self.store.sessions))
        return freed

    async def stats(self, request_id: str | None = None) -> dict[str, Any]:
        """This replica's view: caches held (``holds``: whether it has ``request_id``'s), rebuild requests."""
        return {"sessions": len(self.store.sessions), "rebuilds": self.store.rebuilds,
                "holds": request_id in self.store.sessions if request_id else None,
                "min_split": self.config.min_split, "num_layers": self.model.num_layers,
                "replica": serve.get_replica_context().replica_id.unique_id}

    def __del__(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
