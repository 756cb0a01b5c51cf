"""The HTTP face of the service: an OpenAI-style API on FastAPI, served by a Serve ingress deployment.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream with ``"stream": true``
as server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /healthz``.

Per request the ingress checks, before any work: the Host header and the API key
(:class:`~splitlab.serve.admission.Gate`), the content type (415), the body size (413, from
Content-Length or counted while streaming in), then parses and validates the body (4xx naming the
field), tokenises on a worker thread (after a cheap length bound), takes a stream slot (429/503
with Retry-After when the queue is full), asks the policy for k unless the request fixes ``split``,
and streams the UE half's events back under a per-request deadline (504). When the client goes away
the UE calls are cancelled, and the UE frees the edge's caches.
"""
# No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation.
import asyncio
import contextvars
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from splitlab.serve.admission import Admission, Gate, Overloaded
from splitlab.serve.config import ServeConfig, model_facts
from splitlab.serve.metrics import ingress_metrics
from splitlab.serve.profiles import profile_summary, resolve_link
from splitlab.serve.protocol import (
    GenerationRequest,
    Limits,
    RequestError,
    check_content_type,
    check_context,
    parse_body,
    parse_chat,
    parse_completion,
    read_body,
)
from splitlab.serve.responses import Choice, Reply
from splitlab.serve.ue import UERequest

app = FastAPI(title="splitlab split inference",
              description="OpenAI-style completions, generated across a UE half and an edge half over a "
                          "simulated wireless link.")

API_KEY_ENV = "SPLITLAB_API_KEY"
"""Environment variable with the accepted API keys (comma-separated), read where the config names none."""


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:300] if text else type(err).__name__


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=getattr(err, "headers", None))


def _server_error(message: str, status: int = 503) -> JSONResponse:
    kind = "timeout" if status == 504 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)


@serve.deployment(name="SplitIngress")
@serve.ingress(app)
class SplitIngress:
    """FastAPI ingress; holds the tokenizer, calls the policy and the UE half."""

    def __init__(self, config: dict, ue, policy):
        from transformers import AutoTokenizer

        from splitlab.llm.loading import resolve_checkpoint

        self.config = ServeConfig.from_dict(config)
        self.facts = model_facts(self.config.model)
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint(self.config.model), local_files_only=True)
        low, high = self.config.split_range(self.facts.num_layers)
        context = min(self.config.max_context or self.facts.max_positions, self.facts.max_positions)
        streams = self.config.max_streams * self.config.ue_replicas
        self.limits = Limits(self.config.model, low, high, self.config.max_tokens_limit, context,
                             vocab_size=len(self.tokenizer), max_prompts=min(16, streams))
        keys = self.config.api_keys or tuple(k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip())
        self.gate = Gate(keys, self.config.allowed_hosts)
        self.admission = Admission(streams, self.config.max_queued_requests, self.config.queue_timeout_s)
        # Tokenising a long prompt takes seconds: never on the event loop that answers everyone else.
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tokenize")
        self.ue, self.policy = ue, policy
        self.metrics = ingress_metrics(self.facts.num_layers)
        self.started = int(time.time())

    # ------------------------------------------------------------------ small routes
    @app.get("/healthz")
    async def healthz(self, request: Request):
        try:
            self.gate.check_host(request.headers.get("host"))
        except RequestError as err:
            return _error(err)
        return {"status": "ok", "model": self.config.model}

    @app.get("/v1/models")
    async def models(self, request: Request):
        try:
            self._check_access(request)
        except RequestError as err:
            return _error(err)
        return {"object": "list", "data": [{
            "id": self.config.model, "object": "model", "created": self.started, "owned_by": "splitlab",
            "num_layers": self.facts.num_layers, "hidden_size": self.facts.hidden_size,
            "split_range": [self.limits.min_split, self.limits.max_split], "context": self.limits.context,
            "max_tokens": self.limits.max_tokens, "default_profile": self.config.default_profile,
            "channel_profiles": profile_summary(),
        }]}

    # ------------------------------------------------------------------ generation
    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._generate(request, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._generate(request, "/v1/chat/completions")

    def _check_access(self, request: Request) -> None:
        self.gate.check_host(request.headers.get("host"))
        self.gate.check_key(request.headers.get("authorization"))

    async def _parse(self, request: Request, route: str) -> tuple[GenerationRequest, list[list[int]]]:
        """Checks in order of cost; returns the request and each prompt's token ids."""
        self._check_access(request)
        check_content_type(request.headers.get("content-type"))
        raw = await read_body(request.stream(), request.headers.get("content-length"), self.config.max_body_bytes)
        body = parse_body(raw, self.config.max_body_bytes)
        chat = route.endswith("chat/completions")
        req = parse_chat(body, self.limits) if chat else parse_completion(body, self.limits)
        if req.echo and req.stream:
            raise RequestError("echo is supported without stream only", "echo")
        all_ids = await asyncio.get_running_loop().run_in_executor(self.pool, self._tokenize, req)
        for i, ids in enumerate(all_ids):
            param = "messages" if chat else ("prompt" if len(all_ids) == 1 else f"prompt[{i}]")
            check_context(len(ids), req, self.limits, param)
        return req, all_ids

    async def _generate(self, request: Request, route: str):
        started = time.perf_counter()
        deadline = time.monotonic() + self.config.request_timeout_s
        try:
            req, all_ids = await self._parse(request, route)
            await self.admission.acquire(len(all_ids))
        except RequestError as err:
            tag = "busy" if isinstance(err, Overloaded) else (err.param or "body")
            self.metrics["rejected"].inc(tags={"route": route, "param": tag})
            return _error(err)
        try:
            reply, streams, tags = await self._start(req, all_ids, route)
        except BaseException:
            await self.admission.release(len(all_ids))
            raise
        if req.stream:
            return StreamingResponse(self._stream(streams, reply, tags, started, deadline),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            await asyncio.wait_for(asyncio.gather(*(self._consume(events, choice)
                                                    for events, choice in zip(streams, reply.choices))),
                                   max(deadline - time.monotonic(), 0.0))
        except asyncio.TimeoutError:
            self.metrics["failed"].inc(tags={"route": route})
            return _server_error(f"request deadline of {self.config.request_timeout_s:g} s passed "
                                 f"(request_timeout_s)", 504)
        except Exception as err:  # noqa: BLE001 - any failure inside the service is a 503 for the client
            self.metrics["failed"].inc(tags={"route": route})
            return _server_error(f"generation failed: {_reason(err)}")
        finally:
            for events, choice in zip(streams, reply.choices):
                if not choice.done:
                    events.cancel()  # client gone, deadline or failure: stop the UE, which frees the edge cache
            await self.admission.release(len(all_ids))
        self._record(reply, tags, started)
        return reply.full()

    async def _start(self, req: GenerationRequest, all_ids: list[list[int]], route: str):
        """Pick k (once: every prompt of a request shares its link) and start one UE stream per prompt."""
        trace = req.snr_trace
        link = resolve_link(req.channel_profile, trace[0] if trace and req.snr_db is None else req.snr_db,
                            self.config.default_profile)
        schedule = None
        if req.split is not None:
            k, chosen_by, rule = req.split, "request", None
        else:
            prompt_tokens = max(map(len, all_ids))
            blocks = [(link.snr_db, 0)] if not trace else [(snr, b * req.resplit_every) for b, snr in enumerate(trace)]
            decisions = await asyncio.gather(*[self.policy.choose.remote(
                {"snr_db": snr, "profile": link.profile, "kind": link.config.kind, "fading": link.config.fading,
                 "prompt_tokens": prompt_tokens + done, "max_tokens": max(req.max_tokens - done, 1)})
                for snr, done in blocks])
            k, chosen_by, rule = decisions[0]["k"], "policy", decisions[0]["rule"]
            schedule = [d["k"] for d in decisions] if trace else None
        request_id = uuid.uuid4().hex
        split = {"k": k, "chosen_by": chosen_by, "rule": rule, "num_layers": self.facts.num_layers,
                 "channel_profile": link.profile, "channel_kind": link.config.kind, "snr_db": link.snr_db}
        if schedule is not None:
            split.update(schedule=schedule, snr_trace=trace, resplit_every=req.resplit_every)
        streams, choices = [], []
        for i, ids in enumerate(all_ids):
            seed = secrets.randbits(63) if req.seed is None else (req.seed + i) % (2**63)
            ue_request = UERequest(f"{request_id}-{i}", ids, k, req.max_tokens, req.temperature, req.top_p, seed,
                                   req.stop, link.profile, link.snr_db, stream=req.stream, logprobs=req.logprobs,
                                   echo=req.echo and req.logprobs is not None, k_schedule=schedule,
                                   snr_trace=trace if schedule else None, resplit_every=req.resplit_every)
            # Each prompt's call in a fresh context: calls made in the HTTP request's context share its Serve
            # request id, and the UE's edge steps of sibling prompts would then collide in Serve's router.
            call = self.ue.options(stream=True).generate.remote
            streams.append(contextvars.Context().run(call, asdict(ue_request)))
            prompt = req.prompts[i] if req.prompts else None
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(ids)
            choices.append(Choice(i, ids, text, split))
        reply = Reply(req, request_id, self.config.model, choices, self.tokenizer)
        return reply, streams, {"route": route, "profile": link.profile, "chosen_by": chosen_by}

    @staticmethod
    async def _consume(events, choice: Choice) -> None:
        async for event in events:
            choice.add(event)

    async def _stream(self, streams: list, reply: Reply, tags: dict, started: float,
                      deadline: float) -> AsyncIterator[str]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(events, choice: Choice) -> None:
            try:
                async for event in events:
                    await queue.put((choice, event))
            except Exception as err:  # noqa: BLE001 - reported in-band below
                await queue.put((choice, err))

        tasks = [asyncio.create_task(pump(events, choice)) for events, choice in zip(streams, reply.choices)]
        try:
            for chunk in reply.first_chunks():
                yield _sse(chunk)
            while not reply.done:
                try:
                    choice, event = await asyncio.wait_for(queue.get(), max(deadline - time.monotonic(), 0.0))
                except asyncio.TimeoutError:
                    self.metrics["failed"].inc(tags={"route": tags["route"]})
                    yield _sse({"error": {"message": f"request deadline of {self.config.request_timeout_s:g} s "
                                                     f"passed (request_timeout_s)", "type": "timeout",
                                          "param": None, "code": None}})
                    break
                if isinstance(event, Exception):
                    self.metrics["failed"].inc(tags={"route": tags["route"]})
                    yield _sse({"error": {"message": f"generation failed: {_reason(event)}", "type": "server_error",
                                          "param": None, "code": None}})
                    break
                delta, tokens = choice.add(event)
                if delta or tokens or choice.done:
                    yield _sse(reply.chunk(choice, delta, tokens))
            else:
                if reply.req.include_usage:
                    yield _sse(reply.usage_chunk())
                self._record(reply, tags, started)
            yield "data: [DONE]\n\n"
        finally:
            for task in tasks:
                task.cancel()
            for events, choice in zip(streams, reply.choices):
                if not choice.done:
                    events.cancel()  # client gone, deadline or failure: the UE frees the edge cache
            await self.admission.release(len(streams))

    def _tokenize(self, req: GenerationRequest) -> list[list[int]]:
        if req.kind == "completion":
            return [list(p) if isinstance(p, list) else list(self.tokenizer(p).input_ids) for p in req.prompts]
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self.config.model!r} has no chat template: use /v1/completions", "messages")
        enc = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)
        return [list(enc["input_ids"])]

    def _record(self, reply: Reply, tags: dict, started: float) -> None:
        self.metrics["requests"].inc(tags=tags)
        self.metrics["latency"].observe(time.perf_counter() - started, tags=tags)
        for choice in reply.choices:
            link = choice.link
            self.metrics["split"].observe(choice.split_info["k"], tags=tags)
            self.metrics["link_latency"].observe(link.get("link_latency_s", 0.0), tags=tags)
            # Ray's counters refuse an increment of 0 (a scoring request generates no tokens).
            for name, value in (("bytes_up", link.get("bytes_up")), ("bytes_down", link.get("bytes_down")),
                                ("tokens", choice.completion_tokens), ("rebuilds", link.get("rebuilds")),
                                ("resplits", link.get("resplits"))):
                if value:
                    self.metrics[name].inc(value, tags=tags)
