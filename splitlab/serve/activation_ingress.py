"""The edge's face for devices that run their own half: activations in, token ids out (never text).

Routes (binary frames of :mod:`splitlab.serve.wire`; errors in OpenAI's JSON error shape):

- ``GET  /v1/activations/info``: the model's shape, the split range, the accepted payload formats and
  the wire version, so a client can check its own half against the edge.
- ``POST /v1/activations/split``: the edge's advertised split policy: ``{"snr_db", "prompt_tokens",
  "max_tokens"}`` -> ``{"k", "rule"}``.
- ``WS   /v1/activations/ws``: one stream per generation. The client sends one JSON text message of
  sampling settings (``temperature``, ``top_p``, ``seed``, ``top_logprobs``, ``full_logprobs``), then
  one activation frame per transmission; the edge answers each with one token frame. A refusal sends
  the error body as a text message and closes with code ``4000 + status`` (4400, 4401, 4408, 4413).
- ``POST /v1/activations``: the same step over plain HTTP: the body is one frame, the stream is named
  by the ``X-Splitlab-Stream`` header (32 hex digits the client draws), settings in the query string;
  ``DELETE /v1/activations/{stream}`` frees its cache.

Limits come before work: the key, then ``Content-Length`` against the largest valid frame, then the
20-byte header, then the payload's values. A refused frame, a stalled stream (no frame within
``stall_timeout_s``) or a disconnect frees the stream's edge cache at once.
"""
# No `from __future__ import annotations` here: FastAPI must see the real `Request`/`WebSocket` annotations.
import asyncio
import contextvars
import hashlib
import json
import logging
import re
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from splitlab.channel.quantisation import QUANT_FORMATS
from splitlab.config import ConfigModel
from splitlab.serve.admission import check_api_key
from splitlab.serve.config import ServeConfig, model_facts
from splitlab.serve.edge import EdgeMessage
from splitlab.serve.protocol import RequestError
from splitlab.serve.wire import (MAX_TOP_LOGPROBS, WIRE_VERSION, WireLimits, decode_frame, encode_continue,
                                 encode_resend, encode_token)

logger = logging.getLogger("ray.serve")
app = FastAPI(title="splitlab edge: activations in, tokens out",
              description="The edge half of split inference for devices that run their own first layers.")
STREAM_ID = re.compile(r"^[0-9a-f]{32}$")


class DeviceRouteConfig(ConfigModel):
    """Settings of the device path's routes (the model and split range come from :class:`ServeConfig`)."""

    api_keys: list[str] = Field(default_factory=list)
    """Keys accepted as ``Authorization: Bearer <key>``; empty: no key needed (loopback use only)."""
    stall_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    """A stream whose next frame (or an HTTP body) takes longer than this is refused with 408 and its cache freed."""
    formats: list[Literal["fp32", "fp16", "bf16", "int8"]] = Field(default_factory=lambda: list(QUANT_FORMATS))
    """Payload formats the edge accepts."""
    max_streams: int = Field(default=64, ge=1, le=100_000)
    """Open WebSocket streams per ingress replica; beyond it a new stream is closed with 4503."""


class SamplingSettings(BaseModel):
    """Per-stream sampling settings (first WebSocket message, or the HTTP query string): request data, whose
    pydantic errors become a 400 naming the field, not a config."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    """0: greedy."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    seed: int = Field(default=0, ge=0, lt=2**63)
    """Seed of the sampling stream (with the position, so a rebuilt stream samples alike)."""
    top_logprobs: int = Field(default=0, ge=0, le=MAX_TOP_LOGPROBS)
    """Alternatives returned per token."""
    full_logprobs: bool = False
    """Also return the whole next-token log-distribution (for perplexity through the path; large)."""


def _settings(data: Any) -> SamplingSettings:
    if not isinstance(data, dict):
        raise RequestError(f"stream settings must be a JSON object, got {type(data).__name__}")
    try:
        return SamplingSettings(**data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise RequestError(f"{param}: {first['msg']}", param) from None


def _error(err: RequestError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def _ws_refuse(websocket: WebSocket, err: RequestError) -> None:
    try:
        await websocket.send_text(json.dumps(err.body()))
        await websocket.close(code=4000 + err.status)
    except Exception:  # noqa: BLE001 - the client may be gone already
        pass


async def _small_json(request: Request, limit: int = 4096) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"body is {length} bytes; the limit is {limit}", status=413)
    raw = await request.body()
    if len(raw) > limit:
        raise RequestError(f"body is {len(raw)} bytes; the limit is {limit}", status=413)
    try:
        body = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("body must be a JSON object")
    return body


def _split_features(body: dict) -> dict:
    """The policy's features from what the device reports about its link (no text)."""
    from splitlab.serve.profiles import SNR_DB_RANGE

    unknown = sorted(set(body) - {"snr_db", "prompt_tokens", "max_tokens"})
    if unknown:
        raise RequestError(f"unknown fields {unknown}; accepted: snr_db, prompt_tokens, max_tokens", unknown[0])
    snr = body.get("snr_db", 30.0)
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not SNR_DB_RANGE[0] <= snr <= SNR_DB_RANGE[1]:
        raise RequestError(f"snr_db must be a number in [{SNR_DB_RANGE[0]:g}, {SNR_DB_RANGE[1]:g}], got {snr!r}",
                           "snr_db")
    counts = {}
    for name in ("prompt_tokens", "max_tokens"):
        value = body.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**7:
            raise RequestError(f"{name} must be an integer >= 0, got {value!r}", name)
        counts[name] = value
    return {"snr_db": float(snr), "profile": "device", "kind": "device", "fading": "none", **counts}


@serve.deployment(name="ActivationIngress")
@serve.ingress(app)
class ActivationIngress:
    """Checks and decodes frames, relays them to the edge half by stream id, encodes the tokens."""

    def __init__(self, config: dict, route: dict, edge, policy):
        self.config = ServeConfig.from_dict(config)
        self.route = DeviceRouteConfig(**route)
        self.facts = model_facts(self.config.model)
        low, high = self.config.split_range(self.facts.num_layers)
        context = min(self.config.max_context or self.facts.max_positions, self.facts.max_positions)
        self.limits = WireLimits(self.facts.hidden_size, low, high, context, tuple(self.route.formats))
        self.edge, self.policy = edge, policy
        self.open_streams = 0

    # ------------------------------------------------------------------ discovery
    @app.get("/v1/activations/info")
    async def info(self, request: Request):
        try:
            check_api_key(request.headers.get("authorization"), self.route.api_keys)
        except RequestError as err:
            return _error(err)
        return {"model": self.config.model, "num_layers": self.facts.num_layers, "hidden_size": self.facts.hidden_size,
                "split_range": [self.limits.min_split, self.limits.max_split], "formats": list(self.limits.formats),
                "max_tokens": self.limits.max_tokens, "wire_version": WIRE_VERSION,
                "max_frame_bytes": self.limits.max_frame_bytes(), "stall_timeout_s": self.route.stall_timeout_s}

    @app.post("/v1/activations/split")
    async def split(self, request: Request):
        try:
            check_api_key(request.headers.get("authorization"), self.route.api_keys)
            body = await _small_json(request)
            features = _split_features(body)
        except RequestError as err:
            return _error(err)
        return await self.policy.choose.remote(features)

    # ------------------------------------------------------------------ HTTP transport
    @app.post("/v1/activations")
    async def step_http(self, request: Request):
        stream_id = request.headers.get("x-splitlab-stream", "")
        request_id = None
        try:
            check_api_key(request.headers.get("authorization"), self.route.api_keys)
            if not STREAM_ID.match(stream_id):
                raise RequestError("X-Splitlab-Stream must be 32 lowercase hex digits the client draws per stream",
                                   "X-Splitlab-Stream")
            request_id = self._request_id(request.headers.get("authorization"), stream_id)
            settings = _settings(dict(request.query_params))
            raw = await self._read_body(request)
            frame = decode_frame(raw, self.limits)
        except RequestError as err:
            if request_id is not None:
                self._release(request_id)
            return _error(err)
        reply = await self._step(request_id, frame, settings)
        if isinstance(reply, JSONResponse):
            return reply
        return Response(reply, media_type="application/octet-stream")

    @app.delete("/v1/activations/{stream_id}")
    async def release_http(self, stream_id: str, request: Request):
        try:
            check_api_key(request.headers.get("authorization"), self.route.api_keys)
            if not STREAM_ID.match(stream_id):
                raise RequestError("stream id must be 32 lowercase hex digits", "stream_id")
        except RequestError as err:
            return _error(err)
        request_id = self._request_id(request.headers.get("authorization"), stream_id)
        freed = await self.edge.options(multiplexed_model_id=request_id).release.remote(request_id)
        return {"released": bool(freed)}

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_frame_bytes()
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            raise RequestError("Content-Length is required (one frame per request)", "Content-Length", status=411)
        if int(length) > limit:
            raise RequestError(f"frame is {length} bytes; the largest valid frame here is {limit}", "frame",
                               status=413)
        chunks, size = [], 0
        stream = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), self.route.stall_timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise RequestError(f"the frame stalled: no bytes for {self.route.stall_timeout_s:g} s", "frame",
                                   status=408) from None
            size += len(chunk)
            if size > limit:
                raise RequestError(f"frame exceeds the largest valid frame of {limit} bytes", "frame", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------------ WebSocket transport
    @app.websocket("/v1/activations/ws")
    async def stream_ws(self, websocket: WebSocket):
        await websocket.accept()
        if self.open_streams >= self.route.max_streams:
            await _ws_refuse(websocket, RequestError(f"the edge holds {self.route.max_streams} streams; retry later",
                                                     status=503))
            return
        self.open_streams += 1
        request_id = uuid.uuid4().hex
        started, frames, bytes_up, bytes_down, fmt, k = time.perf_counter(), 0, 0, 0, None, None
        reason = "closed by client"
        try:
            check_api_key(websocket.headers.get("authorization"), self.route.api_keys)
            first = await self._receive(websocket)
            if first is None:
                return
            if first.get("text") is None:
                raise RequestError("the first message must be JSON text with the stream's sampling settings",
                                   "settings")
            try:
                settings = _settings(json.loads(first["text"]))
            except json.JSONDecodeError as err:
                raise RequestError(f"settings are not valid JSON: {err.msg}", "settings") from None
            while True:
                message = await self._receive(websocket)
                if message is None:
                    break
                raw = message.get("bytes")
                if raw is None:
                    raise RequestError("after the settings every message must be a binary activation frame", "frame")
                if len(raw) > self.limits.max_frame_bytes():
                    raise RequestError(f"frame is {len(raw)} bytes; the largest valid frame here is "
                                       f"{self.limits.max_frame_bytes()}", "frame", status=413)
                frame = decode_frame(raw, self.limits)
                fmt, k = frame.header.format, frame.header.k
                reply = await self._step(request_id, frame, settings)
                if isinstance(reply, JSONResponse):
                    reason = "edge failure"
                    await websocket.send_text(reply.body.decode())
                    await websocket.close(code=4503)
                    break
                await websocket.send_bytes(reply)
                frames, bytes_up, bytes_down = frames + 1, bytes_up + len(raw), bytes_down + len(reply)
        except RequestError as err:
            reason = f"refused {err.status} ({err.param})"
            await _ws_refuse(websocket, err)
        except WebSocketDisconnect:
            pass
        finally:
            self.open_streams -= 1
            self._release(request_id)
            # The request log: sizes and settings only; the edge never holds text to log.
            logger.info("activation stream %s: %s; k=%s format=%s frames=%d bytes_up=%d bytes_down=%d %.3fs",
                        request_id, reason, k, fmt, frames, bytes_up, bytes_down, time.perf_counter() - started)

    async def _receive(self, websocket: WebSocket) -> dict | None:
        """The next message, None on disconnect; a stall is a 408."""
        try:
            message = await asyncio.wait_for(websocket.receive(), self.route.stall_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"the stream stalled: no frame for {self.route.stall_timeout_s:g} s", "frame",
                               status=408) from None
        if message["type"] == "websocket.disconnect":
            return None
        return message

    # ------------------------------------------------------------------ the edge
    async def _step(self, request_id: str, frame, settings: SamplingSettings) -> bytes | JSONResponse:
        h = frame.header
        msg = EdgeMessage(h.k, h.start, frame.hidden, settings.temperature, settings.top_p, settings.seed)
        try:
            reply = await self.edge.options(multiplexed_model_id=request_id).step_activation.remote(
                msg, settings.top_logprobs, settings.full_logprobs)
        except Exception as err:  # noqa: BLE001 - the edge failed: 503, the client may resend from its history
            self._release(request_id)
            return JSONResponse({"error": {"message": f"edge step failed: {str(err).strip()[-300:]}",
                                           "type": "server_error", "param": None, "code": None}}, status_code=503)
        if "resend_from" in reply:
            return encode_resend(int(reply["resend_from"]))
        if "continue_from" in reply:
            return encode_continue(int(reply["continue_from"]))
        return encode_token(reply["token"], reply["position"], reply["logprob"], reply["top"], reply.get("full"),
                            reply["compute_s"])

    def _request_id(self, authorization: str | None, stream_id: str) -> str:
        # Streams of different keys never share a cache, even when two clients draw the same id.
        return hashlib.blake2b(f"{authorization or ''}|{stream_id}".encode(), digest_size=16).hexdigest()

    def _release(self, request_id: str) -> None:
        """Free a stream's edge cache, detached from the call being handled (see ``UEHalf._release``)."""
        release = self.edge.options(multiplexed_model_id=request_id).release.remote
        contextvars.Context().run(release, request_id)


def build_device_app(config: ServeConfig, route: DeviceRouteConfig | None = None):
    """Edge half + split policy + activation ingress: what an operator deploys for devices (no UE half)."""
    from ray.serve.config import RequestRouterConfig

    from splitlab.serve.app import LIGHT_CPUS, edge_autoscaling
    from splitlab.serve.edge import EdgeHalf
    from splitlab.serve.policy import SplitPolicy, fit_split_range
    from splitlab.serve.routing import ROUTER_PATH

    route = route or DeviceRouteConfig()
    num_layers = model_facts(config.model).num_layers
    config = fit_split_range(config, num_layers)
    config.fixed_split(num_layers)
    args = config.to_dict()
    edge = EdgeHalf.options(autoscaling_config=edge_autoscaling(config), max_ongoing_requests=config.max_streams,
                            request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH),
                            ray_actor_options={"num_cpus": config.replica_cpus},
                            health_check_period_s=config.health_check_period_s,
                            graceful_shutdown_timeout_s=5.0).bind(args)
    policy = SplitPolicy.options(num_replicas=1, ray_actor_options={"num_cpus": LIGHT_CPUS}).bind(args)
    return ActivationIngress.options(num_replicas=1, ray_actor_options={"num_cpus": LIGHT_CPUS},
                                     max_ongoing_requests=4 * route.max_streams).bind(
        args, route.model_dump(), edge, policy)


def build(args: dict[str, Any] | None = None):
    """``serve run splitlab.serve.activation_ingress:build model=tiny-llama stall_timeout_s=10``.

    Keys of :class:`DeviceRouteConfig` configure the routes; every other key is a ServeConfig key.
    """
    args = dict(args or {})
    route_keys = set(DeviceRouteConfig.model_fields)
    route = {key: args.pop(key) for key in list(args) if key in route_keys}
    if isinstance(route.get("api_keys"), str):
        route["api_keys"] = [k for k in route["api_keys"].split(",") if k]
    if isinstance(route.get("formats"), str):
        route["formats"] = route["formats"].split(",")
    return build_device_app(ServeConfig.from_dict(args), DeviceRouteConfig(**route))


def start_device_local(config: ServeConfig, route: DeviceRouteConfig | None = None, host: str = "127.0.0.1",
                       port: int | None = None, num_cpus: int | None = None, app_name: str = "splitlab-edge") -> str:
    """Embedded Ray + Serve on ``host`` with the device app; returns its URL (stop with ``local.stop_local``)."""
    from splitlab.serve.local import start_local

    return start_local(config, host, port, num_cpus, app_name, app=build_device_app(config, route))
