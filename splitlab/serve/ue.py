"""The UE half: embeddings and layers 0..k-1, and the token loop of one request.

The UE drives generation, as a device would: it runs the head over the prompt, sends the hidden
state through the channel to the edge, receives one token id back, runs the head over that token,
and so on. Its state for a request (KV cache, every activation sent, the channel's random stream)
lives inside one streaming call, so UE replicas need no routing. It keeps what it sent, so that an
edge that lost the request's cache can be brought back with one resend (``resend_from``).

With a ``k_schedule`` (one split per block of ``resplit_every`` tokens, chosen by the policy from the
client's SNR reports) the split moves between blocks: a move up is recomputed on the UE from the hidden
states it sent (the edge drops those layers); a move down sends the hidden states after the new k of
every past token with the next one, through the channel like a resend, and the edge rebuilds only the
layers it takes over (:meth:`~splitlab.serve.edge.EdgeStore._resplit`).

:func:`split_generate` is the loop itself, free of Ray, so tests can drive it against an in-process
:class:`~splitlab.serve.edge.EdgeStore`; :class:`UEHalf` is the Serve deployment around it.
"""
from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import ray.exceptions as rex
import torch
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from splitlab.channel import link_cost, transmit
from splitlab.llm.batching import head_step
from splitlab.llm.generation import UESession
from splitlab.llm.split_model import SplitModel
from splitlab.serve.batching import StepBatcher
from splitlab.serve.config import ServeConfig, model_facts
from splitlab.serve.edge import EdgeMessage
from splitlab.serve.edge_client import BatchedEdge, EdgeUnavailable
from splitlab.serve.profiles import TOKEN_ID_BITS, LinkChoice, request_rng, resolve_link
from splitlab.serve.text import TextAssembler


@dataclass
class UERequest:
    """What the ingress hands the UE for one request (already validated and tokenised)."""

    request_id: str
    prompt_ids: list[int]
    k: int
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    channel_profile: str | None = None
    snr_db: float | None = None
    stream: bool = True  # False: one event at the end (no per-token messages to the ingress)
    logprobs: int | None = None  # per generated token: its log-probability and this many alternatives
    echo: bool = False  # score the prompt too: the edge returns its tokens' log-probabilities
    k_schedule: list[int] | None = None  # the split of each block of resplit_every tokens (k: the first)
    snr_trace: list[float] | None = None  # the link's SNR of each block (the channel follows it)
    resplit_every: int = 0

    def block(self, token: int) -> int:
        """Index into ``k_schedule``/``snr_trace`` of the block that generates token ``token``."""
        return min(token // self.resplit_every, len(self.k_schedule) - 1) if self.k_schedule else 0


@dataclass
class LinkStats:
    """What crossed the link for one request, and where the time went."""

    bytes_up: float = 0.0
    bytes_down: float = 0.0
    uplink_s: float = 0.0  # simulated air time UE -> edge
    downlink_s: float = 0.0  # simulated air time edge -> UE
    transmissions: int = 0  # UE -> edge sends, resends included
    vectors_up: int = 0  # hidden vectors sent, resends included
    resent_vectors: int = 0  # of which resends to rebuild an edge cache
    rebuilds: int = 0  # edge caches rebuilt from the UE's history
    edge_retries: int = 0  # sends retried because the edge was unreachable
    ue_compute_s: float = 0.0
    edge_wait_s: float = 0.0  # time waiting for the edge's answer (its compute + Serve hops)
    edge_compute_s: float = 0.0  # the edge's own compute time (edge_wait_s minus this: the hops)
    resplits: int = 0  # split moves within the stream
    moved_vectors: int = 0  # past hidden states sent up for the edge's moves down
    moved_bytes_up: float = 0.0  # their bytes (also in bytes_up)
    resplit_ue_layer_tokens: int = 0  # the UE's recompute for moves: layers x past tokens
    resplit_ue_s: float = 0.0  # the UE's time on moves (also in ue_compute_s)

    @property
    def link_latency_s(self) -> float:
        return self.uplink_s + self.downlink_s

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "link_latency_s": self.link_latency_s}


EdgeStep = Callable[[str, EdgeMessage], Awaitable[dict]]
Runner = Callable[..., Awaitable[Any]]
HeadStep = Callable[[UESession, int], Awaitable[Any]]


async def _run_inline(fn, *args):
    return fn(*args)


async def split_generate(model: SplitModel, req: UERequest, link: LinkChoice, edge_step: EdgeStep, *,
                         run: Runner = _run_inline, eos_ids: set[int] | None = None, wait_link: bool = False,
                         retry_s: float = 60.0, ue_step: HeadStep | None = None) -> AsyncIterator[dict[str, Any]]:
    """Generate across the split; yields ``{"text", "token_id"}`` per token, then one final event.

    The final event is ``{"finish_reason": "stop" | "length", "text": rest, "completion_tokens", "link"}``
    (with ``echo``: also ``"prompt_scores"``, the edge's ``{"logprob", "top"}`` of prompt tokens 1..T-1;
    with ``logprobs``: every token event also has ``"logprob"`` and ``"top"``). ``max_tokens = 0`` only
    scores the prompt. ``edge_step(request_id, msg)`` sends one transmission to the edge; it raises
    :class:`EdgeUnavailable` when the edge cannot be reached. ``run(fn, *args)`` runs model compute (a
    thread pool in a replica); ``ue_step(session, token)`` runs one decode step of the head (a
    batching scheduler in a replica; default: ``run(session.step, token)``).
    """
    eos_ids = eos_ids if eos_ids is not None else _eos_ids(model)
    session = UESession(model, req.k)
    rng = request_rng(req.seed)
    text = TextAssembler(model.tokenizer, req.stop, incremental=req.stream)
    stats = LinkStats()

    async def compute(fn, *args):
        t0 = time.perf_counter()
        out = await run(fn, *args)
        stats.ue_compute_s += time.perf_counter() - t0
        return out

    context = len(req.prompt_ids) + req.max_tokens
    extra_bits = 0 if req.logprobs is None else 64 * (1 + req.logprobs)  # logprob and top (id, logprob) pairs

    async def exchange(hidden: torch.Tensor, start: int, score_ids: list[int] | None = None,
                       snr_db: float = link.snr_db) -> dict:
        """Send positions start.. (hidden [1, T, H]); resend history while the edge asks; returns the reply."""
        deadline = time.monotonic() + retry_s
        backoff = 0.1
        while True:
            if hidden.shape[1] > 1:  # a prompt or a resend: the digital link's bit flips take milliseconds;
                # on a thread of its own, not queued behind other requests' prefills on the compute thread
                # (the edge would wait for every queued prompt's head before getting the first).
                received, cost = await asyncio.to_thread(transmit, hidden, link.config, rng, snr_db)
            else:  # one vector: well under a millisecond, less than a hop to the compute thread
                received, cost = transmit(hidden, link.config, rng, snr_db)
            stats.transmissions += 1
            stats.vectors_up += hidden.shape[1]
            stats.bytes_up += cost.payload_bytes
            stats.uplink_s += cost.tx_time_s
            if wait_link:
                await asyncio.sleep(cost.tx_time_s)
            msg = EdgeMessage(session.k, start, received, req.temperature, req.top_p, req.seed, req.logprobs,
                              score_ids, context)
            t0 = time.perf_counter()
            try:
                reply = await edge_step(req.request_id, msg)
            except EdgeUnavailable:
                if time.monotonic() > deadline:
                    raise
                stats.edge_retries += 1
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)
                continue
            finally:
                stats.edge_wait_s += time.perf_counter() - t0
            if "resend_from" in reply:
                start = int(reply["resend_from"])
                history = session.history()
                hidden = history.hidden[:, start:]  # [1, T', H]
                stats.rebuilds += 1
                stats.resent_vectors += hidden.shape[1]
                score_ids = None  # scores come with the first answer only
                continue
            stats.edge_compute_s += float(reply.get("compute_s", 0.0))
            bits = TOKEN_ID_BITS + extra_bits * (1 + len(reply.get("scores", ())))
            down = link.downlink_time_s(bits)
            stats.bytes_down += bits / 8
            stats.downlink_s += down
            if wait_link:
                await asyncio.sleep(down)
            return reply

    async def next_activation(token: int):
        if ue_step is None:
            return await compute(session.step, token)
        t0 = time.perf_counter()
        out = await ue_step(session, token)
        stats.ue_compute_s += time.perf_counter() - t0
        return out

    async def move(k_to: int) -> torch.Tensor | None:
        """Move the split to ``k_to``; returns the past's hidden states after ``k_to`` on a move down."""
        k_from, past = session.k, session.length
        if k_to == k_from:
            return None
        t0 = time.perf_counter()
        moved = await compute(session.move_by_recompute, k_to)
        sent = None if moved is None else moved.hidden  # [1, past, H] on a move down
        stats.resplits += 1
        stats.resplit_ue_s += time.perf_counter() - t0
        stats.resplit_ue_layer_tokens += past * (k_to - k_from if sent is None else k_to)
        if sent is not None:
            stats.moved_vectors += past
            stats.moved_bytes_up += link_cost(past, sent.shape[-1], link.config, snr_db).payload_bits / 8
        return sent

    def snr_of(token: int) -> float:
        return req.snr_trace[req.block(token)] if req.snr_trace else link.snr_db

    ids = torch.tensor([req.prompt_ids], dtype=torch.long)  # [1, T]
    act = await compute(session.prefill, ids)
    hidden, snr_db = act.hidden, snr_of(0)
    start, finish = 0, "length"
    scores = None
    score_ids = list(req.prompt_ids[1:]) if req.echo else None
    if req.max_tokens == 0:  # scoring only: one transmission of the prompt
        scores = (await exchange(hidden, 0, score_ids, snr_db)).get("scores")
    for i in range(req.max_tokens):
        reply = await exchange(hidden, start, score_ids if i == 0 else None, snr_db)
        if i == 0:
            scores = reply.get("scores")
        token = int(reply["token"])
        delta = text.add(token)
        event = {"text": delta, "token_id": token}
        if req.logprobs is not None:
            event.update(logprob=reply["logprob"], top=reply["top"])
        if token in eos_ids or text.stopped:
            finish = "stop"
            if delta or req.logprobs is not None:
                yield event
            break
        yield event
        if i + 1 < req.max_tokens:
            past = await move(req.k_schedule[req.block(i + 1)]) if req.k_schedule else None
            start, snr_db = (session.length if past is None else 0), snr_of(i + 1)
            act = await next_activation(token)
            hidden = act.hidden if past is None else torch.cat([past, act.hidden], dim=1)
    final = {"finish_reason": finish, "text": text.flush(), "completion_tokens": len(text.token_ids),
             "link": stats.as_dict()}
    if req.echo:
        final["prompt_scores"] = scores or []
    yield final


def _eos_ids(model: SplitModel) -> set[int]:
    ids = {model.tokenizer.eos_token_id, *_as_list(getattr(model.model.config, "eos_token_id", None))}
    return {int(i) for i in ids if i is not None}


def _as_list(value) -> list:
    return value if isinstance(value, (list, tuple)) else [value]


@serve.deployment(name="UEHalf")
class UEHalf:
    """Serve deployment of the UE half; ``generate`` streams one request's tokens.

    The head's decode steps of concurrent requests run as one batch per step (a
    :class:`~splitlab.serve.batching.StepBatcher` over :func:`~splitlab.llm.batching.head_step`), and
    their transmissions go to the edge as one call per step and edge replica
    (:class:`~splitlab.serve.edge_client.BatchedEdge`).
    """

    def __init__(self, config: dict, edge):
        torch.set_num_threads(1)
        self.config = ServeConfig.from_dict(config)
        _, max_split = self.config.split_range(model_facts(self.config.model).num_layers)
        self.model = SplitModel.load(self.config.model, part="ue", k=max_split)
        self.eos_ids = _eos_ids(self.model)
        self.edge = edge
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ue")
        self.batcher = StepBatcher(self._head_batch, self.pool, self.config.max_batch, self.config.batch_wait_s)
        self.link = BatchedEdge(self._send, self.config.max_batch, self.config.batch_wait_s)
        self.active: set[str] = set()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _head_batch(self, items: list[tuple[UESession, int]]) -> list:
        """One batched head step per split point among ``items`` (session, token)."""
        out: list = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (session, _) in enumerate(items):
            groups.setdefault(session.k, []).append(i)
        for rows in groups.values():
            try:
                acts = head_step(self.model, [items[i][0] for i in rows], [items[i][1] for i in rows])
            except Exception as err:  # noqa: BLE001 - that group's requests fail, the others go on
                acts = [err] * len(rows)
            for i, act in zip(rows, acts):
                out[i] = act
        return out


    async def _send(self, route: str, items: list[tuple[str, EdgeMessage]]) -> list:
        """One call to the edge replica that ``route`` names (see :mod:`splitlab.serve.edge_client`)."""
        try:
            return await self.edge.options(multiplexed_model_id=route).step_batch.remote(items)
        except (rex.RayActorError, rex.ActorUnavailableError, BackPressureError, DeploymentUnavailableError) as err:
            raise EdgeUnavailable(str(err)) from err

    async def generate(self, request: dict) -> AsyncIterator[dict]:
        """Stream one request: see :func:`split_generate` for the events (``stream=False``: the final one
        only, with the whole text and, with ``logprobs``, every token's ``{"token_id", "logprob", "top"}``)."""
        req = UERequest(**request)
        link = resolve_link(req.channel_profile, req.snr_db, self.config.default_profile)
        self.active.add(req.request_id)
        text, tokens = [], []

        async def head_step(session: UESession, token: int):
            return await self.batcher.submit(req.request_id, (session, token))

        try:
            async for event in split_generate(self.model, req, link, self.link.step, run=self._run,
                                              eos_ids=self.eos_ids, wait_link=self.config.wait_link,
                                              retry_s=self.config.edge_retry_s, ue_step=head_step):
                if req.stream:
                    yield event
                elif "finish_reason" in event:
                    yield {**event, "text": "".join(text) + event["text"], "tokens": tokens}
                else:
                    text.append(event["text"])
                    if req.logprobs is not None:
                        tokens.append({key: event[key] for key in ("token_id", "logprob", "top")})
        finally:
            # Also on cancellation (client gone): free the edge's cache now rather than at its TTL, and
            # stop the head batcher waiting for this request's next step (a later request would wait
            # batch_wait_s at each step for the ended one, for ACTIVE_WINDOW_S).
            self.active.discard(req.request_id)
            self.batcher.forget(req.request_id)
            self._release(req.request_id)

    def _release(self, request_id: str) -> None:
        """Ask the edge replica holding a request's cache to free it, detached from the request being handled.

        When a request is cancelled, Serve also cancels the calls it made that are still being routed;
        a release made in the request's own context would race that and sometimes lose. A fresh context
        gives the call its own request id.
        """
        release = self.edge.options(multiplexed_model_id=self.link.end(request_id)).release.remote
        contextvars.Context().run(release, request_id)

    async def stats(self) -> dict[str, Any]:
        return {"active": len(self.active), "max_split": self.model.part_k, "num_layers": self.model.num_layers,
                "batches": self.batcher.batches, "mean_batch": self.batcher.mean_batch,
                "edge_calls": self.link.calls, "edge_steps": self.link.steps,
                "edge_steps_per_call": self.link.steps_per_call}

    def __del__(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
