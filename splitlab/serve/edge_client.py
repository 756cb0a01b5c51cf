"""The UE's link to the edge: the steps of all its concurrent requests go out as one call per batch step.

Each request's token loop (:func:`~splitlab.serve.ue.split_generate`) sends its transmissions through
:meth:`BatchedEdge.step`; a :class:`~splitlab.serve.batching.StepBatcher` collects the steps pending
at the same moment and :meth:`BatchedEdge._send_batch` sends them with one ``send(route, items)`` per
edge replica concerned (``EdgeHalf.step_batch`` in a replica), where they join the edge's own batch.
Before, each request made its own Serve handle call per token, and the per-call cost (routing,
serialisation, a hop each way) grew with the number of requests and ate what batching won.

Routing: a request's first call (its prompt) is routed by its request id (rendezvous hashing, see
:mod:`splitlab.serve.routing`); every reply names the replica that answered, and the request's later
steps are pinned to that replica, so the steps of requests on one replica share a call. A replica that
has gone takes no pinned calls: the router sends them anywhere, the edge there answers ``resend_from``
and the request rebuilds its cache and is pinned anew.

Per-request semantics are kept: a reply that is an exception fails only its own request; a call that
cannot reach the edge fails (with :class:`EdgeUnavailable`, which the token loop retries) only the
requests it carried, which lose their pin; a request that ends (finished, cancelled, past its
deadline) is forgotten at once (:meth:`BatchedEdge.end`) and its cache is released on its replica.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from splitlab.serve.batching import StepBatcher
from splitlab.serve.edge import EdgeMessage
from splitlab.serve.routing import replica_route

Send = Callable[[str, list[tuple[str, EdgeMessage]]], Awaitable[list[Any]]]
"""``send(route, [(request_id, msg), ...]) -> [reply or Exception, ...]``: one call to the edge."""


class EdgeUnavailable(RuntimeError):
    """The edge could not be reached (replica died, restarting, overloaded); the step may be retried."""


class BatchedEdge:
    """One edge call per batch step for a UE replica's requests (see the module docstring)."""

    def __init__(self, send: Send, max_batch: int = 64, wait_s: float = 0.002):
        self.send = send
        self.pins: dict[str, str] = {}  # request id -> the edge replica holding its cache
        self.open: set[str] = set()  # requests that have not ended (a late reply must not pin an ended one)
        self.batcher = StepBatcher(self._send_batch, None, max_batch, wait_s, patient=True)
        self.calls = 0  # calls made to the edge
        self.steps = 0  # steps they carried

    async def step(self, request_id: str, msg: EdgeMessage) -> dict:
        """One transmission of ``request_id``; its reply, or its own error raised."""
        self.open.add(request_id)
        return await self.batcher.submit(request_id, (request_id, msg))

    def route(self, request_id: str) -> str:
        """The routing key of the request's next call: its replica's when known, else its own id."""
        replica = self.pins.get(request_id)
        return replica_route(replica) if replica else request_id

    def end(self, request_id: str) -> str:
        """The request is over: stop waiting for its steps; returns the route to release its cache by."""
        route = self.route(request_id)
        self.batcher.forget(request_id)
        self.pins.pop(request_id, None)
        self.open.discard(request_id)
        return route

    async def _send_batch(self, items: list[tuple[str, EdgeMessage]]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        for i, (request_id, _) in enumerate(items):
            groups.setdefault(self.route(request_id), []).append(i)
        results: list[Any] = [None] * len(items)

        async def call(route: str, rows: list[int]) -> None:
            self.calls += 1
            self.steps += len(rows)
            try:
                replies = await self.send(route, [items[i] for i in rows])
            except Exception as err:  # noqa: BLE001 - the call failed: only the requests it carried hear it
                replies = [err] * len(rows)
            if len(replies) != len(rows):
                replies = [RuntimeError(f"the edge answered {len(replies)} replies to {len(rows)} steps")] * len(rows)
            for i, reply in zip(rows, replies):
                request_id = items[i][0]
                if isinstance(reply, dict) and reply.get("replica") and request_id in self.open:
                    self.pins[request_id] = reply["replica"]
                elif isinstance(reply, EdgeUnavailable):
                    self.pins.pop(request_id, None)  # route the retry by request id
                results[i] = reply

        await asyncio.gather(*(call(route, rows) for route, rows in groups.items()))
        return results

    @property
    def steps_per_call(self) -> float:
        return self.steps / self.calls if self.calls else 0.0
