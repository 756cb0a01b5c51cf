"""The device path on SmolLM2 (slow): greedy output through activations equals ``model.generate``.

Edge in Serve on 127.0.0.1, the UE half in this process with only its layers loaded; fp32 and fp16
payloads at a shallow and a deep split.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def edge_url():
    from splitlab.serve.activation_ingress import start_device_local
    from splitlab.serve.config import ServeConfig
    from splitlab.serve.local import stop_local

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    url = start_device_local(ServeConfig(model="smollm2", max_split=15, replica_cpus=0.5, edge_min_replicas=1,
                                         edge_max_replicas=1, max_context=512), num_cpus=2)
    try:
        yield url
    finally:
        stop_local()
        torch.set_num_threads(threads)


def test_smollm2_greedy_output_equals_generate(edge_url):
    from splitlab.client import DeviceClient
    from splitlab.llm import SplitModel

    full = SplitModel.load("smollm2")
    client = DeviceClient(edge_url, fmt="fp32")
    assert client.model.part == "ue" and client.model.part_k == 15  # only the head's layers were loaded
    for prompt in ("The capital of France is", "Split inference runs the first layers"):
        ids = full.tokenizer(prompt).input_ids
        ref = full.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=0,
                                  eos_token_id=full.tokenizer.eos_token_id)[0, len(ids):].tolist()
        for fmt, k in (("fp32", 0), ("fp16", 4), ("fp32", 15), ("fp16", 10)):
            client.fmt = fmt
            out = client.generate(prompt, k, 16)
            assert out.token_ids == ref[: len(out.token_ids)] and len(out.token_ids) == len(ref), (prompt, fmt, k)


def test_smollm2_a_random_k_schedule_through_the_path_equals_generate(edge_url):
    import numpy as np

    from splitlab.client import DeviceClient
    from splitlab.llm import SplitModel

    full = SplitModel.load("smollm2")
    client = DeviceClient(edge_url, fmt="fp32")
    prompt = "The capital of France is"
    ids = full.tokenizer(prompt).input_ids
    ref = full.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=0,
                              eos_token_id=full.tokenizer.eos_token_id)[0, len(ids):].tolist()
    schedule = np.random.default_rng(3).integers(0, 16, size=16).tolist()
    out = client.generate(prompt, schedule, 16)
    assert out.token_ids == ref, schedule
    moves = out.stats.migrations
    assert len(moves) == sum(a != b for a, b in zip(schedule, schedule[1:len(out.token_ids)])) > 0
