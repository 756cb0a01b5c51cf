"""OpenAI-shaped response bodies and stream chunks, built from the UE's events.

One :class:`Choice` per prompt collects its events (text, finish reason, link costs, and with
``logprobs``/``echo`` the per-token log-probabilities); :class:`Reply` turns the choices into a whole
response (``text_completion`` / ``chat.completion``) or into stream chunks. Completions ``logprobs``
follow OpenAI's legacy shape: ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, with the
prompt's tokens first under ``echo`` (the first of them has no log-probability).
"""
from __future__ import annotations

import time
from typing import Any

from transformers import PreTrainedTokenizerBase

from splitlab.serve.protocol import GenerationRequest

SPLIT_FIELDS = {"bytes_up": "bytes_up", "bytes_down": "bytes_down", "link_latency_s": "link_latency_s",
                "uplink_s": "uplink_s", "downlink_s": "downlink_s", "vectors_up": "vectors_up",
                "edge_rebuilds": "rebuilds", "resent_vectors": "resent_vectors", "edge_retries": "edge_retries",
                "ue_compute_s": "ue_compute_s", "edge_wait_s": "edge_wait_s", "edge_compute_s": "edge_compute_s",
                "resplits": "resplits", "moved_vectors": "moved_vectors", "moved_bytes_up": "moved_bytes_up",
                "resplit_ue_layer_tokens": "resplit_ue_layer_tokens", "resplit_ue_s": "resplit_ue_s"}
"""Response ``split`` key -> the UE's link statistic."""


class Choice:
    """What one prompt's generation produced so far."""

    def __init__(self, index: int, prompt_ids: list[int], prompt_text: str, split: dict):
        self.index, self.prompt_ids, self.prompt_text, self.split_info = index, prompt_ids, prompt_text, split
        self.text = ""
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.link: dict[str, float] = {}
        self.tokens: list[dict] = []  # {"token_id", "logprob", "top"} per generated token (with logprobs)
        self.prompt_scores: list[dict] = []
        self.done = False

    def add(self, event: dict) -> tuple[str, list[dict]]:
        """Take one UE event; returns its new text and its new tokens' log-probability entries."""
        new_tokens = []
        if "logprob" in event:
            new_tokens = [{key: event[key] for key in ("token_id", "logprob", "top")}]
        new_tokens += event.get("tokens", [])
        self.tokens += new_tokens
        self.text += event["text"]
        if "finish_reason" in event:
            self.finish_reason = event["finish_reason"]
            self.completion_tokens = event["completion_tokens"]
            self.link = event["link"]
            self.prompt_scores = event.get("prompt_scores", [])
            self.done = True
        return event["text"], new_tokens

    def split(self) -> dict:
        return {**self.split_info, **{key: self.link.get(name) for key, name in SPLIT_FIELDS.items()}}


class Reply:
    """The response to one request: its choices, usage and split report (see the module docstring)."""

    def __init__(self, req: GenerationRequest, request_id: str, model: str, choices: list[Choice],
                 tokenizer: PreTrainedTokenizerBase):
        self.req, self.model, self.choices, self.tokenizer = req, model, choices, tokenizer
        self.chat = req.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + request_id
        self.created = int(time.time())

    @property
    def done(self) -> bool:
        return all(c.done for c in self.choices)

    def usage(self) -> dict:
        prompt = sum(len(c.prompt_ids) for c in self.choices)
        completion = sum(c.completion_tokens for c in self.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def full(self) -> dict:
        choices = []
        for c in self.choices:
            if self.chat:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                                "finish_reason": c.finish_reason})
                continue
            text = (c.prompt_text if self.req.echo else "") + c.text
            choice = {"index": c.index, "text": text, "logprobs": self._logprobs(c), "finish_reason": c.finish_reason}
            if len(self.choices) > 1:
                choice["split"] = c.split()
            choices.append(choice)
        return {**self._head(False), "choices": choices, "usage": self.usage(), "split": self.choices[0].split()}

    def first_chunks(self) -> list[dict]:
        if not self.chat:
            return []
        return [{**self._head(True), "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None}]} for c in self.choices]

    def chunk(self, choice: Choice, delta: str, tokens: list[dict]) -> dict:
        finish = choice.finish_reason if choice.done else None
        if self.chat:
            body = {"index": choice.index, "delta": {"content": delta} if delta else {}, "finish_reason": finish}
        else:
            body = {"index": choice.index, "text": delta, "finish_reason": finish,
                    "logprobs": self._token_logprobs(tokens, 0) if self.req.logprobs is not None else None}
        out = {**self._head(True), "choices": [body]}
        if choice.done:
            out["usage"], out["split"] = self.usage(), choice.split()
        return out

    def usage_chunk(self) -> dict:
        """``stream_options.include_usage``: the last chunk, with no choices and the whole usage."""
        return {**self._head(True), "choices": [], "usage": self.usage()}

    # ------------------------------------------------------------------ logprobs
    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _top(self, pairs: list) -> dict[str, float]:
        top: dict[str, float] = {}
        for token_id, logprob in pairs:
            top.setdefault(self._piece(int(token_id)), float(logprob))
        return top

    def _token_logprobs(self, tokens: list[dict], offset: int) -> dict[str, list]:
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in tokens:
            piece = self._piece(entry["token_id"])
            out["tokens"].append(piece)
            out["token_logprobs"].append(entry["logprob"])
            out["top_logprobs"].append(self._top(entry["top"]))
            out["text_offset"].append(offset)
            offset += len(piece)
        return out

    def _logprobs(self, choice: Choice) -> dict[str, list] | None:
        if self.req.logprobs is None:
            return None
        prompt: list[dict] = []
        if self.req.echo:
            for j, token_id in enumerate(choice.prompt_ids):
                score = choice.prompt_scores[j - 1] if 0 < j <= len(choice.prompt_scores) else None
                prompt.append({"token_id": token_id, "logprob": score["logprob"] if score else None,
                               "top": score["top"] if score else []})
        start = 0 if self.req.echo else len(choice.prompt_text)
        out = self._token_logprobs(prompt + choice.tokens, start)
        if self.req.echo and out["top_logprobs"]:
            out["top_logprobs"][0] = None  # OpenAI: nothing predicts the first prompt token
        return out
