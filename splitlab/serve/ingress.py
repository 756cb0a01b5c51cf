"""The HTTP face of the service: an OpenAI-style API on FastAPI, served by a Serve ingress deployment.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream with ``"stream": true``
as server-sent events ending in ``data: [DONE]``), ``GET /v1/models``, ``GET /healthz``.

Per request the ingress validates and tokenises (4xx naming the field on bad input), asks the policy
for k unless the request fixes ``split``, and streams the UE half's events back. When the client goes
away the UE call is cancelled, and the UE frees the edge's cache for the request.
"""
# No `from __future__ import annotations` here: FastAPI must see the real `Request` annotation.
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from splitlab.serve.config import ServeConfig, model_facts
from splitlab.serve.metrics import ingress_metrics
from splitlab.serve.profiles import profile_summary, resolve_link
from splitlab.serve.protocol import (
    GenerationRequest,
    Limits,
    RequestError,
    check_context,
    parse_body,
    parse_chat,
    parse_completion,
)
from splitlab.serve.ue import UERequest

app = FastAPI(title="splitlab split inference",
              description="OpenAI-style completions, generated across a UE half and an edge half over a "
                          "simulated wireless link.")


class _Reply:
    """Builds the OpenAI-shaped response (whole or as chunks) from the UE's events."""

    def __init__(self, req: GenerationRequest, request_id: str, model: str, prompt_tokens: int, split: dict):
        self.req, self.model, self.prompt_tokens, self.split = req, model, prompt_tokens, split
        self.chat = req.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.text = ""
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.link: dict[str, float] = {}
        self.done = False

    def add(self, event: dict) -> str:
        """Take one UE event; returns its new text."""
        self.text += event["text"]
        if "finish_reason" in event:
            self.finish_reason = event["finish_reason"]
            self.completion_tokens = event["completion_tokens"]
            self.link = event["link"]
            self.done = True
        return event["text"]

    def _usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def _split(self) -> dict:
        link = self.link
        return {**self.split, "bytes_up": link.get("bytes_up"), "bytes_down": link.get("bytes_down"),
                "link_latency_s": link.get("link_latency_s"), "uplink_s": link.get("uplink_s"),
                "downlink_s": link.get("downlink_s"), "vectors_up": link.get("vectors_up"),
                "edge_rebuilds": link.get("rebuilds"), "resent_vectors": link.get("resent_vectors"),
                "edge_retries": link.get("edge_retries"), "ue_compute_s": link.get("ue_compute_s"),
                "edge_wait_s": link.get("edge_wait_s"), "edge_compute_s": link.get("edge_compute_s")}

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def full(self) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text},
                      "finish_reason": self.finish_reason}
        else:
            choice = {"index": 0, "text": self.text, "logprobs": None, "finish_reason": self.finish_reason}
        return {**self._head(False), "choices": [choice], "usage": self._usage(), "split": self._split()}

    def first_chunk(self) -> dict | None:
        if not self.chat:
            return None
        return {**self._head(True), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]}

    def chunk(self, delta: str) -> dict:
        finish = self.finish_reason if self.done else None
        if self.chat:
            choice = {"index": 0, "delta": {"content": delta} if delta else {}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        out = {**self._head(True), "choices": [choice]}
        if self.done:
            out["usage"], out["split"] = self._usage(), self._split()
        return out


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[-1][:300] if text else type(err).__name__


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
        self.limits = Limits(self.config.model, low, high, self.config.max_tokens_limit, context)
        self.ue, self.policy = ue, policy
        self.metrics = ingress_metrics(self.facts.num_layers)
        self.started = int(time.time())

    # ------------------------------------------------------------------ small routes
    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.config.model}

    @app.get("/v1/models")
    async def models(self) -> dict:
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

    async def _generate(self, request: Request, route: str):
        started = time.perf_counter()
        try:
            body = parse_body(await request.body())
            req = parse_chat(body, self.limits) if route.endswith("chat/completions") else parse_completion(body, self.limits)
            prompt_ids = self._tokenize(req)
            check_context(len(prompt_ids), req, self.limits)
        except RequestError as err:
            self.metrics["rejected"].inc(tags={"route": route, "param": err.param or "body"})
            return JSONResponse(err.body(), status_code=err.status)

        link = resolve_link(req.channel_profile, req.snr_db, self.config.default_profile)
        if req.split is not None:
            k, chosen_by, rule = req.split, "request", None
        else:
            features = {"snr_db": link.snr_db, "profile": link.profile, "kind": link.config.kind,
                        "fading": link.config.fading, "prompt_tokens": len(prompt_ids), "max_tokens": req.max_tokens}
            decision = await self.policy.choose.remote(features)
            k, chosen_by, rule = decision["k"], "policy", decision["rule"]
        request_id = uuid.uuid4().hex
        seed = secrets.randbits(63) if req.seed is None else req.seed % (2**63)
        ue_request = UERequest(request_id, prompt_ids, k, req.max_tokens, req.temperature, req.top_p, seed,
                               req.stop, link.profile, link.snr_db, stream=req.stream)
        events = self.ue.options(stream=True).generate.remote(asdict(ue_request))
        reply = _Reply(req, request_id, self.config.model, len(prompt_ids), {
            "k": k, "chosen_by": chosen_by, "rule": rule, "num_layers": self.facts.num_layers,
            "channel_profile": link.profile, "channel_kind": link.config.kind, "snr_db": link.snr_db})
        tags = {"route": route, "profile": link.profile, "chosen_by": chosen_by}
        if req.stream:
            return StreamingResponse(self._stream(events, reply, tags, started), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            async for event in events:
                reply.add(event)
        except Exception as err:  # noqa: BLE001 - any failure inside the service is a 503 for the client
            self.metrics["failed"].inc(tags={"route": route})
            return JSONResponse({"error": {"message": f"generation failed: {_reason(err)}", "type": "server_error",
                                           "param": None, "code": None}}, status_code=503)
        finally:
            if not reply.done:
                events.cancel()  # client gone or failure: stop the UE, which frees the edge cache
        self._record(reply, tags, started)
        return reply.full()

    async def _stream(self, events, reply: _Reply, tags: dict, started: float) -> AsyncIterator[str]:
        try:
            first = reply.first_chunk()
            if first is not None:
                yield _sse(first)
            async for event in events:
                delta = reply.add(event)
                if delta or reply.done:
                    yield _sse(reply.chunk(delta))
            self._record(reply, tags, started)
        except Exception as err:  # noqa: BLE001 - the status line is sent; report the failure in-band
            self.metrics["failed"].inc(tags={"route": tags["route"]})
            yield _sse({"error": {"message": f"generation failed: {_reason(err)}", "type": "server_error",
                                  "param": None, "code": None}})
        finally:
            if not reply.done:
                events.cancel()
        yield "data: [DONE]\n\n"

    def _tokenize(self, req: GenerationRequest) -> list[int]:
        if req.kind == "completion":
            return list(self.tokenizer(req.prompt).input_ids)
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError(f"model {self.config.model!r} has no chat template: use /v1/completions", "messages")
        enc = self.tokenizer.apply_chat_template(req.messages, add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)
        return list(enc["input_ids"])

    def _record(self, reply: _Reply, tags: dict, started: float) -> None:
        link = reply.link
        self.metrics["requests"].inc(tags=tags)
        self.metrics["split"].observe(reply.split["k"], tags=tags)
        self.metrics["bytes_up"].inc(link.get("bytes_up", 0.0), tags=tags)
        self.metrics["bytes_down"].inc(link.get("bytes_down", 0.0), tags=tags)
        self.metrics["link_latency"].observe(link.get("link_latency_s", 0.0), tags=tags)
        self.metrics["latency"].observe(time.perf_counter() - started, tags=tags)
        self.metrics["tokens"].inc(reply.completion_tokens, tags=tags)
        if link.get("rebuilds"):
            self.metrics["rebuilds"].inc(link["rebuilds"], tags=tags)
