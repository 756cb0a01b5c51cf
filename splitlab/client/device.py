"""The UE half on the device: its own layers, its own KV cache, activations up, token ids down.

:class:`DeviceClient` loads only the head's weights (``SplitModel.load(part="ue")``) and the tokenizer,
tokenises the prompt locally, runs layers ``0..k-1``, quantises the hidden state into an activation
frame (:mod:`splitlab.serve.wire`), and turns the edge's token ids back into text. The prompt never
leaves the device as text or token ids. It keeps every activation it sent, so an edge that lost the
stream's cache is rebuilt with one resend (``resend_from``), as in the all-in-cluster path.

k comes from the caller, or from the edge's advertised policy (``k="policy"``, given the device's
own estimate of its link SNR), and may change between tokens (a schedule, or the policy asked again
every ``resplit_every`` tokens). A move up (the device takes layers over) is recomputed on the device
from the hidden states it kept, and the edge drops those layers; a move down sends the hidden states
after the new k of every past token in the next frame (rebuilt from the token ids on the device), and
the edge rebuilds only the layers it takes over (:meth:`splitlab.serve.edge.EdgeStore._resplit`).
Moving KV entries over the link instead (``llm.generation.resplit``'s ``transfer``) is not on the wire.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import requests
import torch

from splitlab.channel.quantisation import token_bits
from splitlab.client.transport import Stream, Transport, WireCount, make_transport
from splitlab.llm.generation import UESession
from splitlab.llm.split_model import SplitModel
from splitlab.serve.text import TextAssembler
from splitlab.serve.wire import decode_token, encode_frame

MAX_FRAME_TOKENS = 256
"""Prompt tokens per frame: an fp32 frame of SmolLM2 stays under 0.6 MB (WebSocket servers cap messages)."""


@dataclass
class DeviceStats:
    """What one generation cost on the device and on the wire."""

    k: int
    format: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    bytes_up: int = 0  # activation frames and settings (application bytes)
    bytes_down: int = 0  # token frames
    frames: int = 0
    rebuilds: int = 0
    resent_vectors: int = 0
    ue_compute_s: float = 0.0
    prefill_s: float = 0.0  # prompt: head + send + first token back
    step_s: list[float] = field(default_factory=list)  # per later token: head + send + token back
    step_ue_s: list[float] = field(default_factory=list)  # of which the head's compute
    step_edge_s: list[float] = field(default_factory=list)  # of which the edge's compute (it reports it)
    migrations: list[dict] = field(default_factory=list)  # split moves: token, k_from, k_to, past_tokens, ...

    def as_dict(self) -> dict:
        out = asdict(self)
        out["ms_per_token"] = 1000 * sum(self.step_s) / len(self.step_s) if self.step_s else None
        return out


@dataclass
class DeviceGeneration:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: DeviceStats


class DeviceClient:
    """The device's half of split inference against an edge's activation routes.

    Args:
        url: the edge, e.g. ``http://127.0.0.1:8000`` (or an emulated link in front of it).
        model: the model spec of the local half; None: the name the edge advertises.
        max_k: deepest split this device will run (its loaded layers); None: the edge's ``split_range`` top.
        fmt: payload format (``fp32``, ``fp16``, ``bf16``, ``int8``).
        transport: ``ws`` (one WebSocket per generation) or ``http`` (one POST per frame).
    """

    def __init__(self, url: str, model: str | None = None, max_k: int | None = None, fmt: str = "fp16",
                 transport: str = "ws", api_key: str | None = None, timeout_s: float = 60.0):
        self.url, self.api_key, self.fmt = url.rstrip("/"), api_key, fmt
        self.http = requests.Session()
        self.http.trust_env = False
        self.info = self._get("/v1/activations/info")
        if fmt not in self.info["formats"]:
            raise ValueError(f"fmt must be one of the edge's formats {self.info['formats']}, got {fmt!r}")
        low, high = self.info["split_range"]
        self.max_k = high if max_k is None else max_k
        if not low <= self.max_k <= high:
            raise ValueError(f"max_k must lie in the edge's split range [{low}, {high}], got {self.max_k}")
        self.model = SplitModel.load(model or self.info["model"], part="ue", k=self.max_k)
        if (self.model.num_layers, self.model.hidden_size) != (self.info["num_layers"], self.info["hidden_size"]):
            raise ValueError(f"the local model has {self.model.num_layers} layers of {self.model.hidden_size}; the "
                             f"edge serves {self.info['num_layers']} of {self.info['hidden_size']} ({self.info['model']})")
        self.transport: Transport = make_transport(transport, self.url, api_key, timeout_s)
        cfg_eos = getattr(self.model.model.config, "eos_token_id", None)
        eos = [self.model.tokenizer.eos_token_id, *(cfg_eos if isinstance(cfg_eos, (list, tuple)) else [cfg_eos])]
        self.eos_ids = {int(i) for i in eos if i is not None}

    # ------------------------------------------------------------------ the edge's routes
    def _get(self, path: str) -> dict:
        r = self.http.get(self.url + path, headers=self._headers(), timeout=30)
        r.raise_for_status()
        return r.json()

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def choose_k(self, snr_db: float, prompt_tokens: int = 0, max_tokens: int = 0) -> int:
        """The edge's advertised policy at the device's link SNR, clamped to what this device loaded."""
        r = self.http.post(self.url + "/v1/activations/split", json={"snr_db": snr_db, "prompt_tokens": prompt_tokens,
                                                                     "max_tokens": max_tokens},
                           headers=self._headers(), timeout=30)
        r.raise_for_status()
        return min(int(r.json()["k"]), self.max_k)

    # ------------------------------------------------------------------ generation
    def stream(self, prompt: str, k: int | str | Sequence[int], max_tokens: int = 32, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: list[str] | None = None,
               snr_db: float | Callable[[int], float] = 30.0, resplit_every: int = 0) -> Iterator[str]:
        """Yield text deltas as tokens arrive; the full result is ``self.last`` afterwards.

        ``k``: a split point, ``"policy"`` (the edge's policy at ``snr_db``; asked again every
        ``resplit_every`` tokens when > 0, with ``snr_db(i)`` the device's estimate before token i when
        a callable), or a schedule: ``k[i]`` is the split for token i (the prompt's frame yields token 0),
        the last entry holding after the schedule ends.
        """
        ids = list(self.model.tokenizer(prompt).input_ids)
        if not ids:
            raise ValueError("prompt tokenises to no tokens: give some text")
        if isinstance(resplit_every, bool) or not isinstance(resplit_every, int) or resplit_every < 0:
            raise ValueError(f"resplit_every must be an integer >= 0 (0: never), got {resplit_every!r}")
        split_at = self._split_rule(k, len(ids), max_tokens, snr_db, resplit_every)
        k0 = split_at(0)
        stats = DeviceStats(k0, self.fmt, prompt_tokens=len(ids))
        text = TextAssembler(self.model.tokenizer, stop or [], incremental=True)
        settings = {"temperature": temperature, "top_p": top_p, "seed": seed}
        session = UESession(self.model, k0)
        stream = self.transport.open(settings)
        finish = "length"
        try:
            t0 = time.perf_counter()
            act = self._compute(stats, session.prefill, torch.tensor([ids]))
            hidden, start = act.hidden, 0
            ue_s = 0.0
            for i in range(max_tokens):
                reply = self._exchange(stream, session, stats, hidden, start)
                token = reply.value
                now = time.perf_counter()
                if i == 0:
                    stats.prefill_s = now - t0
                else:
                    stats.step_s.append(now - t0)
                    stats.step_ue_s.append(ue_s)
                    stats.step_edge_s.append(reply.edge_s)
                delta = text.add(token)
                if token in self.eos_ids or text.stopped:
                    finish = "stop"
                    if delta:
                        yield delta
                    break
                yield delta
                if i + 1 < max_tokens:
                    t0 = time.perf_counter()
                    past = self._move(session, stats, split_at(i + 1), i + 1)  # [1, T, H] for a move down
                    start = 0 if past is not None else session.length
                    act = self._compute(stats, session.step, token)
                    hidden = act.hidden if past is None else torch.cat([past, act.hidden], dim=1)
                    ue_s = time.perf_counter() - t0
            rest = text.flush()
            if rest:
                yield rest
        finally:
            stream.close()
            self._account(stats, stream.count)
            stats.completion_tokens = len(text.token_ids)
            self.last = DeviceGeneration(text.text, list(text.token_ids), finish, stats)

    def _split_rule(self, k: int | str | Sequence[int], prompt_tokens: int, max_tokens: int,
                    snr_db: float | Callable[[int], float], resplit_every: int) -> Callable[[int], int]:
        """Token index -> split point, each checked against the edge's range and this device's layers."""
        low = self.info["split_range"][0]

        def checked(value, what: str) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= self.max_k:
                raise ValueError(f"{what} must be an integer in [{low}, {self.max_k}] (this device's layers), "
                                 f"got {value!r}")
            return value

        if k == "policy":
            snr = snr_db if callable(snr_db) else (lambda i: snr_db)
            chosen: dict[int, int] = {}

            def from_policy(i: int) -> int:
                at = i - i % resplit_every if resplit_every else 0
                if at not in chosen:
                    chosen[at] = self.choose_k(float(snr(at)), prompt_tokens + at, max_tokens - at)
                return chosen[at]
            return from_policy
        if isinstance(k, str):
            raise ValueError(f"k must be an integer, a list of integers or 'policy', got {k!r}")
        if isinstance(k, Sequence):
            if not k:
                raise ValueError("a k schedule needs at least one split point")
            schedule = [checked(v, f"k[{i}]") for i, v in enumerate(k)]
            return lambda i: schedule[min(i, len(schedule) - 1)]
        fixed = checked(k, "k")
        return lambda i: fixed

    def _move(self, session: UESession, stats: DeviceStats, k_to: int, token: int) -> torch.Tensor | None:
        """Move the device's split to ``k_to`` before token ``token``; returns the hidden states after layer
        ``k_to`` of every past token when the edge takes layers over (they go up with the next frame)."""
        k_from, past = session.k, session.length
        if k_to == k_from:
            return None
        t0 = time.perf_counter()
        moved = session.move_by_recompute(k_to)
        sent = None if moved is None else moved.hidden  # [1, past, H] on a move down
        ue_s = time.perf_counter() - t0
        stats.ue_compute_s += ue_s
        row_bytes = token_bits(self.fmt, self.model.hidden_size) // 8
        stats.migrations.append({"token": token, "k_from": k_from, "k_to": k_to, "past_tokens": past,
                                 "ue_layer_tokens": past * (k_to - k_from if sent is None else k_to),
                                 "payload_bytes_up": 0 if sent is None else past * row_bytes, "ue_s": ue_s})
        return sent

    def generate(self, prompt: str, k: int | str, max_tokens: int = 32, **kw) -> DeviceGeneration:
        """Run :meth:`stream` to the end; returns the text, the token ids and the stats."""
        for _ in self.stream(prompt, k, max_tokens, **kw):
            pass
        return self.last

    def score(self, ids: list[int], k: int) -> tuple[torch.Tensor, DeviceStats]:
        """Teacher-forced log-probabilities of ``ids[1:]`` through the real path.

        The head runs over the whole sequence, the frames go up as for a prompt, and the edge returns the
        next-token distribution after every position (``full_logprobs``); the device picks the true
        tokens' entries, so the edge never learns which tokens they are. Returns ([T-1], stats).
        """
        if len(ids) < 2:
            raise ValueError(f"scoring needs at least 2 tokens, got {len(ids)}")
        stats = DeviceStats(k, self.fmt, prompt_tokens=len(ids))
        session = UESession(self.model, k)
        stream = self.transport.open({"temperature": 0.0, "full_logprobs": True})
        rows = []
        try:
            act = self._compute(stats, session.prefill, torch.tensor([ids[:-1]]))  # the last token predicts nothing
            for lo in range(0, act.hidden.shape[1], MAX_FRAME_TOKENS):
                part = act.hidden[:, lo:lo + MAX_FRAME_TOKENS]  # [1, <=MAX_FRAME_TOKENS, H]
                reply = decode_token(stream.exchange(encode_frame(part, k, lo, self.fmt)))
                if reply.is_resend:
                    raise RuntimeError(f"the edge lost the scoring stream's cache (resend from {reply.value})")
                rows.append(torch.from_numpy(reply.full.copy()))
        finally:
            stream.close()
            self._account(stats, stream.count)
        logp = torch.cat(rows)  # [T-1, V]
        return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0], stats

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _compute(stats: DeviceStats, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        stats.ue_compute_s += time.perf_counter() - t0
        return out

    def _exchange(self, stream: Stream, session: UESession, stats: DeviceStats, hidden: torch.Tensor, start: int):
        """Send positions start.. ([1, T, H]); resend history while the edge asks; returns the token reply."""
        for _ in range(3):
            reply = self._send_chunks(stream, session.k, hidden, start)
            if reply.is_continue:
                raise RuntimeError(f"the edge expects past positions from {reply.value} after the last frame")
            if not reply.is_resend:
                return reply
            start = reply.value
            hidden = session.history().hidden[:, start:]  # [1, T', H]
            stats.rebuilds += 1
            stats.resent_vectors += hidden.shape[1]
        raise RuntimeError("the edge kept asking for resends; giving up on this stream")

    def _send_chunks(self, stream: Stream, k: int, hidden: torch.Tensor, start: int):
        """Long prompts go as several frames (the edge extends its cache); the last frame's token counts."""
        for lo in range(0, hidden.shape[1], MAX_FRAME_TOKENS):
            part = hidden[:, lo:lo + MAX_FRAME_TOKENS]  # [1, <=MAX_FRAME_TOKENS, H]
            reply = decode_token(stream.exchange(encode_frame(part, k, start + lo, self.fmt)))
            if reply.is_resend:
                return reply
            if reply.is_continue and reply.value != start + lo + part.shape[1]:
                raise RuntimeError(f"the edge expects past positions from {reply.value}, "
                                   f"not {start + lo + part.shape[1]}")
        return reply

    @staticmethod
    def _account(stats: DeviceStats, count: WireCount) -> None:
        stats.bytes_up, stats.bytes_down, stats.frames = count.bytes_up, count.bytes_down, count.frames
