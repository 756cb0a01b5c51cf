"""The device path measured: bytes, int8 quality and per-token latency vs the env's cost model.

This example runs the edge (Ray Serve, :mod:`splitlab.serve.activation_ingress`) in a child process
pinned to CPU core 1 and the UE half (:class:`splitlab.client.DeviceClient`) in this process pinned
to core 0 with one torch thread (a device-like budget), and measures, per split k and payload format:

- ``bytes_per_token``: activation-frame bytes per generated token (header + payload), measured by the
  client, next to the env's ``link_cost(1, H, quant).payload_bytes``; plus the TCP payload bytes the
  emulated link carried for the whole stream (WebSocket framing and handshake included);
- ``ppl_ratio_vs_fp32``: perplexity through the real path (edge returns full log-distributions, the
  device scores the true token) relative to fp32, on wiki windows, with a 95% CI over windows;
- ``greedy_equal``: greedy tokens equal ``model.generate``'s, per prompt, on a clean loopback link;
- ``latency_ms_per_token``: decode steps (head + frame up + edge tail + token down) through two emulated
  links (:class:`splitlab.client.link_emulator.LinkEmulator`: a loopback proxy adding one-way delay and
  a rate limit), against the env's :class:`~splitlab.envs.device.DeviceModel` prediction for the same
  k, payload and link, before and after the fix (``rtt_s``: the round trip the model left out).

The speeds the model needs (UE and edge seconds per layer, the output head, the serving hops) are
calibrated on a loopback run first (no emulator; the edge reports its compute per step in each token
frame) and used unchanged for the two emulated links. Each step is also split into UE compute, edge
compute and the rest (link + hops), so the link model is checked apart from the machine's compute noise.

How to run:  nice .venv/bin/python benchmarks/device_path.py [--model smollm2] [--ks 0,4,10,15]
             [--tokens 8] [--prompts 2] [--ppl-windows 8 --ppl-window 64] [--quick]
             (``--quick``: tiny-llama, fewer points, for a smoke run; writes device_path_quick.json)

Results to expect: fp16 frames are 20 + 2H bytes per token (1172 on SmolLM2), int8 20 + H + 4 (600),
fp32 20 + 4H (2324); greedy tokens equal ``model.generate`` with fp32 and fp16; int8 perplexity
within a few per cent of fp32 at every k; the env model without a round trip underestimates per-token
latency by 35-55% (the link's two propagation delays plus the serving hops); with ``rtt_s`` and
``edge_fixed_s`` its link term is within about 10% and the whole step within about 15% on a quiet machine
(about 3 minutes). Writes benchmarks/results/device_path.json.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
LINKS = {
    "wifi": {"delay_s": 0.005, "rate_bps": 20e6},
    "cell_edge": {"delay_s": 0.020, "rate_bps": 2e6},
}
"""The two emulated links: one-way delay and bottleneck rate (both directions)."""
SNR_DB = 30.0  # the env's digital link runs at this SNR (no bit errors) at the emulated link's rate
PROMPTS = ["The history of the city begins", "In mathematics, a group is", "The river flows north through",
           "Photosynthesis converts light into", "The first computers were built"]
EDGE_CPU, UE_CPU = 1, 0


# ---------------------------------------------------------------------- the edge, in its own process
def _edge_main(model: str, max_split: int, conn) -> None:
    os.sched_setaffinity(0, {EDGE_CPU})
    from splitlab.serve.activation_ingress import DeviceRouteConfig, start_device_local
    from splitlab.serve.config import ServeConfig
    from splitlab.serve.local import stop_local

    config = ServeConfig(model=model, max_split=max_split, replica_cpus=0.5, edge_min_replicas=1,
                         edge_max_replicas=1, max_context=1024)
    try:
        conn.send(start_device_local(config, DeviceRouteConfig(stall_timeout_s=120.0), num_cpus=1))
        conn.recv()  # until told to stop
    finally:
        stop_local()


# ---------------------------------------------------------------------- statistics
def mean_ci(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


# ---------------------------------------------------------------------- calibration
def calibrate(loop: dict, num_layers: int) -> dict:
    """This machine's speeds from the loopback run's own per-step timings (no emulated link).

    UE seconds per layer: median over k > 0 of the head's compute per step / k. Edge: least squares of
    the edge's reported compute per step on its layer count, ``edge = head + per_layer * (L - k)`` (the
    intercept is the final norm and output head). Serving hops: median of what a step spends outside
    both computes on loopback.
    """
    import numpy as np

    ue = [statistics.median(r["step_ue_ms"]) / k for (k, _), r in loop.items() if k > 0]
    tail = np.array([[1.0, num_layers - k] for (k, _) in loop])
    edge = np.array([statistics.median(r["step_edge_ms"]) for r in loop.values()])
    (head_ms, layer_ms), *_ = np.linalg.lstsq(tail, edge, rcond=None)
    hops = [statistics.median([s - u - e for s, u, e in zip(r["step_ms"], r["step_ue_ms"], r["step_edge_ms"])])
            for r in loop.values()]
    return {"ue_s_per_layer": statistics.median(ue) / 1000, "edge_s_per_layer": max(float(layer_ms), 1e-6) / 1000,
            "edge_output_head_s": max(float(head_ms), 0.0) / 1000, "serving_hops_s": max(statistics.median(hops), 0.0) / 1000}


def device_model(cal: dict, hidden: int, fixed: bool, rtt_s: float = 0.0):
    """The env's DeviceModel with this machine's speeds (FLOP/s from the calibrated seconds per layer).

    ``fixed``: with the two terms the device path showed missing (``rtt_s``, ``edge_fixed_s``).
    """
    from splitlab.envs.device import DeviceModel

    flops = DeviceModel(tokens=1).layer_flops(hidden)
    extra = {"rtt_s": rtt_s, "edge_fixed_s": cal["edge_output_head_s"]} if fixed else {}
    # The env's FLOP model: 2 x 12 h^2 per layer and token (SmolLM2's real layer has 3.5M weights, 12 h^2 = 4.0M).
    return DeviceModel(ue_flops=flops / cal["ue_s_per_layer"], edge_flops=flops / cal["edge_s_per_layer"],
                       tokens=1, **extra)


def env_link(fmt: str, rate_bps: float):
    """The env's digital link carrying the emulated link's rate: QPSK at ``rate / 2`` symbols per second, at
    SNR_DB (no bit errors), so its airtime is the payload's bits over that rate.

    (The analog kinds' airtime is a symbol count of two elements per symbol whatever the payload format,
    a model of an analog radio, not of a byte pipe like the emulated link.)
    """
    from splitlab.channel import ChannelConfig

    return ChannelConfig(kind="digital", modulation="qpsk", quant=fmt, snr_db=SNR_DB, bandwidth_hz=rate_bps / 2,
                         on_packet_error="retransmit")


def predict(cal: dict, k: int, num_layers: int, hidden: int, fmt: str, rate_bps: float, fixed: bool,
            rtt_s: float = 0.0):
    """The env model's :class:`~splitlab.envs.device.Latency` of one decode step (tokens = 1)."""
    from splitlab.channel import link_cost

    tx = link_cost(1, hidden, env_link(fmt, rate_bps)).tx_time_s
    return device_model(cal, hidden, fixed, rtt_s).latency(k, num_layers, hidden, tx)


# ---------------------------------------------------------------------- runs
def run_generation(client, ks, formats, prompts, tokens, refs=None) -> dict:
    """Per (k, fmt): per-token latencies, bytes, UE compute; greedy equality against ``refs``."""
    out = {}
    for k in ks:
        for fmt in formats:
            client.fmt = fmt
            steps, step_ue, step_edge, up, down, frames, ue_s, equal, app_up = [], [], [], 0, 0, 0, 0.0, [], []
            for i, prompt in enumerate(prompts):
                g = client.generate(prompt, k, tokens)
                s = g.stats
                steps += s.step_s
                step_ue += s.step_ue_s
                step_edge += s.step_edge_s
                ids = client.model.tokenizer(prompt).input_ids
                prefill_frame = 20 + len(ids) * _row_bytes(fmt, client.model.hidden_size)
                settings = len(json.dumps({"temperature": 0.0, "top_p": 1.0, "seed": 0}))
                app_up.append((s.bytes_up - prefill_frame - settings) / max(s.frames - 1, 1))
                up, down, frames = up + s.bytes_up, down + s.bytes_down, frames + s.frames
                ue_s += s.ue_compute_s
                if refs is not None:
                    equal.append(g.token_ids == refs[i][: len(g.token_ids)])
            out[(k, fmt)] = {"step_ms": [1000 * x for x in steps], "step_ue_ms": [1000 * x for x in step_ue],
                             "step_edge_ms": [1000 * x for x in step_edge], "bytes_per_token": statistics.fmean(app_up),
                             "bytes_down_per_token": down / frames, "bytes_up_total": up, "frames": frames,
                             "ue_compute_ms_per_frame": 1000 * ue_s / frames,
                             "greedy_equal": equal}
    return out


def _row_bytes(fmt: str, hidden: int) -> int:
    from splitlab.channel.quantisation import token_bits

    return token_bits(fmt, hidden) // 8


def run_perplexity(client, ks, formats, windows) -> dict:
    """Per (k, fmt): mean NLL per window through the path."""
    out = {}
    for k in ks:
        for fmt in formats:
            client.fmt = fmt
            out[(k, fmt)] = [float(-client.score(w.tolist(), k)[0].mean()) for w in windows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--ks", default="0,4,10,15")
    parser.add_argument("--formats", default="fp32,fp16,bf16,int8")
    parser.add_argument("--tokens", type=int, default=8, help="tokens generated per prompt")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--ppl-windows", type=int, default=8)
    parser.add_argument("--ppl-window", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="tiny-llama, k in 0,2,4, a smoke run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.quick:
        args.model, args.ks, args.tokens, args.prompts, args.ppl_windows, args.ppl_window = \
            "tiny-llama", "0,2,4", 8, 2, 3, 32
    ks = [int(k) for k in args.ks.split(",")]
    formats = args.formats.split(",")
    out_path = Path(args.out) if args.out else RESULTS / ("device_path_quick.json" if args.quick else "device_path.json")
    load_start = os.getloadavg()

    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    edge = ctx.Process(target=_edge_main, args=(args.model, max(ks), child), daemon=False)
    edge.start()
    if not conn.poll(900):  # the edge died or never came up: do not wait forever
        edge.kill()
        raise RuntimeError("the edge did not start within 15 minutes")
    url = conn.recv()
    host, port = url.removeprefix("http://").split(":")

    os.sched_setaffinity(0, {UE_CPU})  # after the edge started: its Ray processes keep core 1
    import torch

    torch.set_num_threads(1)
    from splitlab.client import DeviceClient
    from splitlab.client.link_emulator import LinkEmulator, LinkSpec
    from splitlab.client.transport import make_transport
    from splitlab.llm import SplitModel
    from splitlab.llm.corpora import token_windows

    try:
        t_start = time.perf_counter()
        client = DeviceClient(url, max_k=max(ks))
        full = SplitModel.load(args.model)
        L, H = full.num_layers, full.hidden_size
        prompts = PROMPTS[: args.prompts]
        refs = []
        for p in prompts:
            ids = full.tokenizer(p).input_ids
            refs.append(full.model.generate(torch.tensor([ids]), max_new_tokens=args.tokens, do_sample=False,
                                            pad_token_id=0, eos_token_id=full.tokenizer.eos_token_id)[0, len(ids):].tolist())
        # Loopback (no emulator): greedy equality, and the machine's speeds and serving hops.
        loop = run_generation(client, ks, formats, prompts, args.tokens, refs)
        cal = calibrate(loop, L)
        hop_s = cal["serving_hops_s"]
        print("calibration", cal, flush=True)

        # Two emulated links.
        links = {}
        for name, spec in LINKS.items():
            link_spec = LinkSpec(**spec)
            with LinkEmulator(link_spec, (host, int(port)), cpus=[EDGE_CPU]) as link:
                client.transport = make_transport("ws", link.url)
                rows = {}
                for k in ks:
                    for fmt in formats:
                        link.reset()
                        r = run_generation(client, [k], [fmt], prompts, args.tokens)[(k, fmt)]
                        counters = link.stats()
                        rows[(k, fmt)] = {**r, "link_tcp_bytes_up": counters.bytes_up,
                                          "link_tcp_bytes_down": counters.bytes_down}
                links[name] = (link_spec, rows)
            print(f"link {name} done", flush=True)
        client.transport = make_transport("ws", url)

        # Perplexity through the path (loopback).
        windows = token_windows(full.tokenizer, "wiki", args.ppl_windows * args.ppl_window, args.ppl_window)
        nll = run_perplexity(client, ks, formats, windows)
        in_process = [float(-torch.log_softmax(full.logits(w[None])[0, :-1], -1)
                            .gather(1, w[1:, None])[:, 0].mean()) for w in windows]
        elapsed = time.perf_counter() - t_start
    finally:
        conn.send("stop")
        edge.join(120)

    # ------------------------------------------------------------------ assemble
    from splitlab.channel import link_cost

    points = []
    for k in ks:
        for fmt in formats:
            base = loop[(k, fmt)]
            ratios = [math.exp(a - b) for a, b in zip(nll[(k, fmt)], nll[(k, "fp32")])] if "fp32" in formats else []
            row = {"k": k, "format": fmt,
                   "bytes_per_token": base["bytes_per_token"],
                   "bytes_per_token_env": link_cost(1, H, env_link(fmt, 1e6)).payload_bytes,
                   "bytes_down_per_token": base["bytes_down_per_token"],
                   "ppl": math.exp(statistics.fmean(nll[(k, fmt)])),
                   "ppl_ratio_vs_fp32": mean_ci(ratios) if ratios else None,
                   "greedy_equal": {"prompts": len(base["greedy_equal"]), "equal": sum(base["greedy_equal"])},
                   "loopback_ms_per_token": mean_ci(base["step_ms"]),
                   "links": {}}
            for name, (spec, rows) in links.items():
                r = rows[(k, fmt)]
                measured = statistics.fmean(r["step_ms"])
                outside = [s - u - e for s, u, e in zip(r["step_ms"], r["step_ue_ms"], r["step_edge_ms"])]
                env = predict(cal, k, L, H, fmt, spec.rate_bps, fixed=False)
                fixed = predict(cal, k, L, H, fmt, spec.rate_bps, fixed=True, rtt_s=2 * spec.delay_s + hop_s)
                before, after = 1000 * env.total_s, 1000 * fixed.total_s
                row["links"][name] = {
                    "latency_ms_per_token": mean_ci(r["step_ms"]),
                    "predicted_ms_per_token_env": before, "ratio_measured_vs_env": measured / before,
                    "predicted_ms_per_token_fixed": after, "ratio_measured_vs_fixed": measured / after,
                    "error_env": (before - measured) / measured, "error_fixed": (after - measured) / measured,
                    "ue_compute_ms": mean_ci(r["step_ue_ms"]), "ue_compute_ms_predicted": 1000 * env.ue_s,
                    "edge_compute_ms": mean_ci(r["step_edge_ms"]),
                    "edge_compute_ms_predicted_env": 1000 * env.edge_s,
                    "edge_compute_ms_predicted_fixed": 1000 * fixed.edge_s,
                    "link_ms": mean_ci(outside), "link_ms_predicted_env": 1000 * env.tx_s,
                    "link_ms_predicted_fixed": 1000 * (fixed.tx_s + fixed.rtt_s),
                    "link_tcp_bytes_up": r["link_tcp_bytes_up"], "app_bytes_up": r["bytes_up_total"],
                    "frames": r["frames"]}
            points.append(row)
    result = {
        "benchmark": "device_path", "model": args.model, "num_layers": L, "hidden_size": H,
        "ks": ks, "formats": formats, "tokens_per_prompt": args.tokens, "prompts": prompts,
        "links": {name: spec.model_dump() for name, (spec, _) in links.items()},
        "env_link": f"digital QPSK link at {SNR_DB} dB (no bit errors) at the emulated rate; "
                    "DeviceModel(tokens=1) with calibrated ue_flops/edge_flops",
        "calibration": {**cal, "note": "from the loopback run (no emulated link): UE s/layer = median head compute "
                                       "per step / k; edge = least squares of the edge's reported compute on L - k "
                                       "(intercept: norm + output head); serving hops = median time outside both "
                                       "computes. Env model: DeviceModel(tokens=1) with these speeds; fixed model: "
                                       "+ rtt_s = 2 x delay + hops, + edge_fixed_s = output head"},
        "ppl_windows": {"corpus": "wiki", "n": args.ppl_windows, "window": args.ppl_window,
                        "in_process_ppl_fp32_full": math.exp(statistics.fmean(in_process)),
                        "ci": "95% over windows (normal approximation); deterministic windows, greedy, no seeds"},
        "points": points,
        "machine": {"cpus": os.cpu_count(), "ue_cpu": UE_CPU, "edge_cpu": EDGE_CPU, "python": platform.python_version(),
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "elapsed_s": elapsed,
        "command": "nice .venv/bin/python benchmarks/device_path.py " + " ".join(sys.argv[1:]),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1))
    print(f"wrote {out_path}")
    for p in points:
        links_txt = "  ".join(f"{n}: {v['latency_ms_per_token']['mean']:.1f} ms vs env {v['predicted_ms_per_token_env']:.1f}"
                              f" / fixed {v['predicted_ms_per_token_fixed']:.1f} (link {v['link_ms']['mean']:.1f} vs "
                              f"{v['link_ms_predicted_env']:.2f} / {v['link_ms_predicted_fixed']:.1f})"
                              for n, v in p["links"].items())
        ratio = p["ppl_ratio_vs_fp32"]["mean"] if p["ppl_ratio_vs_fp32"] else float("nan")
        print(f"k={p['k']:2d} {p['format']}: {p['bytes_per_token']:.0f} B/token, ppl x{ratio:.4f}, "
              f"greedy {p['greedy_equal']['equal']}/{p['greedy_equal']['prompts']}  {links_txt}")


if __name__ == "__main__":
    main()
