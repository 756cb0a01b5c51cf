"""One edge step of the device path: consume received activations, sample, score the token.

Runs on the edge replica's compute thread (:meth:`splitlab.serve.edge.EdgeHalf.step_activation`).
Sampling uses the same per-position generator as the all-in-cluster path, so a rebuilt stream samples
as the original would; greedy decoding takes the argmax.
"""
from __future__ import annotations

from typing import Any

import torch

from splitlab.llm.generation import sample
from splitlab.serve.edge import EdgeMessage, EdgeStore, step_generator


def activation_step(store: EdgeStore, request_id: str, msg: EdgeMessage, top_logprobs: int = 0,
                    full_logprobs: bool = False) -> dict[str, Any]:
    """``{"token", "position", "logprob", "top", "full"?, "compute_s"}``, ``{"resend_from": n}``, or during a
    split move whose past arrives in several frames ``{"continue_from": n}``.

    ``top`` lists the ``top_logprobs`` most likely (id, logprob) pairs; ``full`` (when asked) is the
    next-token log-distribution after every position of the frame, [T, V] float32 numpy, for perplexity
    measured through the path (the device scores the true tokens; the edge never learns them).
    """
    reply = store.consume(request_id, msg, every_position=full_logprobs)
    if "resend_from" in reply or "continue_from" in reply:
        return reply
    all_logits = reply["logits"]  # [T, V] with full_logprobs, else [1, V]
    logits = all_logits[-1]  # [V]
    position = msg.start + msg.hidden.shape[1]
    generator = step_generator(msg.seed, position) if msg.temperature > 0 else None
    token = sample(logits, msg.temperature, msg.top_p, generator)
    logp = torch.log_softmax(logits.float(), dim=-1)  # [V]
    out: dict[str, Any] = {"token": token, "position": position, "logprob": float(logp[token]),
                           "compute_s": reply["compute_s"], "top": []}
    if top_logprobs > 0:
        values, ids = logp.topk(top_logprobs)
        out["top"] = [(int(i), float(v)) for i, v in zip(ids, values)]
    if full_logprobs:
        out["full"] = torch.log_softmax(all_logits.float(), dim=-1).numpy()  # [T, V]
    return out
