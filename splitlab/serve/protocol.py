"""The OpenAI-style request and response bodies, checked once at the edge of the service.

Every check raises :class:`RequestError` naming the offending field (``param``) and what would be
accepted; the ingress turns it into a 4xx with OpenAI's error body::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Fields beyond OpenAI's: ``snr_db`` (mean SNR of the link in dB), ``channel_profile`` (a name from
:data:`~splitlab.serve.profiles.CHANNEL_PROFILES`) and ``split`` (a fixed split point k instead of the
policy's choice). Responses carry a ``split`` object: k, who chose it, bytes up and down, simulated
link latency and edge cache rebuilds.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from splitlab.serve.profiles import CHANNEL_PROFILES, SNR_DB_RANGE

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body; beyond it the service answers 413."""
MAX_STOP_SEQUENCES = 4
ROLES = ("system", "user", "assistant")
# Accepted by OpenAI, not by this service: rejected with a clear message rather than ignored.
UNSUPPORTED = {"echo": False, "best_of": 1, "suffix": None, "logprobs": None, "top_logprobs": None,
               "tools": None, "tool_choice": None, "functions": None, "logit_bias": None}


class RequestError(ValueError):
    """A request the service refuses; ``param`` is the field at fault (None: the body as a whole)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def body(self) -> dict:
        kind = "not_found_error" if self.status == 404 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    """What the running service accepts (from its config and model)."""

    model: str
    min_split: int
    max_split: int
    max_tokens: int
    context: int


@dataclass
class GenerationRequest:
    """A validated completion or chat request; ``prompt`` (completions) or ``messages`` (chat) is set."""

    kind: str  # "completion" | "chat"
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool
    seed: int | None
    snr_db: float | None
    channel_profile: str | None
    split: int | None
    prompt: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)


def parse_body(raw: bytes) -> dict:
    """Bytes -> the JSON object; rejects oversize bodies, invalid UTF-8, malformed JSON, non-objects."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", status=413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start}") from None
    if not text.strip():
        raise RequestError("request body is empty: send a JSON object")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_completion(body: dict, limits: Limits) -> GenerationRequest:
    """``POST /v1/completions``: prompt (a string, or a list holding one string) and the common fields."""
    if "prompt" not in body or body["prompt"] is None:
        raise RequestError("prompt is required: a non-empty string", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise RequestError("prompt must be a string or a list of exactly one string "
                               f"(batches are not supported), got a list of {len(prompt)}", "prompt")
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(f"prompt must be a string, got {_type(prompt)}", "prompt")
    if not prompt:
        raise RequestError("prompt is empty: give at least one character", "prompt")
    _check_text("prompt", prompt)
    return _common(body, limits, "completion", prompt=prompt)


def parse_chat(body: dict, limits: Limits) -> GenerationRequest:
    """``POST /v1/chat/completions``: messages with roles system/user/assistant and text content."""
    messages = body.get("messages")
    if messages is None:
        raise RequestError("messages is required: a non-empty list of {role, content}", "messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(f"messages must be a non-empty list of {{role, content}}, got {_type(messages)}", "messages")
    clean = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with role and content, got {_type(m)}", where)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {list(ROLES)}, got {role!r}", f"{where}.role")
        if isinstance(content, list):  # OpenAI content parts: only text parts are understood
            parts = []
            for j, part in enumerate(content):
                if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                    raise RequestError(f"{where}.content[{j}] must be a text part {{type: 'text', text: str}}",
                                       f"{where}.content")
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string, got {_type(content)}", f"{where}.content")
        _check_text(f"{where}.content", content)
        clean.append({"role": role, "content": content})
    if not any(m["content"] for m in clean):
        raise RequestError("messages are all empty: give some content", "messages")
    if "max_tokens" not in body and "max_completion_tokens" in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return _common(body, limits, "chat", messages=clean)


def _common(body: dict, limits: Limits, kind: str, **text: Any) -> GenerationRequest:
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise RequestError(f"model must be a string, got {_type(model)}", "model")
        if model != limits.model:
            raise RequestError(f"model {model!r} is not served here; this service serves {limits.model!r}",
                               "model", status=404)
    for name, default in UNSUPPORTED.items():
        if body.get(name, default) not in (default, None, False):
            raise RequestError(f"{name} is not supported by this service", name)
    if body.get("n", 1) not in (1, None):
        raise RequestError(f"n must be 1 (one choice per request), got {body['n']!r}", "n")
    snr_db = _number(body, "snr_db", None, *SNR_DB_RANGE)
    profile = body.get("channel_profile")
    if profile is not None and (not isinstance(profile, str) or profile not in CHANNEL_PROFILES):
        raise RequestError(f"channel_profile must be one of {sorted(CHANNEL_PROFILES)}, got {profile!r}",
                           "channel_profile")
    split = _integer(body, "split", None, limits.min_split, limits.max_split)
    return GenerationRequest(
        kind=kind,
        max_tokens=_integer(body, "max_tokens", 16, 1, limits.max_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stop(body.get("stop")),
        stream=_boolean(body, "stream"),
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        snr_db=snr_db, channel_profile=profile, split=split, **text)


def check_context(prompt_tokens: int, request: GenerationRequest, limits: Limits) -> None:
    """Reject empty tokenisations and prompts that leave no room for ``max_tokens`` in the context."""
    param = "prompt" if request.kind == "completion" else "messages"
    if prompt_tokens == 0:
        raise RequestError(f"{param} tokenises to no tokens: give some text", param)
    if prompt_tokens + request.max_tokens > limits.context:
        raise RequestError(f"{param} is {prompt_tokens} tokens; with max_tokens={request.max_tokens} that exceeds "
                           f"the context of {limits.context} tokens: shorten it or lower max_tokens", param)


# ---------------------------------------------------------------------- field checks
def _type(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _check_text(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{name} is not valid Unicode (it holds a lone surrogate escape)", name) from None


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer in [{low}, {high}], got {_type(value)}", name)
    if not low <= value <= high:
        raise RequestError(f"{name} must be an integer in [{low}, {high}], got {value}", name)
    return value


def _number(body: dict, name: str, default: float | None, low: float, high: float,
            low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number in {interval}, got {_type(value)}", name)
    if not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number in {interval}, got {value}", name)
    if value < low or value > high or (low_open and value == low):
        raise RequestError(f"{name} must be a number in {interval}, got {value:g}", name)
    return float(value)


def _boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{name} must be true or false, got {_type(value)}", name)
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise RequestError(f"stop must be a string or a list of strings, got {_type(value)}", "stop")
    if len(items) > MAX_STOP_SEQUENCES:
        raise RequestError(f"stop holds at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}", "stop")
    if any(not s for s in items):
        raise RequestError("stop sequences must be non-empty strings", "stop")
    for s in items:
        _check_text("stop", s)
    return list(items)
