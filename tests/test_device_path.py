"""The device path (issue 17): the UE half in this process, the edge in Serve, activations on the wire.

Units first (wire format, API keys; no Ray), then one embedded Ray on 127.0.0.1 with the edge app for
tiny-llama: greedy output equals ``model.generate`` over WebSocket and HTTP, int8 perplexity through
the path stays within tolerance, malformed frames, missing keys and stalled streams get a 4xx naming the
problem and free the edge cache, a disconnect frees it too, and neither the bytes that crossed the link
nor the edge's logs hold the prompt.
"""
from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from splitlab.serve.admission import check_api_key
from splitlab.serve.protocol import RequestError
from splitlab.serve.wire import (
    FRAME_HEADER,
    WireLimits,
    decode_frame,
    decode_token,
    encode_frame,
    encode_resend,
    encode_token,
)

LIMITS = WireLimits(hidden=8, min_split=0, max_split=3, max_tokens=16)
KEY = "test-key-123"


# ---------------------------------------------------------------------- wire format
@pytest.mark.parametrize("fmt,tol", [("fp32", 0.0), ("fp16", 1e-3), ("bf16", 1e-2), ("int8", 1e-2)])
def test_frames_round_trip_in_every_format(fmt, tol):
    h = torch.randn(1, 5, 8)
    raw = encode_frame(h, k=2, start=3, fmt=fmt)
    frame = decode_frame(raw, LIMITS)
    assert (frame.header.format, frame.header.k, frame.header.start, frame.header.tokens) == (fmt, 2, 3, 5)
    assert len(raw) == FRAME_HEADER.size + 5 * {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8 + 32 / 8}[fmt]
    assert torch.allclose(frame.hidden, h, rtol=tol, atol=tol * h.abs().max())


def _corrupt(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


def _frame(fmt: str = "fp32", k: int = 1, tokens: int = 2, hidden: int = 8) -> bytes:
    return encode_frame(torch.randn(1, tokens, hidden), k, 0, fmt)


@pytest.mark.parametrize("raw,param,status,words", [
    (b"SLA1", "frame", 400, "20-byte header"),
    (_corrupt(_frame(), 0, b"GET "), "frame", 400, "must start with"),
    (_corrupt(_frame(), 4, b"\x07"), "version", 400, "version 7"),
    (_corrupt(_frame(), 5, b"\x09"), "format", 400, "format code 9"),  # an unknown dtype
    (_frame(k=4), "k", 400, "[0, 3]"),
    (_frame(hidden=9), "hidden", 400, "must be 8"),
    (_corrupt(_frame(), 12, struct.pack("<I", 0)), "tokens", 400, "at least one token"),
    (_frame(tokens=17), "tokens", 413, "context of 16"),
    (_frame()[:-1], "payload", 400, "bytes"),  # a short matrix
    (_frame() + b"\0" * 32, "payload", 400, "bytes"),  # one row too many
    (_corrupt(_frame("fp32"), 5, b"\x01"), "payload", 400, "bytes"),  # fp32 bytes labelled fp16
])
def test_malformed_frames_are_refused_naming_the_field(raw, param, status, words):
    with pytest.raises(RequestError) as err:
        decode_frame(raw, LIMITS)
    assert (err.value.param, err.value.status) == (param, status)
    assert words in err.value.message


@pytest.mark.parametrize("fmt,bad", [("fp32", np.float32(np.nan).tobytes()), ("fp32", np.float32(np.inf).tobytes()),
                                     ("fp16", np.float16(np.inf).tobytes()), ("bf16", b"\xc0\x7f"),
                                     ("int8", np.float32(np.nan).tobytes()), ("int8", np.float32(-1.0).tobytes())])
def test_non_finite_activations_and_bad_scales_are_refused(fmt, bad):
    raw = _corrupt(_frame(fmt), FRAME_HEADER.size, bad)  # the first element (or the int8 scale) of token 0
    with pytest.raises(RequestError) as err:
        decode_frame(raw, LIMITS)
    assert err.value.param == "payload" and ("finite" in err.value.message or ">= 0" in err.value.message)


def test_int8_minus_128_is_refused():
    raw = _corrupt(_frame("int8"), FRAME_HEADER.size + 4, b"\x80")
    with pytest.raises(RequestError, match=r"\[-127, 127\]"):
        decode_frame(raw, LIMITS)


def test_token_frames_round_trip():
    full = np.log(np.full((2, 10), 0.1, dtype=np.float32))
    reply = decode_token(encode_token(7, 12, -0.5, [(7, -0.5), (3, -1.5)], full))
    assert (reply.value, reply.position, reply.logprob, reply.is_resend) == (7, 12, -0.5, False)
    assert reply.top == ((7, -0.5), (3, -1.5)) and np.allclose(reply.full, full)
    assert decode_token(encode_resend(4)).is_resend and decode_token(encode_resend(4)).value == 4
    assert len(encode_token(7, 12, -0.5)) == 24  # the downlink costs 24 bytes per token without logprobs
    assert decode_token(encode_token(7, 12, -0.5, edge_s=0.0123)).edge_s == pytest.approx(0.0123, abs=1e-6)


def test_api_key_check():
    check_api_key(None, [])  # no keys configured: open (loopback use)
    check_api_key(f"Bearer {KEY}", ["other", KEY])
    for header in (None, "Bearer", f"Basic {KEY}", "Bearer wrong", f"Bearer {KEY}x"):
        with pytest.raises(RequestError) as err:
            check_api_key(header, [KEY])
        assert err.value.status == 401 and err.value.body()["error"]["code"] == "invalid_api_key"


# ---------------------------------------------------------------------- the path, end to end
@pytest.fixture(scope="module")
def edge_url():
    from splitlab.serve.activation_ingress import DeviceRouteConfig, start_device_local
    from splitlab.serve.config import ServeConfig
    from splitlab.serve.local import stop_local

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = ServeConfig(model="tiny-llama", max_split=3, replica_cpus=0.25, edge_min_replicas=1,
                         edge_max_replicas=1, max_context=128, health_check_period_s=1.0)
    url = start_device_local(config, DeviceRouteConfig(api_keys=[KEY], stall_timeout_s=2.0), num_cpus=2)
    try:
        yield url
    finally:
        stop_local()
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_full():
    from splitlab.llm import SplitModel

    return SplitModel.load("tiny-llama")


@pytest.fixture(scope="module")
def client(edge_url):
    from splitlab.client import DeviceClient

    return DeviceClient(edge_url, fmt="fp32", api_key=KEY)


def _edge_sessions() -> int:
    from ray import serve

    return serve.get_deployment_handle("EdgeHalf", "splitlab-edge").stats.remote().result()["sessions"]


def _wait_freed(timeout_s: float = 20.0) -> int:
    deadline = time.time() + timeout_s
    while time.time() < deadline and _edge_sessions():
        time.sleep(0.2)
    return _edge_sessions()


def _ws(url: str, key: str | None = KEY):
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return connect(url.replace("http://", "ws://") + "/v1/activations/ws", compression=None, proxy=None,
                   additional_headers=headers, legacy=True)


def _refusal(ws) -> tuple[int, dict]:
    """(close code, error body) of a refused stream."""
    from websockets.exceptions import ConnectionClosed

    body = json.loads(ws.recv(timeout=30))
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=30)
    return closed.value.rcvd.code, body


def test_greedy_output_equals_generate_over_both_transports(client, tiny_full):
    prompt = "The quick brown fox"
    ids = tiny_full.tokenizer(prompt).input_ids
    ref = tiny_full.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0,
                                   eos_token_id=tiny_full.tokenizer.eos_token_id)[0, len(ids):].tolist()
    for transport, fmt, k in (("ws", "fp32", 0), ("ws", "fp16", 1), ("ws", "fp32", 3), ("http", "fp32", 2),
                              ("http", "fp16", 3)):
        client.fmt, client.transport = fmt, _transport(client, transport)
        out = client.generate(prompt, k, 12)
        assert out.token_ids == ref, (transport, fmt, k)
        assert out.text == tiny_full.tokenizer.decode(ref, skip_special_tokens=True)
        stats = out.stats
        assert stats.frames == 12 and stats.bytes_down == 12 * 24
        row = {"fp32": 4 * 64, "fp16": 2 * 64}[fmt]
        settings = stats.bytes_up - (20 + len(ids) * row) - 11 * (20 + row)
        assert len(stats.step_edge_s) == 11 and all(0 < e < s for e, s in zip(stats.step_edge_s, stats.step_s))
        assert 0 <= settings < 100  # the first frame carries the prompt, then one row per token (+ settings)
    client.fmt, client.transport = "fp32", _transport(client, "ws")
    assert _wait_freed() == 0


def test_long_prompts_go_in_several_frames(client, tiny_full, monkeypatch):
    import splitlab.client.device as device

    monkeypatch.setattr(device, "MAX_FRAME_TOKENS", 2)
    prompt = "The quick brown fox"
    ids = tiny_full.tokenizer(prompt).input_ids
    ref = tiny_full.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0,
                                   eos_token_id=tiny_full.tokenizer.eos_token_id)[0, len(ids):].tolist()
    out = client.generate(prompt, 2, 4)
    assert out.token_ids == ref and out.stats.frames == math.ceil(len(ids) / 2) + 3


def test_the_split_moves_between_tokens_and_the_output_stays_generates(client, tiny_full, monkeypatch):
    """A k schedule through the real path: moves up are recomputed on the device, moves down send the past's
    hidden states (here in several frames, each answered with continue_from); greedy tokens stay generate's."""
    import splitlab.client.device as device

    monkeypatch.setattr(device, "MAX_FRAME_TOKENS", 3)
    prompt = "The quick brown fox"
    ids = tiny_full.tokenizer(prompt).input_ids
    ref = tiny_full.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0,
                                   eos_token_id=tiny_full.tokenizer.eos_token_id)[0, len(ids):].tolist()
    schedule = [1, 3, 3, 0, 0, 2, 3, 1, 1, 2]
    out = client.generate(prompt, schedule, 10)
    assert out.token_ids == ref
    moves = out.stats.migrations
    assert [(m["token"], m["k_from"], m["k_to"]) for m in moves] == [(1, 1, 3), (3, 3, 0), (5, 0, 2), (6, 2, 3),
                                                                     (7, 3, 1), (9, 1, 2)]
    assert [m["past_tokens"] for m in moves] == [len(ids) + m["token"] - 1 for m in moves]
    row = 4 * 64  # fp32
    assert [m["payload_bytes_up"] for m in moves] == [0 if m["k_to"] > m["k_from"] else m["past_tokens"] * row
                                                      for m in moves]
    assert out.stats.rebuilds == 0
    # frames: the prompt's, then one per token, plus the extra frames of the two moves down (past + 1 in 3-row frames)
    extra = sum(math.ceil((m["past_tokens"] + 1) / 3) - 1 for m in moves if m["k_to"] < m["k_from"])
    assert out.stats.frames == math.ceil(len(ids) / 3) + 9 + extra
    with pytest.raises(ValueError, match=r"k\[2\] must be an integer in \[0, 3\]"):
        client.generate(prompt, [1, 2, 4], 4)
    assert _wait_freed() == 0


def test_the_policy_is_asked_again_every_n_tokens(client, tiny_full, monkeypatch):
    asked = []
    answers = iter([0, 3, 1])

    def choose_k(snr_db, prompt_tokens=0, max_tokens=0):
        asked.append((snr_db, prompt_tokens, max_tokens))
        return next(answers)

    monkeypatch.setattr(client, "choose_k", choose_k)
    prompt = "The quick brown fox"
    ids = tiny_full.tokenizer(prompt).input_ids
    ref = tiny_full.model.generate(torch.tensor([ids]), max_new_tokens=9, do_sample=False, pad_token_id=0,
                                   eos_token_id=tiny_full.tokenizer.eos_token_id)[0, len(ids):].tolist()
    out = client.generate(prompt, "policy", 9, resplit_every=4, snr_db=lambda i: 20.0 - i)
    assert out.token_ids == ref
    n = len(ids)
    assert asked == [(20.0, n, 9), (16.0, n + 4, 5), (12.0, n + 8, 1)]
    assert [(m["token"], m["k_from"], m["k_to"]) for m in out.stats.migrations] == [(4, 0, 3), (8, 3, 1)]


def _transport(client, kind):
    from splitlab.client.transport import make_transport

    return make_transport(kind, client.url, KEY)


def test_int8_perplexity_through_the_path_within_tolerance(client, tiny_full):
    """Tolerance: |log PPL(int8) - log PPL(fp32)| <= 0.01 on tiny-llama; fp32 equals the in-process logits."""
    ids = tiny_full.tokenizer("Wireless links carry the hidden state of the first layers to the edge "
                              "server, which runs the rest of the model and sends one token back.").input_ids
    ref = torch.log_softmax(tiny_full.logits(torch.tensor([ids]))[0, :-1], -1)  # [T-1, V]
    ref = ref.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    for k in (1, 3):
        client.fmt = "fp32"
        fp32, _ = client.score(ids, k)
        client.fmt = "int8"
        int8, stats = client.score(ids, k)
        assert torch.allclose(fp32, ref, atol=1e-4)
        assert abs(int8.mean() - fp32.mean()) <= 0.01, (k, float(int8.mean()), float(fp32.mean()))
        assert stats.frames == 1
    client.fmt = "fp32"


def test_malformed_activation_matrix_is_refused_and_frees_the_cache(edge_url):
    good = encode_frame(torch.randn(1, 3, 64), 1, 0, "fp16")
    bad_frames = {
        "hidden": encode_frame(torch.randn(1, 3, 63), 1, 3, "fp16"),  # wrong shape
        "payload": _corrupt(encode_frame(torch.randn(1, 1, 64), 1, 3, "fp16"), FRAME_HEADER.size,
                            np.float16(np.nan).tobytes()),  # NaN
        "format": _corrupt(encode_frame(torch.randn(1, 1, 64), 1, 3, "fp16"), 5, b"\x05"),  # unknown dtype
        "k": encode_frame(torch.randn(1, 1, 64), 4, 3, "fp16"),  # out of range
    }
    for param, bad in bad_frames.items():
        with _ws(edge_url) as ws:
            ws.send(json.dumps({"temperature": 0}))
            ws.send(good)
            assert isinstance(ws.recv(timeout=30), bytes)
            assert _edge_sessions() == 1
            ws.send(bad)
            code, body = _refusal(ws)
        assert code == 4400 and body["error"]["param"] == param, body
        assert _wait_freed() == 0, param
    # Over HTTP: a 4xx naming the field, the stream's cache freed.
    headers = {"Authorization": f"Bearer {KEY}", "X-Splitlab-Stream": "ab" * 16}
    assert requests.post(edge_url + "/v1/activations", data=good, headers=headers, timeout=30).status_code == 200
    r = requests.post(edge_url + "/v1/activations", data=bad_frames["payload"], headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "payload" and "finite" in r.json()["error"]["message"]
    assert _wait_freed() == 0
    r = requests.post(edge_url + "/v1/activations", data=b"\0" * (10 * 1024 * 1024), headers=headers, timeout=30)
    assert r.status_code == 413
    r = requests.post(edge_url + "/v1/activations?temperature=9", data=good, headers=headers, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_api_key_is_required_on_every_route(edge_url):
    for key in (None, "wrong"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = requests.get(edge_url + "/v1/activations/info", headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = requests.post(edge_url + "/v1/activations", data=b"x", headers=headers, timeout=30)
        assert r.status_code == 401
        with _ws(edge_url, key) as ws:
            code, body = _refusal(ws)
        assert code == 4401 and body["error"]["code"] == "invalid_api_key"


def test_stalled_stream_gets_408_and_frees_the_cache(edge_url):
    with _ws(edge_url) as ws:
        ws.send(json.dumps({}))
        ws.send(encode_frame(torch.randn(1, 4, 64), 2, 0, "int8"))
        assert isinstance(ws.recv(timeout=30), bytes)
        assert _edge_sessions() == 1
        code, body = _refusal(ws)  # then nothing: the edge gives up after stall_timeout_s (2 s)
    assert code == 4408 and "stalled" in body["error"]["message"]
    assert _wait_freed() == 0


def test_disconnect_frees_the_cache(edge_url):
    ws = _ws(edge_url)
    ws.send(json.dumps({}))
    ws.send(encode_frame(torch.randn(1, 4, 64), 1, 0, "fp16"))
    assert isinstance(ws.recv(timeout=30), bytes)
    assert _edge_sessions() == 1
    ws.socket.close()  # the device vanishes without a close frame
    assert _wait_freed() == 0


def test_the_edge_never_sees_the_prompt(edge_url, client, tmp_path):
    """Neither the bytes on the link, the edge's logs nor its answers contain the prompt or its token ids."""
    import ray

    from splitlab.client.link_emulator import LinkEmulator, LinkSpec
    from splitlab.client.transport import make_transport

    prompt = "Zanzibar-7731 secret prompt: my PIN is 4096"
    ids = client.model.tokenizer(prompt).input_ids
    host, port = edge_url.removeprefix("http://").split(":")
    record = tmp_path / "uplink.bin"
    with LinkEmulator(LinkSpec(), (host, int(port)), record_path=record) as link:
        for transport in ("ws", "http"):
            client.transport = make_transport(transport, link.url, KEY)
            client.generate(prompt, 1, 4)
        counted = link.stats()
    client.transport = make_transport("ws", edge_url, KEY)
    up = record.read_bytes()
    assert counted.bytes_up == len(up) > 2 * 64 * 4 * len(ids)  # the recording holds the activations sent
    needles = [prompt.encode(), b"Zanzibar", b"PIN is", np.asarray(ids, dtype="<i4").tobytes(),
               np.asarray(ids, dtype="<i8").tobytes(), json.dumps(ids).encode(), " ".join(map(str, ids)).encode(),
               ",".join(map(str, ids)).encode()]
    for needle in needles:
        assert needle not in up, needle
    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    text = b"".join(p.read_bytes() for p in logs.rglob("*") if p.is_file())
    assert b"activation stream" in text  # the edge's request log is there, with sizes only
    for needle in needles[:3] + needles[5:]:
        assert needle not in text, needle
    assert _wait_freed() == 0


def test_device_model_counts_the_round_trip_and_the_output_head():
    from splitlab.envs.device import DeviceModel

    base = DeviceModel(ue_flops=1e9, edge_flops=1e10, tokens=1)
    fixed = DeviceModel(ue_flops=1e9, edge_flops=1e10, tokens=1, rtt_s=0.05, edge_fixed_s=0.01)
    a, b = base.latency(2, 4, 64, 0.001), fixed.latency(2, 4, 64, 0.001)
    assert b.total_s == pytest.approx(a.total_s + 0.06) and b.rtt_s == 0.05
    assert b.as_metrics()["latency/rtt_s"] == 0.05 and a.rtt_s == 0.0
    with pytest.raises(ValueError, match="rtt_s"):
        DeviceModel(rtt_s=-1.0)


def test_ue_cli_reports_bad_input_and_an_unreachable_edge_in_one_line(capsys):
    from splitlab.cli import main
    from splitlab.serve.local import free_port

    for argv, words in ((["--k", "deep"], "--k must be a split point"), ([], "Connection refused")):
        with pytest.raises(SystemExit) as exit_:
            main(["ue", f"http://127.0.0.1:{free_port()}", "hello", *argv])
        assert exit_.value.code == 2 and words in capsys.readouterr().err
