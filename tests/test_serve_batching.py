"""Batched decode: many requests' next tokens as one step over their own KV caches.

Greedy outputs of batched requests must equal the one-request-at-a-time outputs, while requests of
different lengths join and leave between steps.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from splitlab.llm import SplitModel
from splitlab.llm.batching import head_step, tail_step
from splitlab.llm.generation import EdgeSession, UESession, generate
from splitlab.serve.batching import StepBatcher
from splitlab.serve.edge import EdgeMessage, EdgeStore
from splitlab.serve.profiles import resolve_link
from splitlab.serve.ue import UERequest, split_generate

PROMPTS = ["The quick brown fox", "Hi", "Once upon a time there was a", "A B C", "Wireless links are noisy"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _greedy(model: SplitModel, prompt: str, k: int, n: int) -> list[int]:
    ids = torch.tensor([model.tokenizer(prompt).input_ids])
    return generate(model, ids, k, max_new_tokens=n, stop_at_eos=False).token_ids


@pytest.mark.parametrize("k", [0, 1, 4])
def test_batched_head_and_tail_steps_equal_one_request_at_a_time(tiny_model: SplitModel, k: int):
    model = tiny_model
    ues = [UESession(model, k) for _ in PROMPTS]
    edges = [EdgeSession(model, k) for _ in PROMPTS]
    tokens = [int(e.consume(u.prefill(torch.tensor([model.tokenizer(p).input_ids]))).argmax())
              for u, e, p in zip(ues, edges, PROMPTS)]  # prompts of different lengths: padded per step
    outs = [[t] for t in tokens]
    for _ in range(7):
        acts = head_step(model, ues, tokens)
        tokens = tail_step(model, edges, torch.cat([a.hidden for a in acts])).argmax(-1).tolist()  # [B]
        for out, t in zip(outs, tokens):
            out.append(t)
    assert outs == [_greedy(model, p, k, 8) for p in PROMPTS]
    assert all(e.seen == u.length for u, e in zip(ues, edges))  # both sides at the same position


def test_concurrent_requests_join_and_leave_one_batch_and_match_unbatched(tiny_llama: SplitModel):
    model, k = tiny_llama, 2
    lengths = [12, 3, 9, 1, 6]  # requests leave the batch at different steps
    pool = ThreadPoolExecutor(max_workers=1)
    store = EdgeStore(model)
    edge = StepBatcher(store.step_many, pool, wait_s=0.01)

    def head_batch(items):
        return head_step(model, [s for s, _ in items], [t for _, t in items])

    ue = StepBatcher(head_batch, pool, wait_s=0.01)

    async def one(i: int, prompt: str, n: int, delay: float) -> list[int]:
        await asyncio.sleep(delay)  # the last request joins while the others are decoding
        req = UERequest(f"r{i}", model.tokenizer(prompt).input_ids, k=k, max_tokens=n)
        events = [e async for e in split_generate(
            model, req, resolve_link("clean", None, "clean"), lambda rid, msg: edge.submit(rid, (rid, msg)),
            eos_ids=set(), ue_step=lambda session, token: ue.submit(id(session), (session, token)))]
        return [e["token_id"] for e in events[:-1]]

    async def run_all():
        return await asyncio.gather(*(one(i, p, n, 0.05 if i == 4 else 0.0)
                                      for i, (p, n) in enumerate(zip(PROMPTS, lengths))))

    batched = asyncio.run(run_all())
    pool.shutdown()
    assert batched == [_greedy(model, p, k, n) for p, n in zip(PROMPTS, lengths)]
    assert edge.mean_batch > 1.5 and ue.mean_batch > 1.5  # the steps really were batched


def test_a_one_token_prompt_in_a_batch_of_decode_steps_runs_as_a_prompt(tiny_llama: SplitModel):
    model, k = tiny_llama, 1
    hidden = model.head(torch.tensor([[5, 6, 7]]), k).hidden  # [1, 3, H]
    one = model.head(torch.tensor([[9]]), k).hidden  # [1, 1, H]: a whole 1-token prompt
    batched, alone = EdgeStore(model), EdgeStore(model)
    for store in (batched, alone):
        store.step("old", EdgeMessage(k, 0, hidden[:, :2]))
    together = batched.step_many([("old", EdgeMessage(k, 2, hidden[:, 2:])), ("new", EdgeMessage(k, 0, one))])
    separate = [alone.step("old", EdgeMessage(k, 2, hidden[:, 2:])), alone.step("new", EdgeMessage(k, 0, one))]
    assert [r["token"] for r in together] == [r["token"] for r in separate]
    assert batched.sessions["new"].session.seen == 1 and batched.sessions["old"].session.seen == 3
