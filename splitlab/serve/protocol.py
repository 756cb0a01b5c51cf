"""The OpenAI-style request and response bodies, checked once at the edge of the service.

Every check raises :class:`RequestError` naming the offending field (``param``) and what would be
accepted; the ingress turns it into a 4xx with OpenAI's error body::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

Fields beyond OpenAI's: ``snr_db`` (mean SNR of the link in dB), ``channel_profile`` (a name from
:data:`~splitlab.serve.profiles.CHANNEL_PROFILES`) and ``split`` (a fixed split point k instead of the
policy's choice). ``snr_trace`` (the client's SNR reports in dB, one per block of ``resplit_every``
tokens) lets the policy move the split within the stream, block by block; the simulated channel follows
the trace too. Responses carry a ``split`` object: k (and the ``schedule`` under a trace), who chose it,
bytes up and down, simulated link latency, edge cache rebuilds and split moves.

For evaluation clients (lm-eval style log-likelihood scoring) ``/v1/completions`` takes a list of
prompts (strings or token-id lists; one choice each), ``logprobs`` (0..``MAX_LOGPROBS`` alternatives),
``echo`` (the prompt's tokens and log-probabilities first) and ``max_tokens: 0`` with ``echo``.

Bodies are checked before they are read whole (:func:`read_body`: Content-Length, then a running
count of the streamed chunks) and parsed without letting a huge number or deep nesting escape as a
500 (:func:`parse_body`).
"""
from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from splitlab.serve.profiles import CHANNEL_PROFILES, SNR_DB_RANGE

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Default largest request body (``ServeConfig.max_body_bytes``); beyond it the service answers 413."""
MAX_STOP_SEQUENCES = 4
MAX_LOGPROBS = 20
"""Most alternatives ``logprobs`` may ask for per token."""
MAX_INT_DIGITS = 24
"""Integers in a body longer than this are refused before Python converts them (no field needs more)."""
MAX_CHARS_PER_TOKEN = 32
"""A text longer than ``context x MAX_CHARS_PER_TOKEN`` characters cannot fit: refused before tokenising."""
MAX_SNR_TRACE = 64
"""Most SNR reports one request may carry (each is one policy decision)."""
ROLES = ("system", "user", "assistant")
# Accepted by OpenAI, not by this service: rejected with a clear message rather than ignored.
UNSUPPORTED = {"best_of": 1, "suffix": None, "tools": None, "tool_choice": None, "functions": None,
               "logit_bias": None}
CHAT_UNSUPPORTED = {"echo": False, "logprobs": False, "top_logprobs": None}


class RequestError(ValueError):
    """A request the service refuses; ``param`` is the field at fault (None: the body as a whole)."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def body(self) -> dict:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                503: "server_error", 504: "server_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    """What the running service accepts (from its config and model)."""

    model: str
    min_split: int
    max_split: int
    max_tokens: int
    context: int
    vocab_size: int | None = None  # token-id prompts must lie in [0, vocab_size)
    max_prompts: int = 16  # prompts one completions request may list


@dataclass
class GenerationRequest:
    """A validated completion or chat request; ``prompts`` (completions) or ``messages`` (chat) is set."""

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
    prompts: list[str | list[int]] = field(default_factory=list)  # text, or token ids given by the client
    messages: list[dict[str, str]] = field(default_factory=list)
    logprobs: int | None = None
    echo: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    snr_trace: list[float] | None = None  # the client's SNR per block of resplit_every tokens (k moves per block)
    resplit_every: int = 0

    @property
    def prompt(self) -> str | list[int] | None:
        return self.prompts[0] if self.prompts else None


def check_content_type(value: str | None) -> None:
    """Only JSON bodies: anything else is 415, naming what to send."""
    kind = (value or "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(f"Content-Type must be application/json, got {value!r}", "Content-Type", status=415)


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body from its chunks, refused with 413 as soon as it is known to exceed ``limit``.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked body is
    counted as it arrives, so at most ``limit`` plus one chunk is ever held.
    """
    if content_length is not None:
        if not content_length.strip().isdigit() or len(content_length.strip()) > 18:
            raise RequestError(f"Content-Length must be a byte count, got {content_length!r}", "Content-Length")
        if int(content_length) > limit:
            raise RequestError(f"request body is {int(content_length)} bytes; the limit is {limit}",
                               "Content-Length", status=413)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", "Content-Length", status=413)
        parts.append(chunk)
    return b"".join(parts)


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(f"a number in the body has {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS} "
                           f"are accepted")
    return int(text)


def _bounded_float(text: str) -> float:
    if len(text) > 64:
        raise RequestError(f"a number in the body is {len(text)} characters long; at most 64 are accepted")
    return float(text)


def parse_body(raw: bytes, limit: int = MAX_BODY_BYTES) -> dict:
    """Bytes -> the JSON object; rejects oversize bodies, invalid UTF-8, malformed JSON, huge numbers,
    deep nesting and non-objects, each with a 4xx."""
    if len(raw) > limit:
        raise RequestError(f"request body is {len(raw)} bytes; the limit is {limit}", status=413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"request body is not valid UTF-8: byte 0x{raw[err.start]:02x} at offset {err.start}") from None
    if not text.strip():
        raise RequestError("request body is empty: send a JSON object")
    try:
        body = json.loads(text, parse_int=_bounded_int, parse_float=_bounded_float)
    except json.JSONDecodeError as err:
        raise RequestError(f"malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise RequestError("JSON nested too deeply: no field of this API nests more than a few levels") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def parse_completion(body: dict, limits: Limits) -> GenerationRequest:
    """``POST /v1/completions``: prompt (a string, token ids, or a list of either) and the common fields."""
    if "prompt" not in body or body["prompt"] is None:
        raise RequestError("prompt is required: a non-empty string, a list of strings, or token ids", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and _is_int(prompt[0])):
        prompts = [prompt]
    elif isinstance(prompt, list):
        prompts = prompt
    else:
        raise RequestError(f"prompt must be a string, a list of strings or token ids, got {_type(prompt)}", "prompt")
    if not prompts:
        raise RequestError("prompt is an empty list: give at least one prompt", "prompt")
    if len(prompts) > limits.max_prompts:
        raise RequestError(f"prompt lists {len(prompts)} prompts; at most {limits.max_prompts} per request", "prompt")
    clean: list[str | list[int]] = []
    for i, item in enumerate(prompts):
        where = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            if not item:
                raise RequestError(f"{where} is empty: give at least one character", where)
            _check_text(where, item)
            _check_length(where, len(item), limits)
        elif isinstance(item, list) and item and all(_is_int(t) for t in item):
            high = limits.vocab_size - 1 if limits.vocab_size else 2**31 - 1
            bad = next((t for t in item if not 0 <= t <= high), None)
            if bad is not None:
                raise RequestError(f"{where} holds token id {bad}; ids must be in [0, {high}]", where)
        else:
            raise RequestError(f"{where} must be a non-empty string or a non-empty list of token ids, "
                               f"got {_type(item)}", where)
        clean.append(item)
    echo = _boolean(body, "echo")
    logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
    return _common(body, limits, "completion", prompts=clean, echo=echo, logprobs=logprobs,
                   min_tokens=0 if echo else 1)


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
        _check_length(f"{where}.content", len(content), limits)
        clean.append({"role": role, "content": content})
    if not any(m["content"] for m in clean):
        raise RequestError("messages are all empty: give some content", "messages")
    if "max_tokens" not in body and "max_completion_tokens" in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    for name, default in CHAT_UNSUPPORTED.items():
        if body.get(name, default) not in (default, None, False):
            raise RequestError(f"{name} is not supported on /v1/chat/completions: use /v1/completions", name)
    return _common(body, limits, "chat", messages=clean)


def _common(body: dict, limits: Limits, kind: str, min_tokens: int = 1, **text: Any) -> GenerationRequest:
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
    if _integer(body, "n", 1, 1, 1) != 1:  # bool and float refused: `n: true` is not 1
        raise RequestError(f"n must be 1 (one choice per prompt), got {body['n']!r}", "n")
    snr_db = _number(body, "snr_db", None, *SNR_DB_RANGE)
    profile = body.get("channel_profile")
    if profile is not None and (not isinstance(profile, str) or profile not in CHANNEL_PROFILES):
        raise RequestError(f"channel_profile must be one of {sorted(CHANNEL_PROFILES)}, got {profile!r}",
                           "channel_profile")
    split = _integer(body, "split", None, limits.min_split, limits.max_split)
    snr_trace, resplit_every = _snr_trace(body, limits, split)
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is not None and not (isinstance(options, dict) and set(options) <= {"include_usage"}):
        raise RequestError(f"stream_options must be an object with include_usage, got {_type(options)}",
                           "stream_options")
    if options is not None and not stream:
        raise RequestError("stream_options is only allowed with stream: true", "stream_options")
    include_usage = _boolean(options or {}, "include_usage", "stream_options.include_usage")
    max_tokens = _integer(body, "max_tokens", 16, min_tokens, limits.max_tokens)
    if max_tokens == 0 and kind == "completion" and not text.get("echo"):
        raise RequestError("max_tokens may be 0 only with echo: true (scoring the prompt)", "max_tokens")
    return GenerationRequest(
        kind=kind,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        stop=_stop(body.get("stop")),
        stream=stream, include_usage=include_usage,
        seed=_integer(body, "seed", None, -(2**63), 2**63 - 1),
        snr_db=snr_db, channel_profile=profile, split=split, snr_trace=snr_trace, resplit_every=resplit_every,
        **text)


def check_context(prompt_tokens: int, request: GenerationRequest, limits: Limits, param: str | None = None) -> None:
    """Reject empty tokenisations and prompts that leave no room for ``max_tokens`` in the context."""
    param = param or ("prompt" if request.kind == "completion" else "messages")
    if prompt_tokens == 0:
        raise RequestError(f"{param} tokenises to no tokens: give some text", param)
    if prompt_tokens + request.max_tokens > limits.context:
        raise RequestError(f"{param} is {prompt_tokens} tokens; with max_tokens={request.max_tokens} that exceeds "
                           f"the context of {limits.context} tokens: shorten it or lower max_tokens", param)


# ---------------------------------------------------------------------- field checks
def _type(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"[:80]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_length(name: str, chars: int, limits: Limits) -> None:
    """A cheap bound before tokenising: no tokenizer packs more than MAX_CHARS_PER_TOKEN characters a token."""
    if chars > limits.context * MAX_CHARS_PER_TOKEN:
        raise RequestError(f"{name} is {chars} characters; it cannot fit the context of {limits.context} tokens "
                           f"(at most {limits.context * MAX_CHARS_PER_TOKEN} characters)", name)


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


def _snr_trace(body: dict, limits: Limits, split: int | None) -> tuple[list[float] | None, int]:
    """``snr_trace`` and ``resplit_every``: both or neither, and not with a fixed ``split``."""
    trace, every = body.get("snr_trace"), _integer(body, "resplit_every", None, 1, limits.max_tokens)
    if trace is None:
        if every is not None:
            raise RequestError("resplit_every needs snr_trace (the SNR of each block of tokens)", "resplit_every")
        return None, 0
    if every is None:
        raise RequestError("snr_trace needs resplit_every (the tokens each SNR report covers)", "resplit_every")
    if split is not None:
        raise RequestError("snr_trace lets the policy move the split; a fixed split takes none", "snr_trace")
    if not isinstance(trace, list) or not 1 <= len(trace) <= MAX_SNR_TRACE:
        raise RequestError(f"snr_trace must be a list of 1..{MAX_SNR_TRACE} numbers (dB), got {_type(trace)}",
                           "snr_trace")
    return [_number({"snr_trace": v}, "snr_trace", None, *SNR_DB_RANGE) for v in trace], every


def _boolean(body: dict, name: str, param: str | None = None) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(f"{param or name} must be true or false, got {_type(value)}", param or name)
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
