"""The serving pieces without Ray: config, request checks, text assembly, policy rules, and the token
loop between a UE and an in-process edge (soft-state cache rebuilds, retries, eviction)."""
from __future__ import annotations

import asyncio
import json
import math
import shutil

import numpy as np
import pytest
import torch

from splitlab.envs.quality_grid import QualityGrid
from splitlab.llm import SplitModel
from splitlab.llm.generation import generate
from splitlab.serve.config import ServeConfig
from splitlab.serve.edge import EdgeMessage, EdgeStore
from splitlab.serve.policy import (
    FixedRule,
    GridRule,
    export_policy,
    fit_split_range,
    load_policy_rule,
    load_rllib_rule,
    make_rule,
)
from splitlab.serve.profiles import CHANNEL_PROFILES, resolve_link
from splitlab.serve.admission import Admission, Gate, Overloaded
from splitlab.serve.protocol import (
    Limits,
    RequestError,
    check_content_type,
    check_context,
    parse_body,
    parse_chat,
    parse_completion,
    read_body,
)
from splitlab.serve.text import TextAssembler
from splitlab.serve.ue import EdgeUnavailable, UERequest, split_generate

LIMITS = Limits("tiny-llama", 0, 2, 64, 128, vocab_size=1000)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # As in a replica; with two threads on a busy 2-core machine tiny models crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- config
def test_config_takes_serve_run_strings_and_names_bad_keys():
    cfg = ServeConfig.from_dict({"model": "tiny-llama", "max_split": "3", "wait_link": "true", "w_c": "0.5",
                                 "policy_grid": "none"})
    assert (cfg.max_split, cfg.wait_link, cfg.w_c, cfg.policy_grid) == (3, True, 0.5, None)
    with pytest.raises(ValueError, match="unknown serve config keys \\['max_splt'\\]"):
        ServeConfig.from_dict({"max_splt": 3})
    with pytest.raises(ValueError, match="max_split must be an integer"):
        ServeConfig.from_dict({"max_split": "ten"})
    with pytest.raises(ValueError, match="default_profile must be one of"):
        ServeConfig(default_profile="lunar")
    with pytest.raises(ValueError, match="max_split \\(1\\) must be >= min_split \\(2\\)"):
        ServeConfig(min_split=2, max_split=1)


def test_split_range_defaults_to_half_the_layers_and_fixed_split_to_a_third():
    cfg = ServeConfig()
    assert cfg.split_range(30) == (0, 15) and cfg.fixed_split(30) == 10
    with pytest.raises(ValueError, match="max_split must be <= the model's 4 layers"):
        ServeConfig(max_split=5).split_range(4)
    with pytest.raises(ValueError, match="default_split must be in \\[0, 2\\]"):
        ServeConfig(default_split=3).fixed_split(4)


# ---------------------------------------------------------------------- request checks
BAD_BODIES = [
    # (raw body, param named, status)
    (b"{not json", None, 400),
    (b"\xff\xfe{}", None, 400),
    (b"[1, 2]", None, 400),
    (b"", None, 400),
    (b'{"max_tokens": 4}', "prompt", 400),
    (b'{"prompt": ""}', "prompt", 400),
    (b'{"prompt": 42}', "prompt", 400),
    (b'{"prompt": ["a", 7]}', "prompt[1]", 400),
    (b'{"prompt": []}', "prompt", 400),
    (b'{"prompt": [[1, 2], []]}', "prompt[1]", 400),
    (b'{"prompt": [1, 999999]}', "prompt", 400),
    (b'{"prompt": "hi", "max_tokens": 1' + b"0" * 5000 + b'}', None, 400),
    (b'{"prompt": ' + b"[" * 50000 + b"]" * 50000 + b'}', None, 400),
    (b'{"prompt": "hi", "n": true}', "n", 400),
    (b'{"prompt": "hi", "n": 1.0}', "n", 400),
    (b'{"prompt": "hi", "logprobs": 21}', "logprobs", 400),
    (b'{"prompt": "hi", "logprobs": true}', "logprobs", 400),
    (b'{"prompt": "hi", "echo": 1}', "echo", 400),
    (b'{"prompt": "hi", "stream_options": {"include_usage": true}}', "stream_options", 400),
    (b'{"prompt": "hi", "stream": true, "stream_options": {"include_usage": "yes"}}', "stream_options.include_usage", 400),
    (b'{"prompt": "hi", "best_of": 3}', "best_of", 400),
    (b'{"prompt": "\\ud800"}', "prompt", 400),
    (b'{"prompt": "hi", "max_tokens": 0}', "max_tokens", 400),
    (b'{"prompt": "hi", "max_tokens": 65}', "max_tokens", 400),
    (b'{"prompt": "hi", "max_tokens": "8"}', "max_tokens", 400),
    (b'{"prompt": "hi", "max_tokens": 8.0}', "max_tokens", 400),
    (b'{"prompt": "hi", "max_tokens": true}', "max_tokens", 400),
    (b'{"prompt": "hi", "temperature": -1}', "temperature", 400),
    (b'{"prompt": "hi", "temperature": "hot"}', "temperature", 400),
    (b'{"prompt": "hi", "top_p": 0}', "top_p", 400),
    (b'{"prompt": "hi", "stream": "yes"}', "stream", 400),
    (b'{"prompt": "hi", "stop": [1]}', "stop", 400),
    (b'{"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}', "stop", 400),
    (b'{"prompt": "hi", "split": 3}', "split", 400),
    (b'{"prompt": "hi", "split": -1}', "split", 400),
    (b'{"prompt": "hi", "split": "2"}', "split", 400),
    (b'{"prompt": "hi", "channel_profile": "lunar"}', "channel_profile", 400),
    (b'{"prompt": "hi", "snr_db": NaN}', "snr_db", 400),
    (b'{"prompt": "hi", "snr_db": Infinity}', "snr_db", 400),
    (b'{"prompt": "hi", "snr_db": 500}', "snr_db", 400),
    (b'{"prompt": "hi", "snr_db": "10"}', "snr_db", 400),
    (b'{"prompt": "hi", "n": 2}', "n", 400),
    (b'{"prompt": "x", "max_tokens": 0, "echo": false}', "max_tokens", 400),
    (b'{"prompt": "hi", "seed": 1.5}', "seed", 400),
    (b'{"prompt": "hi", "snr_trace": [10, 0]}', "resplit_every", 400),
    (b'{"prompt": "hi", "resplit_every": 4}', "resplit_every", 400),
    (b'{"prompt": "hi", "snr_trace": [10], "resplit_every": 0}', "resplit_every", 400),
    (b'{"prompt": "hi", "snr_trace": [10], "resplit_every": 4, "split": 1}', "snr_trace", 400),
    (b'{"prompt": "hi", "snr_trace": [], "resplit_every": 4}', "snr_trace", 400),
    (b'{"prompt": "hi", "snr_trace": 10, "resplit_every": 4}', "snr_trace", 400),
    (b'{"prompt": "hi", "snr_trace": [10, "5"], "resplit_every": 4}', "snr_trace", 400),
    (b'{"prompt": "hi", "snr_trace": [10, 900], "resplit_every": 4}', "snr_trace", 400),
    (b'{"prompt": "hi", "model": "gpt-4"}', "model", 404),
]


@pytest.mark.parametrize("raw,param,status", BAD_BODIES)
def test_bad_completion_bodies_name_the_field(raw, param, status):
    with pytest.raises(RequestError) as info:
        parse_completion(parse_body(raw), LIMITS)
    err = info.value
    assert (err.param, err.status) == (param, status), err.message
    if param:
        assert param in err.message
    body = err.body()["error"]
    assert body["param"] == param and body["message"] == err.message


@pytest.mark.parametrize("messages,param", [
    (None, "messages"), ([], "messages"), ("hi", "messages"), ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"), ([{"role": "user", "content": ""}], "messages"),
    ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content"),
])
def test_bad_chat_bodies_name_the_field(messages, param):
    with pytest.raises(RequestError) as info:
        parse_chat({"messages": messages}, LIMITS)
    assert info.value.param == param


def test_good_requests_parse_with_openai_defaults():
    req = parse_completion({"prompt": ["hi"], "stop": "\n", "snr_db": 10, "split": 2, "model": "tiny-llama"}, LIMITS)
    assert (req.prompt, req.max_tokens, req.temperature, req.top_p, req.stop, req.stream) == ("hi", 16, 1.0, 1.0, ["\n"], False)
    assert (req.snr_db, req.split) == (10.0, 2)
    chat = parse_chat({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                       "max_completion_tokens": 5}, LIMITS)
    assert chat.messages == [{"role": "user", "content": "hi"}] and chat.max_tokens == 5
    with pytest.raises(RequestError, match="exceeds the context of 128 tokens") as info:
        check_context(120, req, LIMITS)
    assert info.value.param == "prompt"


def test_evaluation_requests_parse_prompt_lists_logprobs_and_echo():
    req = parse_completion({"prompt": ["a b", [1, 2, 3]], "max_tokens": 0, "echo": True, "logprobs": 5}, LIMITS)
    assert (req.prompts, req.max_tokens, req.echo, req.logprobs) == (["a b", [1, 2, 3]], 0, True, 5)
    assert parse_completion({"prompt": [4, 5]}, LIMITS).prompts == [[4, 5]]  # one prompt of token ids
    stream = parse_completion({"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}, LIMITS)
    assert stream.include_usage and parse_completion({"prompt": "x"}, LIMITS).logprobs is None
    with pytest.raises(RequestError, match="cannot fit the context") as info:
        parse_completion({"prompt": "x" * (128 * 32 + 1)}, LIMITS)  # refused without tokenising
    assert info.value.param == "prompt"
    with pytest.raises(RequestError) as info:
        parse_chat({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, LIMITS)
    assert info.value.param == "logprobs"


def test_content_type_and_body_size_are_checked_before_the_body_is_read():
    check_content_type("application/json; charset=utf-8")
    for bad in (None, "text/plain", "application/x-www-form-urlencoded"):
        with pytest.raises(RequestError) as info:
            check_content_type(bad)
        assert (info.value.status, info.value.param) == (415, "Content-Type")
    pulled = []

    async def chunks(n=10_000, size=64 * 1024):  # a 640 MB chunked body, never materialised
        for i in range(n):
            pulled.append(i)
            yield b"x" * size

    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(chunks(), None, limit=1024 * 1024))
    assert info.value.status == 413 and len(pulled) == 17  # stopped at the first chunk over 1 MiB
    pulled.clear()
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(chunks(), str(10**12), limit=1024 * 1024))
    assert info.value.status == 413 and not pulled  # Content-Length: refused before a byte is read
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(chunks(), "-5", limit=1024))
    assert info.value.param == "Content-Length"
    assert asyncio.run(read_body(chunks(2, 10), "20", limit=1024)) == b"x" * 20


def test_gate_checks_keys_in_constant_time_and_hosts():
    gate = Gate(["key-one-123", "key-two-456"], ["127.0.0.1", "localhost", "::1"])
    gate.check_key("Bearer key-two-456")
    for bad in (None, "", "Bearer nope", "key-one-123", "Basic key-one-123"):
        with pytest.raises(RequestError) as info:
            gate.check_key(bad)
        assert (info.value.status, info.value.body()["error"]["code"]) == (401, "invalid_api_key")
    Gate([], ["localhost"]).check_key(None)  # no keys configured: open
    for host in ("127.0.0.1:8000", "localhost", "[::1]:80", "LOCALHOST:1"):
        gate.check_host(host)
    for host in ("evil.example:8000", None, "127.0.0.2"):
        with pytest.raises(RequestError) as info:
            gate.check_host(host)
        assert (info.value.status, info.value.param) == (400, "Host")
    Gate([], ["*"]).check_host("anything")


def test_admission_queues_then_refuses_with_429_and_times_out_with_503():
    async def scenario():
        gate = Admission(capacity=2, max_queued=1, timeout_s=0.2)
        await gate.acquire(2)
        waiter = asyncio.create_task(gate.acquire(1))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as full:
            await gate.acquire(1)
        await gate.release(1)  # the waiter gets the freed stream
        await asyncio.wait_for(waiter, 1)
        with pytest.raises(Overloaded) as late:
            await gate.acquire(1)  # queue has room, but nothing frees within 0.2 s
        return full.value, late.value, gate.running

    full, late, running = asyncio.run(scenario())
    assert (full.status, late.status, running) == (429, 503, 2)
    assert full.headers == {"Retry-After": "1"} and full.body()["error"]["type"] == "rate_limit_error"


def test_link_resolution():
    assert resolve_link(None, None, "clean").config.kind == "clean"
    only_snr = resolve_link(None, 3.0, "clean")
    assert (only_snr.profile, only_snr.config.kind, only_snr.snr_db) == ("good", "awgn", 3.0)
    poor = resolve_link("poor", None, "clean")
    assert poor.config.fading == "rayleigh" and poor.snr_db == CHANNEL_PROFILES["poor"].snr_db
    assert resolve_link("digital-qpsk", 10.0, "clean").downlink_time_s() == pytest.approx(32 / 40e6)


# ---------------------------------------------------------------------- text
def test_text_assembler_stops_at_a_stop_sequence_split_over_tokens(tiny_llama: SplitModel):
    tok = tiny_llama.tokenizer
    ids = tok("Hello world. Bye now").input_ids
    text = TextAssembler(tok, stop=["d. B"])
    deltas = [text.add(i) for i in ids]
    out = "".join(deltas) + text.flush()
    assert out == "Hello worl" and text.stopped
    # Nothing of a possible stop sequence leaks before it is decided.
    plain = TextAssembler(tok, stop=["zzz"])
    assert "".join(plain.add(i) for i in ids) + plain.flush() == tok.decode(ids)


# ---------------------------------------------------------------------- policy
def _grid(num_layers: int = 4) -> QualityGrid:
    # Early splits suffer at low SNR; at 30 dB every k is as good as clean.
    ks, snrs = [0, 1, 2, 3], [0.0, 10.0, 30.0]
    ppl = [[80.0, 30.0, 10.0], [40.0, 15.0, 10.0], [20.0, 12.0, 10.0], [11.0, 10.5, 10.0]]
    rows = [{"k": k, "channel": "awgn", "param": "snr_db", "value": s, "ppl_mean": ppl[i][j]}
            for i, k in enumerate(ks) for j, s in enumerate(snrs)]
    return QualityGrid.from_dict({"model": "tiny-llama", "num_layers": num_layers, "hidden_size": 64,
                                  "ppl_clean": 10.0, "rows": rows})


def test_grid_rule_trades_quality_against_ue_layers(tmp_path):
    rule = GridRule(_grid(), low=0, high=3, num_layers=4, w_q=1.0, w_c=0.1)
    assert rule({"snr_db": 30.0, "kind": "awgn"}) == 0  # clean enough: fewest UE layers
    assert rule({"snr_db": 0.0, "kind": "awgn"}) == 3  # noisy: the robust deep split
    assert rule({"snr_db": 0.0, "kind": "clean"}) == 0  # a clean channel corrupts nothing
    assert GridRule(_grid(), low=0, high=2, num_layers=4)({"snr_db": 0.0}) == 2  # limited to the range
    path = tmp_path / "grid.json"
    rows = [{"k": int(k), "channel": "awgn", "param": "snr_db", "value": float(v), "ppl_mean": float(p)}
            for k, row in zip(_grid().ks, _grid().ppl) for v, p in zip(_grid().values, row)]
    path.write_text(json.dumps({"model": "tiny-llama", "num_layers": 4, "hidden_size": 64, "ppl_clean": 10.0,
                                "rows": rows}))
    cfg = ServeConfig(model="tiny-llama", max_split=3, policy_grid=str(path))
    assert make_rule(cfg, 4).name == "grid"
    assert isinstance(make_rule(ServeConfig(model="tiny-llama"), 4), FixedRule)


def _policy_run(tmp_path, n_actions=3, **info):
    """A folder laid out as `splitlab train` leaves it: policy/ (an RLModule) and policy.json."""
    import gymnasium as gym
    from ray.rllib.algorithms.ppo.torch.default_ppo_torch_rl_module import DefaultPPOTorchRLModule
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from splitlab.channel import ChannelConfig
    from splitlab.envs.wireless import FEATURE_HIGH, FEATURE_LOW, Observer

    spec = RLModuleSpec(module_class=DefaultPPOTorchRLModule,
                        observation_space=gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32),
                        action_space=gym.spaces.Discrete(n_actions), model_config={"fcnet_hiddens": [8]})
    spec.build().save_to_path(tmp_path / "policy")
    observer = Observer(num_layers=4, hidden_size=64, tokens=16, link=ChannelConfig(kind="awgn"))
    (tmp_path / "policy.json").write_text(json.dumps({"candidate_ks": [1, 2, 3], "num_layers": 4, "env": "split",
                                                      "preset": "wireless", "observer": observer.to_dict(),
                                                      **info}))
    return tmp_path


def test_rllib_rule_loads_a_train_run_and_refuses_what_it_cannot_serve(tmp_path, monkeypatch):
    run = _policy_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    for path in (run, run / "policy", "run/policy"):  # the run folder or its policy/ folder, relative too
        rule = load_rllib_rule(path, num_layers=4)
        assert rule({"snr_db": 7.0}) in (1, 2, 3) and rule.name == "rllib"
    obs = rule.observation({"snr_db": 25.0})  # the env's features at reset: no trend, no previous split
    assert obs[0] == pytest.approx(1.0) and obs[1] == 0.0 and obs[3] == 0.0 and obs[4] == 1.0
    with pytest.raises(ValueError, match="trained for a 4-layer model; the service's model has 30"):
        load_rllib_rule(run, num_layers=30)
    with pytest.raises(FileNotFoundError, match="is not a `splitlab train` run"):
        load_rllib_rule(tmp_path, num_layers=4)
    with pytest.raises(ValueError, match="module has 2 actions but its policy.json lists 3"):
        load_rllib_rule(_policy_run(tmp_path / "two", n_actions=2), num_layers=4)
    with pytest.raises(ValueError, match="preset 'paper'.*preset: wireless"):
        load_rllib_rule(_policy_run(tmp_path / "paper", preset="paper", observer=None), num_layers=4)
    # The service's split range grows to the policy's candidates, or says which bound to widen.
    assert fit_split_range(ServeConfig(model="tiny-llama", policy_checkpoint=str(run)), 4).max_split == 3
    with pytest.raises(ValueError, match=r"may choose splits \[3\] outside .*max_split=2"):
        fit_split_range(ServeConfig(model="tiny-llama", max_split=2, policy_checkpoint=str(run)), 4)


def test_served_policies_are_weights_and_json_and_pickled_checkpoints_are_refused(tmp_path):
    from ray.rllib.core.rl_module.rl_module import RLModule

    run = _policy_run(tmp_path / "run")
    with pytest.raises(ValueError, match="only RLlib's checkpoint.*unpickling.*--trust-checkpoint"):
        load_policy_rule(run, num_layers=4)
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        make_rule(ServeConfig(model="tiny-llama", max_split=3, policy_checkpoint=str(run)), 4)
    assert load_policy_rule(run, num_layers=4, trust_checkpoint=True).name == "rllib"  # the operator's own file

    module = RLModule.from_checkpoint((run / "policy").resolve())
    export_policy(module, run)
    rule, trusted = load_policy_rule(run, num_layers=4), load_rllib_rule(run, num_layers=4)
    assert rule.name == "policy" and json.loads((run / "policy_net.json").read_text())["layers"][1] == {"activation": "tanh"}
    snrs = np.linspace(-10, 40, 41)
    assert [rule({"snr_db": x}) for x in snrs] == [trusted({"snr_db": x}) for x in snrs]
    obs = rule.observation({"snr_db": 12.0})
    import torch as th
    from ray.rllib.core.columns import Columns
    expected = module.forward_inference({Columns.OBS: th.as_tensor(obs[None], dtype=th.float32)})[Columns.ACTION_DIST_INPUTS]
    np.testing.assert_allclose(rule.logits(obs), expected[0].detach().numpy(), atol=1e-5)

    # numpy weights load with allow_pickle=False: an object array (a pickle inside) is refused.
    from safetensors.numpy import load_file
    tensors = load_file(str(run / "policy.safetensors"))
    (run / "policy.safetensors").unlink()
    np.savez(run / "policy.npz", **tensors)
    assert [load_policy_rule(run, 4)({"snr_db": x}) for x in snrs[:5]] == [trusted({"snr_db": x}) for x in snrs[:5]]
    np.savez(run / "policy.npz", **{**tensors, "linear0.weight": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickle"):
        load_policy_rule(run, 4)({"snr_db": 1.0})


@pytest.mark.parametrize("dueling", [True, False])
def test_a_dqn_policy_exports_without_pickle_and_acts_as_rllibs_module(tmp_path, dueling):
    import gymnasium as gym
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from splitlab.envs.wireless import FEATURE_HIGH, FEATURE_LOW

    run = _policy_run(tmp_path / "run")
    config = (DQNConfig().environment(observation_space=gym.spaces.Box(FEATURE_LOW, FEATURE_HIGH, dtype=np.float32),
                                      action_space=gym.spaces.Discrete(3))
              .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16], head_fcnet_hiddens=[16]))
              .training(dueling=dueling))
    module = config.get_rl_module_spec().build()
    assert type(module).__name__ == "DefaultDQNTorchRLModule"
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # RLlib starts the heads near zero (one action everywhere): spread them out
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen))
    shutil.rmtree(run / "policy")
    module.save_to_path((run / "policy").resolve())
    export_policy(module, run)
    rule, trusted = load_policy_rule(run, num_layers=4), load_rllib_rule(run, num_layers=4)
    assert rule.name == "policy"
    snrs = np.linspace(-10, 40, 101)
    assert [rule({"snr_db": x}) for x in snrs] == [trusted({"snr_db": x}) for x in snrs]
    # Beyond the requests' observations: random points of the observation box rank actions alike.
    import torch as th
    from ray.rllib.core.columns import Columns
    obs = np.random.default_rng(0).uniform(FEATURE_LOW, FEATURE_HIGH, (200, len(FEATURE_LOW))).astype(np.float32)
    actions = module.forward_inference({Columns.OBS: th.as_tensor(obs)})[Columns.ACTIONS].numpy()  # [200]
    assert len(set(actions.tolist())) > 1  # the check can tell actions apart
    np.testing.assert_array_equal([int(np.argmax(rule.logits(o))) for o in obs], actions)

    config = config.training(num_atoms=5)  # distributional: its ranking is no plain network; refused by name
    with pytest.raises(ValueError, match="num_atoms=5"):
        export_policy(config.get_rl_module_spec().build(), tmp_path)


# ---------------------------------------------------------------------- the token loop
def test_ue_half_runs_any_smaller_split_and_edge_half_any_larger(tiny_llama: SplitModel):
    full = tiny_llama
    ue, edge = SplitModel.load("tiny-llama", part="ue", k=3), SplitModel.load("tiny-llama", part="edge", k=1)
    ids = torch.tensor([[5, 6, 7, 8]])
    for k in (1, 2, 3):
        torch.testing.assert_close(edge.tail(ue.head(ids, k), k), full.logits(ids), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="loaded for k=3 \\(k <= 3\\)"):
        ue.head(ids, 4)
    with pytest.raises(ValueError, match="loaded for k=1 \\(k >= 1\\)"):
        edge.tail(ue.head(ids, 0), 0)


class LocalEdge:
    """An in-process edge replica; ``drop_at`` forgets caches to act like a restarted replica."""

    def __init__(self, model, drop_at=(), fail_at=(), **kw):
        self.store = EdgeStore(model, **kw)
        self.calls, self.drop_at, self.fail_at = 0, set(drop_at), set(fail_at)

    async def step(self, request_id: str, msg: EdgeMessage) -> dict:
        self.calls += 1
        if self.calls in self.fail_at:
            raise EdgeUnavailable("replica died")
        if self.calls in self.drop_at:
            self.store.sessions.clear()
        return self.store.step(request_id, msg)


def _run(model, req, edge, profile="clean", snr=None, **kw):
    async def collect():
        return [e async for e in split_generate(model, req, resolve_link(profile, snr, "clean"), edge.step, **kw)]

    events = asyncio.run(collect())
    tokens = [e["token_id"] for e in events[:-1]]
    return tokens, events[-1]


def test_split_loop_matches_in_process_generation_and_rebuilds_lost_edge_caches(tiny_llama: SplitModel):
    ids = tiny_llama.tokenizer("The quick brown fox").input_ids
    reference = generate(tiny_llama, torch.tensor([ids]), 2, max_new_tokens=12, stop_at_eos=False).token_ids
    req = UERequest("r1", ids, k=2, max_tokens=12)
    eos = set()  # the random model may emit its eos token; compare all 12
    tokens, final = _run(tiny_llama, req, LocalEdge(tiny_llama), eos_ids=eos)
    assert tokens == reference and final["finish_reason"] == "length" and final["completion_tokens"] == 12
    link = final["link"]
    assert link["vectors_up"] == len(ids) + 11 and link["rebuilds"] == 0 and link["bytes_down"] == 12 * 4
    assert link["bytes_up"] > 0 and link["link_latency_s"] > 0

    # The edge loses the cache twice (restart, rerouting): each time one resend from position 0.
    edge = LocalEdge(tiny_llama, drop_at={4, 9})
    tokens, final = _run(tiny_llama, UERequest("r2", ids, k=2, max_tokens=12), edge, eos_ids=eos)
    assert tokens == reference and final["link"]["rebuilds"] == 2
    assert edge.store.sessions["r2"].session.seen == len(ids) + 11

    # An unreachable edge is retried; the retry lands on an edge without the cache and rebuilds.
    edge = LocalEdge(tiny_llama, drop_at={6}, fail_at={5})
    tokens, final = _run(tiny_llama, UERequest("r3", ids, k=2, max_tokens=12), edge, eos_ids=eos, retry_s=5)
    assert tokens == reference and final["link"]["edge_retries"] == 1 and final["link"]["rebuilds"] == 1


def test_split_loop_moves_the_split_per_block_and_still_matches_generation(tiny_llama: SplitModel):
    ids = tiny_llama.tokenizer("The quick brown fox").input_ids
    reference = generate(tiny_llama, torch.tensor([ids]), 2, max_new_tokens=12, stop_at_eos=False).token_ids
    schedule = dict(k_schedule=[1, 3, 0, 2], snr_trace=[30.0, 20.0, 10.0, 25.0], resplit_every=3)
    edge = LocalEdge(tiny_llama)
    tokens, final = _run(tiny_llama, UERequest("m", ids, k=1, max_tokens=12, **schedule), edge, eos_ids=set())
    assert tokens == reference
    link, past_at_down = final["link"], len(ids) + 5  # the move 3 -> 0 comes before token 6
    assert link["resplits"] == 3 and link["moved_vectors"] == past_at_down
    assert link["moved_bytes_up"] == 128 * past_at_down  # the clean link's fp16 rows of 64
    assert link["vectors_up"] == len(ids) + 11 + past_at_down and link["rebuilds"] == 0
    # UE recompute: up 1 -> 3 over len(ids) + 2 past tokens (2 layers); down to 0 rebuilds nothing (embeddings);
    # up 0 -> 2 over len(ids) + 8 (2 layers)
    assert link["resplit_ue_layer_tokens"] == 2 * (len(ids) + 2) + 2 * (len(ids) + 8)
    assert edge.store.resplits == 3 and edge.store.recomputed_layer_tokens == 3 * past_at_down
    assert edge.store.sessions["m"].session.k == 2

    # The edge loses the cache right at a move: up (call 4) it asks for a resend at the new k; down (call 7)
    # the move's frame starts at 0 and rebuilds everything in one go. Tokens unchanged either way.
    for drop, rebuilds in (({4}, 1), ({7}, 0)):
        edge = LocalEdge(tiny_llama, drop_at=drop)
        tokens, final = _run(tiny_llama, UERequest("d", ids, k=1, max_tokens=12, **schedule), edge, eos_ids=set())
        assert tokens == reference and final["link"]["rebuilds"] == rebuilds, drop


def test_edge_asks_only_for_what_it_lacks_and_bounds_its_caches(tiny_llama: SplitModel):
    store = EdgeStore(tiny_llama, max_sessions=2, ttl_s=60)
    h = torch.zeros(1, 3, 64)
    assert "token" in store.step("a", EdgeMessage(1, 0, h))
    assert store.step("a", EdgeMessage(1, 5, h[:, :1])) == {"resend_from": 3}  # positions 3, 4 missing
    assert store.step("new", EdgeMessage(1, 7, h[:, :1])) == {"resend_from": 0}
    store.step("b", EdgeMessage(1, 0, h))
    store.step("c", EdgeMessage(1, 0, h))
    assert list(store.sessions) == ["b", "c"]  # "a" evicted, least recently used
    assert store.release("b") and not store.release("b")
    store.ttl_s = 0.0
    store.sweep()
    assert not store.sessions


def test_edge_moves_the_split_within_a_stream_keeping_its_deeper_layers(tiny_llama: SplitModel):
    """A UE that changes k between tokens: up, the edge drops the layers the UE took over; down, it rebuilds
    only the layers it takes over, from the past's hidden states (one frame, or several answered with
    continue_from), keeps its deeper layers' KV, and every next-token distribution is the unsplit model's."""
    from splitlab.llm.generation import UESession

    ids = torch.tensor([tiny_llama.tokenizer("The quick brown fox").input_ids])
    schedule = [1, 1, 3, 3, 0, 0, 2, 4, 1, 1, 2, 2]
    store, ue = EdgeStore(tiny_llama), UESession(tiny_llama, schedule[0])
    hidden, start, tokens, chunked = ue.prefill(ids).hidden, 0, [], 0
    for i, k in enumerate(schedule):
        if i:
            moved = ue.move_by_recompute(k)  # up: the UE recomputes; down: [1, T, H] after layer k, for the edge
            past = None if moved is None else moved.hidden
            new = ue.step(tokens[-1]).hidden
            hidden, start = (new, ue.length - 1) if past is None else (torch.cat([past, new], dim=1), 0)
        if start == 0 and i and k == 0:  # the move down to 0 in two frames
            assert store.consume("r", EdgeMessage(k, 0, hidden[:, :2])) == {"continue_from": 2}
            hidden, start, chunked = hidden[:, 2:], 2, chunked + 1
        seen = store.sessions["r"].session.seen if "r" in store.sessions else 0
        logits = store.consume("r", EdgeMessage(k, start, hidden))["logits"][-1]  # [V]
        sequence = torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], dim=1)
        with torch.no_grad():
            expected = tiny_llama.model(sequence).logits[0, -1]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        tokens.append(int(logits.argmax()))
        session = store.sessions["r"].session
        assert session.k == k and session.seen == seen + (1 if i else ids.shape[1])
        owned = [session.cache.layers[j].get_seq_length() for j in range(tiny_llama.num_layers)]
        assert owned == [0] * k + [session.seen] * (tiny_llama.num_layers - k), (i, k, owned)
    assert chunked == 1 and store.rebuilds == 0
    assert store.resplits == sum(a != b for a, b in zip(schedule, schedule[1:]))
    # The edge's own recompute: the layers it took over x the past tokens, on the moves down only.
    down = [(a - b) * (ids.shape[1] + i - 1) for i, (a, b) in enumerate(zip(schedule, schedule[1:]), 1) if b < a]
    assert store.recomputed_layer_tokens == sum(down) > 0

    # Neither a move nor a step (a move down that does not start at 0): dropped, rebuilt from 0.
    assert store.step("r", EdgeMessage(0, 5, hidden[:, :1])) == {"resend_from": 0} and "r" not in store.sessions


def test_sampled_and_noisy_generation_is_seeded_and_stops_at_stop_text(tiny_llama: SplitModel):
    ids = tiny_llama.tokenizer("Once upon a time").input_ids
    req = UERequest("s", ids, k=1, max_tokens=10, temperature=1.0, top_p=0.9, seed=7)
    a, _ = _run(tiny_llama, req, LocalEdge(tiny_llama), profile="poor")
    b, final = _run(tiny_llama, req, LocalEdge(tiny_llama), profile="poor")
    assert a == b  # same seed -> same channel noise and the same samples
    assert math.isfinite(final["link"]["link_latency_s"])
    # Sampling is seeded by position, so on a clean link a rebuilt edge samples what the original would.
    clean, _ = _run(tiny_llama, req, LocalEdge(tiny_llama))
    rebuilt, final = _run(tiny_llama, req, LocalEdge(tiny_llama, drop_at={3}))
    assert clean == rebuilt and final["link"]["rebuilds"] == 1
    text = tiny_llama.tokenizer.decode(clean, skip_special_tokens=True)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    assert stop
    events = asyncio.run(_collect(tiny_llama, UERequest("t", ids, k=1, max_tokens=10, temperature=1.0, top_p=0.9,
                                                        seed=7, stop=[stop])))
    assert events[-1]["finish_reason"] == "stop"
    assert "".join(e["text"] for e in events) == text[:text.index(stop)]


async def _collect(model, req):
    return [e async for e in split_generate(model, req, resolve_link("clean", None, "clean"), LocalEdge(model).step)]


def test_serve_config_file_is_a_valid_serve_deploy_config():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((Path(__file__).parents[1] / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(raw)
    app = schema.applications[0]
    assert app.import_path == "splitlab.serve.app:build"
    assert {d.name for d in app.deployments} <= {"SplitIngress", "SplitPolicy", "UEHalf", "EdgeHalf"}
    ServeConfig.from_dict(app.args)


def test_app_builder_takes_serve_run_args_and_checks_them_against_the_model():
    from ray.serve import Application

    from splitlab.serve.app import build

    assert isinstance(build({"model": "tiny-llama", "max_split": "2", "wait_link": "true"}), Application)
    with pytest.raises(ValueError, match="max_split must be <= the model's 4 layers"):
        build({"model": "tiny-llama", "max_split": "9"})
    with pytest.raises(ValueError, match="unknown serve config keys"):
        build({"modle": "tiny-llama"})


def test_grafana_dashboard_plots_only_metrics_the_service_exports():
    import re
    from pathlib import Path

    from splitlab.serve import metrics as metrics_module

    source = Path(metrics_module.__file__).read_text()
    defined = set(re.findall(r'"(splitlab_\w+)"', source))
    dashboard = json.loads((Path(__file__).parents[1] / "cluster/grafana/splitlab_dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"ray_(splitlab_\w+)", e)}
    assert used and used <= defined, used - defined
    assert {"splitlab_requests", "splitlab_split_k", "splitlab_edge_batch_size"} <= used


def test_adaptive_by_default_on_smollm2_with_the_shipped_grid():
    rule = make_rule(ServeConfig(model="smollm2"), 30)
    assert isinstance(rule, GridRule) and rule.name == "grid"
    picks = {snr: rule({"snr_db": snr, "kind": "awgn"}) for snr in (25.0, 10.0, 0.0)}
    assert all(0 <= k <= 15 for k in picks.values())
    assert picks[0.0] == 0  # the measured grid: k = 0 is by far the most robust split at 0 dB
    assert isinstance(make_rule(ServeConfig(model="smollm2", adaptive=False), 30), FixedRule)  # fixed only when asked
    assert isinstance(make_rule(ServeConfig(model="tiny-llama"), 4), FixedRule)  # no grid measured for it


def test_echo_scoring_and_token_logprobs_equal_the_unsplit_model(tiny_llama: SplitModel):
    ids = tiny_llama.tokenizer("The quick brown fox jumps over").input_ids
    logprobs = torch.log_softmax(tiny_llama.logits(torch.tensor([ids]))[0].float(), -1)  # [T, V]
    events = asyncio.run(_collect_with(tiny_llama, UERequest("e", ids, k=2, max_tokens=0, logprobs=3, echo=True)))
    final = events[-1]
    assert len(events) == 1 and final["completion_tokens"] == 0
    scores = final["prompt_scores"]
    np.testing.assert_allclose([s["logprob"] for s in scores], [float(logprobs[j - 1, ids[j]]) for j in range(1, len(ids))],
                               atol=1e-5)
    assert [t for t, _ in scores[-1]["top"]] == logprobs[-2].topk(3).indices.tolist()
    events = asyncio.run(_collect_with(tiny_llama, UERequest("g", ids, k=1, max_tokens=2, logprobs=0)))
    first = events[0]
    assert first["token_id"] == int(logprobs[-1].argmax()) and first["top"] == []
    assert first["logprob"] == pytest.approx(float(logprobs[-1].max()), abs=1e-5)


async def _collect_with(model, req):
    return [e async for e in split_generate(model, req, resolve_link("clean", None, "clean"), LocalEdge(model).step,
                                            eos_ids=set())]
