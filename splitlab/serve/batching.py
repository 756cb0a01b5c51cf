"""An in-replica scheduler: the concurrent requests' next steps run as one batch on the compute thread.

Each request's token loop awaits :meth:`StepBatcher.submit` with its own step; the batcher's loop
takes every step that is pending when the compute thread is free (waiting a moment for the steps of
requests that were active a moment ago, so that streams in lock-step land in one batch) and runs
them with ``run_batch(items) -> results`` on one thread. Requests join and leave between batches.

The same scheduler batches outgoing calls: with no executor, ``run_batch`` is a coroutine function
awaited on the event loop (the UE's one edge call per step, :mod:`splitlab.serve.edge_client`).
One batch runs at a time; steps that arrive meanwhile form the next batch. Such a batcher is
``patient``: it waits longer for requests whose previous step just came back (up to 1.5x the measured
time a request takes to come back, at most ``MAX_GATHER_S``). Without that, the UE's requests settle
into two alternating halves (half decoding on the UE while the other half is at the edge) and every
batch is half as big; with it they stay in one lock-step batch (measured: head batches of 4 with 8
clients before, 8 after).

Why not Ray Serve's ``@serve.batch``: it splits a batch by multiplexed model id (our request ids, which
route a request to the edge replica holding its cache, so it would never batch across requests), it
waits its full timeout unless the batch is full (rather than for the requests known to be decoding),
and it has no way to fail one item of a batch alone.
"""
from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import Any

ACTIVE_WINDOW_S = 0.5
"""A request that submitted a step this recently is expected to submit the next one soon."""
MAX_GATHER_S = 0.25
"""Longest a patient batcher holds a batch back for requests still on their way."""


class StepBatcher:
    """Collects steps from concurrent coroutines and runs them in batches (see the module docstring).

    ``run_batch(items)`` returns one result per item, in order; a result that is an ``Exception``
    is raised in that item's caller only. It runs on ``executor``, or, when ``executor`` is None, it is a
    coroutine function awaited on the event loop.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Any], executor: Executor | None, max_batch: int = 64,
                 wait_s: float = 0.002, patient: bool = False):
        if executor is None and not inspect.iscoroutinefunction(run_batch):
            raise TypeError(f"without an executor run_batch must be a coroutine function, got {run_batch!r}")
        self.run_batch, self.executor, self.max_batch, self.wait_s = run_batch, executor, max_batch, wait_s
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.last_seen: dict[Hashable, float] = {}
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.batched_items = 0
        self.patient = patient
        self.delivered: dict[Hashable, float] = {}  # keys whose result went back, and when
        self.turnaround_s: float | None = None  # mean time from a result to the same key's next step

    async def submit(self, key: Hashable, item: Any) -> Any:
        """Queue one step of request ``key``; returns its result when its batch has run."""
        loop = self._started()
        future = loop.create_future()
        self.pending.append((item, future))
        self._seen(key)
        self.arrived.set()
        try:
            return await future
        finally:
            self._delivered(key)

    async def submit_many(self, steps: Sequence[tuple[Hashable, Any]]) -> list[Any]:
        """Queue the steps ``(key, item)`` of several requests at once (one incoming batch call); returns one
        result per step, in order, an ``Exception`` in place of a step that failed (its batch-mates go on)."""
        loop = self._started()
        futures = []
        for key, item in steps:
            futures.append(loop.create_future())
            self.pending.append((item, futures[-1]))
            self._seen(key)
        self.arrived.set()
        try:
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            for key, _ in steps:
                self._delivered(key)

    def _seen(self, key: Hashable) -> None:
        now = time.monotonic()
        self.last_seen[key] = now
        back = self.delivered.pop(key, None)
        if back is not None:
            gap = now - back
            self.turnaround_s = gap if self.turnaround_s is None else 0.8 * self.turnaround_s + 0.2 * gap

    def _delivered(self, key: Hashable) -> None:
        if key in self.last_seen:  # not forgotten meanwhile
            self.last_seen[key] = self.delivered[key] = time.monotonic()

    def _started(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done():
            self.arrived = asyncio.Event()
            # A context of its own: the loop outlives the request whose step started it, and calls it
            # makes (the UE's edge calls) must not pass as that request's children in Serve (they hung).
            self.task = loop.create_task(self._loop(), context=contextvars.Context())
        return loop

    def forget(self, key: Hashable) -> None:
        """Request ``key`` has ended: do not wait for its next step."""
        self.last_seen.pop(key, None)
        self.delivered.pop(key, None)

    @property
    def mean_batch(self) -> float:
        return self.batched_items / self.batches if self.batches else 0.0

    def _expected(self) -> int:
        window = ACTIVE_WINDOW_S if self.turnaround_s is None else max(ACTIVE_WINDOW_S, 2 * self.turnaround_s)
        cutoff = time.monotonic() - window
        for key in [k for k, t in self.last_seen.items() if t < cutoff]:
            del self.last_seen[key]
            self.delivered.pop(key, None)
        return min(len(self.last_seen), self.max_batch)

    def _gather_s(self) -> float:
        """How long to hold a batch back for the expected steps not yet pending."""
        if not self.patient or self.turnaround_s is None:
            return self.wait_s
        return max(self.wait_s, min(MAX_GATHER_S, 1.5 * self.turnaround_s))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            deadline = loop.time() + self._gather_s()
            while len(self.pending) < self._expected() and loop.time() < deadline:
                try:  # gather the lock-step streams' steps; a lone request waits at most wait_s
                    await asyncio.wait_for(self.arrived.wait(), max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    break
                self.arrived.clear()
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            if self.pending:
                self.arrived.set()
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # callers that were cancelled
            if not batch:
                continue
            self.batches += 1
            self.batched_items += len(batch)
            try:
                items = [item for item, _ in batch]
                if self.executor is None:
                    results = await self.run_batch(items)
                else:
                    results = await loop.run_in_executor(self.executor, self.run_batch, items)
            except Exception as err:  # noqa: BLE001 - the batch failed as a whole: every caller hears it
                results = [err] * len(batch)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
