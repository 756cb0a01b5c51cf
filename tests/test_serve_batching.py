"""Batched decode: many requests' next tokens as one step over their own KV caches.

Greedy outputs of batched requests must equal the one-request-at-a-time outputs, while requests of
different lengths join and leave between steps.
"""
from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from splitlab.llm import SplitModel
from splitlab.llm.batching import head_step, tail_step
from splitlab.llm.generation import EdgeSession, UESession, generate
from splitlab.serve.batching import StepBatcher
from splitlab.serve.edge import EdgeMessage, EdgeStore
from splitlab.serve.edge_client import BatchedEdge
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


def test_a_prompt_leaves_for_the_edge_without_waiting_for_other_requests_prefills(tiny_llama: SplitModel):
    # Requests that arrive together queue their prefills on the UE's one compute thread; each prompt must go
    # to the edge once its own head is done (before: its transmission queued behind every other prefill,
    # so the edge sat idle until the UE had run all of them).
    model, k = tiny_llama, 2
    pool = ThreadPoolExecutor(max_workers=1)
    done: list[str] = []  # compute calls finished on the compute thread, in order
    prefills_done_at_send: list[int] = []  # at each prompt's arrival at the edge
    store = EdgeStore(model)

    def slow(fn):
        def call(*args):
            time.sleep(0.05)  # a prefill long enough for the ordering to show
            out = fn(*args)
            done.append(getattr(fn, "__name__", "?"))
            return out
        return call

    async def run(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, slow(fn), *args)

    async def edge_step(request_id: str, msg: EdgeMessage) -> dict:
        if msg.hidden.shape[1] > 1:
            prefills_done_at_send.append(done.count("prefill"))
        return store.step(request_id, msg)

    async def one(i: int, prompt: str) -> list[int]:
        req = UERequest(f"r{i}", model.tokenizer(prompt).input_ids, k=k, max_tokens=3)
        events = [e async for e in split_generate(model, req, resolve_link("clean", None, "clean"), edge_step,
                                                  run=run, eos_ids=set())]
        return [e["token_id"] for e in events[:-1]]

    async def run_all():
        return await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS[:4])))

    tokens = asyncio.run(run_all())
    pool.shutdown()
    assert tokens == [_greedy(model, p, k, 3) for p in PROMPTS[:4]]
    assert "transmit" not in done  # not on the compute thread
    assert prefills_done_at_send[0] <= 2, prefills_done_at_send  # 4 before the fix


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


class InProcessEdge:
    """Edge replicas in this process, reached through ``send(route, items)`` as ``UEHalf`` reaches
    ``EdgeHalf.step_batch`` (a request id routes by rendezvous hashing, a replica route names one)."""

    def __init__(self, model: SplitModel, replicas: int = 1):
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.stores = {f"replica{j}": EdgeStore(model) for j in range(replicas)}
        self.batchers = {name: StepBatcher(store.step_many, self.pool, wait_s=0.05)
                         for name, store in self.stores.items()}
        self.calls: list[tuple[str, int, int]] = []  # (replica, decode steps, prompts) carried per call

    async def send(self, route: str, items: list[tuple[str, EdgeMessage]]) -> list:
        from splitlab.serve.routing import REPLICA_ROUTE, owner_order

        if route.startswith(REPLICA_ROUTE):
            name = route[len(REPLICA_ROUTE):]
        else:
            name = owner_order(route, list(self.stores))[0]
        self.calls.append((name, sum(msg.start > 0 for _, msg in items), sum(msg.start == 0 for _, msg in items)))
        replies = await self.batchers[name].submit_many([(rid, (rid, msg)) for rid, msg in items])
        return [{**r, "replica": name} if isinstance(r, dict) else r for r in replies]


def _batched_run(model: SplitModel, requests: list[UERequest], edge: InProcessEdge) -> tuple[list, BatchedEdge]:
    """Run ``requests`` concurrently as a UE replica does: head steps and edge calls batched per step."""
    pool = ThreadPoolExecutor(max_workers=1)
    head = StepBatcher(lambda items: head_step(model, [s for s, _ in items], [t for _, t in items]), pool, wait_s=0.05)
    link = BatchedEdge(edge.send, wait_s=0.05)

    async def one(req: UERequest):
        try:
            events = [e async for e in split_generate(
                model, req, resolve_link("clean", None, "clean"), link.step, eos_ids=set(),
                ue_step=lambda session, token: head.submit(id(session), (session, token)))]
            return [e["token_id"] for e in events[:-1]]
        except Exception as err:  # noqa: BLE001 - the test checks which request failed and why
            return err
        finally:
            link.end(req.request_id)

    async def run_all():
        return await asyncio.gather(*(one(r) for r in requests))

    out = asyncio.run(run_all())
    pool.shutdown()
    return out, link


@pytest.mark.parametrize("replicas", [1, 2])
def test_the_ue_sends_one_edge_call_per_batch_step_and_matches_unbatched_output(tiny_llama: SplitModel, replicas):
    model, k, n = tiny_llama, 2, 8
    requests = [UERequest(f"r{i}", model.tokenizer(p).input_ids, k=k, max_tokens=n) for i, p in enumerate(PROMPTS)]
    edge = InProcessEdge(model, replicas)
    batched, link = _batched_run(model, requests, edge)
    assert batched == [_greedy(model, p, k, n) for p in PROMPTS]
    used = set(link.pins.values()) | {name for name, _, _ in edge.calls}
    # One call per prompt (routed by request id), then one call per decode step and replica in use, but
    # for one early call per replica: a prompt that reaches the edge first may take its first step
    # before the other prompts are in (prompts leave as soon as their own head is done).
    prompts = [c for c in edge.calls if c[2]]
    steps = [c for c in edge.calls if c[1]]
    assert len(prompts) == len(PROMPTS) and all(c[1:] == (0, 1) for c in prompts)
    assert sum(c[1] for c in steps) == (n - 1) * len(PROMPTS)
    assert (n - 1) * len(used) <= len(steps) <= n * len(used), edge.calls
    assert link.calls == len(edge.calls) and not link.pins  # every request ended and was forgotten
    if replicas == 2:
        assert len(used) == 2  # rendezvous hashing spread the five requests over both replicas


def test_a_failing_request_does_not_fail_its_batch_mates(tiny_llama: SplitModel):
    model = tiny_llama
    # An edge loaded for k >= 2 cannot serve a request at k = 1: that request fails, the others decode.
    edge_half = SplitModel.load("tiny-llama", part="edge", k=2)
    edge = InProcessEdge(edge_half)
    requests = [UERequest(f"r{i}", model.tokenizer(p).input_ids, k=1 if i == 2 else 2, max_tokens=6)
                for i, p in enumerate(PROMPTS)]
    out, _ = _batched_run(model, requests, edge)
    assert isinstance(out[2], ValueError) and "k >= 2" in str(out[2])
    others = [i for i in range(len(PROMPTS)) if i != 2]
    assert [out[i] for i in others] == [_greedy(model, PROMPTS[i], 2, 6) for i in others]
    assert "r2" not in edge.stores["replica0"].sessions  # its half-built cache was dropped

    # Inside one batched decode step: a malformed step is refused by name, one that fails in the batched
    # compute is found by stepping the group one by one; the batch-mates get their right tokens either way.
    store, alone = EdgeStore(model), EdgeStore(model)
    prompts = [model.head(torch.tensor([model.tokenizer(p).input_ids]), 2).hidden for p in PROMPTS[:3]]  # [1, T, H]
    for s in (store, alone):
        for i, hidden in enumerate(prompts):
            s.step(f"r{i}", EdgeMessage(2, 0, hidden))
    nxt = [model.head(torch.tensor([[7 + i]]), 2, position_ids=torch.tensor([[h.shape[1]]])).hidden
           for i, h in enumerate(prompts)]  # [1, 1, H] each
    expected = [alone.step(f"r{i}", EdgeMessage(2, h.shape[1], x))["token"]
                for i, (h, x) in enumerate(zip(prompts, nxt))]
    bad_shape = EdgeMessage(2, prompts[1].shape[1], nxt[1][..., :-1])
    bad_dtype = EdgeMessage(2, prompts[1].shape[1], nxt[1].double())  # fails only inside the model
    for bad, kind in ((bad_shape, "must be \\[1, T >= 1"), (bad_dtype, "")):
        replies = store.step_many([(f"r{i}", bad if i == 1 else EdgeMessage(2, h.shape[1], x))
                                   for i, (h, x) in enumerate(zip(prompts, nxt))])
        assert isinstance(replies[1], Exception)
        assert kind == "" or re.search(kind, str(replies[1]))
        assert [replies[0]["token"], replies[2]["token"]] == [expected[0], expected[2]]
        for i in (0, 2):  # put the good ones back one step (drop and rebuild) for the next case
            store.release(f"r{i}")
            store.step(f"r{i}", EdgeMessage(2, 0, prompts[i]))


def test_a_request_cancelled_mid_batch_leaves_its_batch_mates_right_and_is_forgotten(tiny_llama: SplitModel):
    model, k, n = tiny_llama, 2, 10
    edge = InProcessEdge(model)
    pool = ThreadPoolExecutor(max_workers=1)
    head = StepBatcher(lambda items: head_step(model, [s for s, _ in items], [t for _, t in items]), pool, wait_s=0.05)
    link = BatchedEdge(edge.send, wait_s=0.05)
    requests = [UERequest(f"r{i}", model.tokenizer(p).input_ids, k=k, max_tokens=n) for i, p in enumerate(PROMPTS)]
    tokens_of: dict[str, list[int]] = {r.request_id: [] for r in requests}

    async def one(req: UERequest):
        try:
            async for event in split_generate(model, req, resolve_link("clean", None, "clean"), link.step,
                                              eos_ids=set(), ue_step=lambda s, t: head.submit(id(s), (s, t))):
                if "token_id" in event:
                    tokens_of[req.request_id].append(event["token_id"])
        finally:
            link.end(req.request_id)  # as UEHalf.generate does, also when cancelled (client gone, deadline)

    async def run_all():
        tasks = [asyncio.create_task(one(r)) for r in requests]
        while len(tokens_of["r1"]) < 3:  # cancel r1 while it decodes in lock-step with the others
            await asyncio.sleep(0.001)
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(run_all())
    pool.shutdown()
    assert isinstance(outcomes[1], asyncio.CancelledError) and len(tokens_of["r1"]) < n
    assert [tokens_of[f"r{i}"] for i in (0, 2, 3, 4)] == [_greedy(model, PROMPTS[i], k, n) for i in (0, 2, 3, 4)]
    assert not link.pins and not link.open and "r1" not in link.batcher.last_seen  # nothing waits for it


def test_the_ue_replica_forgets_an_ended_request_in_its_head_batcher(tiny_llama: SplitModel):
    """An ended request must not hold the next one's head steps back: a batcher still expecting it waits
    ``batch_wait_s`` at every step of the next request, for ACTIVE_WINDOW_S."""
    from dataclasses import asdict
    from types import SimpleNamespace

    from splitlab.serve.config import ServeConfig
    from splitlab.serve.ue import UEHalf

    edge = InProcessEdge(tiny_llama)

    class Handle:  # what UEHalf calls: handle.options(multiplexed_model_id=...).step_batch / .release
        def __init__(self, route: str | None = None):
            self.route = route

        def options(self, multiplexed_model_id: str | None = None, **_):
            return Handle(multiplexed_model_id)

        @property
        def step_batch(self):
            return SimpleNamespace(remote=lambda items: edge.send(self.route, items))

        @property
        def release(self):
            return SimpleNamespace(remote=lambda request_id: None)

    threads = torch.get_num_threads()
    try:
        ue = UEHalf.func_or_class(ServeConfig(model="tiny-llama", max_split=3).to_dict(), Handle())
        ids = tiny_llama.tokenizer(PROMPTS[0]).input_ids

        async def run(request_id: str) -> list:
            return [e async for e in ue.generate(asdict(UERequest(request_id, ids, k=2, max_tokens=4)))]

        for request_id in ("first", "second"):
            events = asyncio.run(run(request_id))
            assert events[-1]["completion_tokens"] == 4
            assert not ue.batcher.last_seen and not ue.link.batcher.last_seen, request_id
        assert ue.batcher.batches == 2 * 3  # 3 decode steps each; every one ran at once
    finally:
        torch.set_num_threads(threads)
