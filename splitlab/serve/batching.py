"""An in-replica scheduler: the concurrent requests' next steps run as one batch on the compute thread.

Each request's token loop awaits :meth:`StepBatcher.submit` with its own step; the batcher's loop
takes every step that is pending when the compute thread is free (waiting a moment for the steps of
requests that were active a moment ago, so that streams in lock-step land in one batch) and runs
them with ``run_batch(items) -> results`` on one thread. Requests join and leave between batches.

The same scheduler batches outgoing calls: with no executor, ``run_batch`` is a coroutine function
awaited on the event loop (the UE's one edge call per step, :mod:`splitlab.serve.edge_client`).
One batch runs at a time; steps that arrive meanwhile form the next batch.

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


class StepBatcher:
    """Collects steps from concurrent coroutines and runs them in batches (see the module docstring).

    ``run_batch(items)`` returns one result per item, in order; a result that is an ``Exception``
    is raised in that item's caller only. It runs on ``executor``, or, when ``executor`` is None, it is a
    coroutine function awaited on the event loop.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Any], executor: Executor | None, max_batch: int = 64,
                 wait_s: float = 0.002):
        if executor is None and not inspect.iscoroutinefunction(run_batch):
            raise TypeError(f"without an executor run_batch must be a coroutine function, got {run_batch!r}")
        self.run_batch, self.executor, self.max_batch, self.wait_s = run_batch, executor, max_batch, wait_s
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.last_seen: dict[Hashable, float] = {}
        self.arrived: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.batched_items = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        """Queue one step of request ``key``; returns its result when its batch has run."""
        loop = self._started()
        future = loop.create_future()
        self.pending.append((item, future))
        self.last_seen[key] = time.monotonic()
        self.arrived.set()
        return await future

    async def submit_many(self, steps: Sequence[tuple[Hashable, Any]]) -> list[Any]:
        """Queue the steps ``(key, item)`` of several requests at once (one incoming batch call); returns one
        result per step, in order, an ``Exception`` in place of a step that failed (its batch-mates go on)."""
        loop = self._started()
        futures = []
        now = time.monotonic()
        for key, item in steps:
            futures.append(loop.create_future())
            self.pending.append((item, futures[-1]))
            self.last_seen[key] = now
        self.arrived.set()
        return list(await asyncio.gather(*futures, return_exceptions=True))

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

    @property
    def mean_batch(self) -> float:
        return self.batched_items / self.batches if self.batches else 0.0

    def _expected(self) -> int:
        cutoff = time.monotonic() - ACTIVE_WINDOW_S
        for key in [k for k, t in self.last_seen.items() if t < cutoff]:
            del self.last_seen[key]
        return min(len(self.last_seen), self.max_batch)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.arrived.wait()
            self.arrived.clear()
            deadline = loop.time() + self.wait_s
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
