"""Privacy leakage, perplexity, UE energy and latency at every split point of SmolLM2.

This example measures, for every split point k = 0..L of the model, what an honest-but-curious edge
recovers of the input tokens from the activation it receives (nearest neighbour in the input
embeddings; a ridge regression to the embeddings fitted on disjoint training text, then nearest
neighbour), clean and after an analog AWGN channel at 10 dB (3 noise seeds; the tail's perplexity
and the attacker see the same noisy tensor), plus the device cost of each split: per decoded token
and per 128-token prefill, UE energy and end-to-end latency for a phone and a Jetson-class UE with an
edge GPU behind a digital link (fp16, QPSK, 20 MHz, 20 dB: the project's default link model).

Text: Wikipedia from the exllamav2 calibration file; the first ``--eval-tokens`` are scored, the next
``--fit-tokens`` train the learned attack (windows of 128 tokens, disjoint). 95% CIs: percentile
bootstrap over windows (2,000 resamples), seeds averaged within a window.

How to run:  nice .venv/bin/python benchmarks/privacy_cost.py [--model smollm2] [--eval-tokens 4096]
             [--fit-tokens 4096] [--seeds 3] [--splits 0,30,15,...]
             (about 1.5 CPU-minutes per split, 8-15 min of wall time per split on 2 cores at a load
             average of 20-30; the JSON is rewritten after each k, so a stopped run keeps what it measured)
             nice .venv/bin/python benchmarks/privacy_cost.py --replot   # redraw the plot from the JSON

Results to expect: nearest-neighbour recovery near 1 at k = 0 that falls with depth, a learned attack
at or above it; AWGN at 10 dB lowers leakage and raises perplexity most at small k; UE energy and
latency per token growing with k (the phone is memory-bound in decode). Writes
benchmarks/results/privacy_cost.json and benchmarks/results/privacy_frontier.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results"
UE_PROFILES = ("phone", "jetson")


def _window_nll(model, states: torch.Tensor, windows: torch.Tensor, k: int, batch_size: int) -> np.ndarray:
    """Summed next-token NLL per window [N] from the received states [N, W, H]."""
    from splitlab.llm.split_model import Activation

    out = []
    pos = torch.arange(windows.shape[1]).unsqueeze(0)
    for h, ids in zip(states.split(batch_size), windows.split(batch_size)):
        logits = model.tail(Activation(h, pos.expand(len(ids), -1), None), k)  # [B, W, V]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # [B, W-1]
        out.append(nll.sum(1).double().numpy())
    return np.concatenate(out)


def _ppl_with_ci(nll_per_window: np.ndarray, tokens_per_window: int, seed: int) -> tuple[float, list[float]]:
    from splitlab.privacy import mean_ci

    mean_nll = nll_per_window / tokens_per_window
    lo, hi = mean_ci(mean_nll, seed)
    return math.exp(mean_nll.mean()), [math.exp(lo), math.exp(hi)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--fit-tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--snr-db", type=float, default=10.0)
    parser.add_argument("--splits", default=None,
                        help="comma-separated k in the order measured (default: all 0..L); the JSON is rewritten "
                             "after each k, rows sorted by k")
    parser.add_argument("--context", type=int, default=256, help="cached tokens before the decoded one")
    parser.add_argument("--out", default=str(RESULTS / "privacy_cost.json"))
    parser.add_argument("--replot", action="store_true", help="only redraw the plot from the existing JSON")
    args = parser.parse_args()
    if args.replot:
        done = json.loads(Path(args.out).read_text())
        print(_plot(done["rows"], args.snr_db, Path(args.out), done["model"], done["tokens_eval"]))
        return
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from splitlab.channel import Channel, ChannelConfig
    from splitlab.envs.device_profiles import DeviceCostModel
    from splitlab.llm import SplitModel
    from splitlab.llm.corpora import token_windows
    from splitlab.llm.cost import LayerCosts
    from splitlab.privacy import (NearestNeighbourInverter, attack_hits, input_embeddings, layer_states_at,
                                  pooled, received, split_windows)

    start = time.perf_counter()
    model = SplitModel.load(args.model)
    ks = [int(k) for k in args.splits.split(",")] if args.splits else list(range(model.num_layers + 1))
    w = args.window
    windows = token_windows(model.tokenizer, "wiki", args.eval_tokens + args.fit_tokens, w)
    eval_w, fit_w = split_windows(windows, args.eval_tokens // w)
    eval_states = layer_states_at(model, eval_w, sorted({*ks, model.num_layers}))
    fit_states = layer_states_at(model, fit_w, ks)
    nn = NearestNeighbourInverter(input_embeddings(model))
    awgn = Channel(ChannelConfig(kind="awgn", snr_db=args.snr_db))
    tag = f"awgn_{args.snr_db:g}db"

    lc = LayerCosts.from_model(model)
    link = ChannelConfig(kind="digital", quant="fp16", modulation="qpsk", snr_db=20.0)
    costs = {p: (DeviceCostModel(lc, p, "edge-gpu", link).per_k("decode", context=args.context),
                 DeviceCostModel(lc, p, "edge-gpu", link).per_k("prefill", tokens=w)) for p in UE_PROFILES}

    # The split is exact (tests/test_split_model.py), so the clean perplexity is the same at every k:
    # computed once, from the states after the last layer (only the final norm and the head run).
    nll_clean = _window_nll(model, eval_states[model.num_layers], eval_w, model.num_layers, 8)
    rows = []
    for k in ks:
        t0 = time.perf_counter()
        clean = attack_hits(eval_states[k], eval_w, nn, fit=(fit_states[k], fit_w))
        noisy_hits, noisy_nll = [], []
        for s in range(args.seeds):
            rx = received(eval_states[k], awgn.as_corruption(np.random.default_rng([s, k, 0])))
            rx_fit = received(fit_states[k], awgn.as_corruption(np.random.default_rng([s, k, 1])))
            noisy_hits.append(attack_hits(rx, eval_w, nn, fit=(rx_fit, fit_w)))
            noisy_nll.append(_window_nll(model, rx, eval_w, k, 8))
        row: dict = {"k": k}
        for attack in ("nn", "learned"):
            for label, leak in (("", pooled([clean[attack]], seed=k)),
                                (f"_{tag}", pooled([h[attack] for h in noisy_hits], seed=k))):
                row[f"leakage_{attack}_top1{label}"] = leak.top1
                row[f"leakage_{attack}_top1{label}_ci95"] = list(leak.top1_ci95)
                row[f"leakage_{attack}_top5{label}"] = leak.top5
                row[f"leakage_{attack}_top5{label}_ci95"] = list(leak.top5_ci95)
        row["ppl_clean"], row["ppl_clean_ci95"] = _ppl_with_ci(nll_clean, w - 1, k)
        row[f"ppl_{tag}"], row[f"ppl_{tag}_ci95"] = _ppl_with_ci(np.mean(noisy_nll, axis=0), w - 1, k)
        decode = {p: c[0] for p, c in costs.items()}
        prefill = {p: c[1] for p, c in costs.items()}
        row["energy_mj_per_token"] = {p: 1e3 * float(c.energy_j[k]) for p, c in decode.items()}
        row["latency_ms_per_token"] = {p: 1e3 * float(c.latency_s[k]) for p, c in decode.items()}
        row["ue_latency_ms_per_token"] = {p: 1e3 * float(c.ue_time_s[k]) for p, c in decode.items()}
        row["radio_energy_mj_per_token"] = {p: 1e3 * float(c.tx_energy_j[k]) for p, c in decode.items()}
        row[f"prefill_energy_mj_{w}_tokens"] = {p: 1e3 * float(c.energy_j[k]) for p, c in prefill.items()}
        row[f"prefill_latency_ms_{w}_tokens"] = {p: 1e3 * float(c.latency_s[k]) for p, c in prefill.items()}
        rows.append(row)
        print(f"k={k:2d} nn {row['leakage_nn_top1']:.3f}/{row[f'leakage_nn_top1_{tag}']:.3f} "
              f"learned {row['leakage_learned_top1']:.3f}/{row[f'leakage_learned_top1_{tag}']:.3f} "
              f"ppl {row['ppl_clean']:.2f}/{row[f'ppl_{tag}']:.2f} "
              f"phone {row['energy_mj_per_token']['phone']:.2f} mJ {row['latency_ms_per_token']['phone']:.2f} ms "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

        _write(args, model, eval_w, fit_w, link, rows, start, complete=len(rows) == len(ks))


def _plot(rows: list[dict], snr_db: float, out: Path, model: str, tokens: int) -> Path:
    """The leakage and frontier plot from the result rows: clean and AWGN series, both attacks."""
    from splitlab.platform.analysis_plots import plot_privacy

    tag, series = f"awgn_{snr_db:g}db", []
    for row in rows:
        for label, suffix, ppl in (("clean", "", "ppl_clean"), (f"AWGN {snr_db:g} dB", f"_{tag}", f"ppl_{tag}")):
            entry = {"k": row["k"], "channel": label, "ppl": row[ppl]}
            for a in ("nn", "learned"):
                key = f"leakage_{a}_top1{suffix}"
                entry.update({f"leak_{a}_top1": row[key], f"leak_{a}_top1_lo": row[f"{key}_ci95"][0],
                              f"leak_{a}_top1_hi": row[f"{key}_ci95"][1]})
            series.append(entry)
    return plot_privacy(series, out.with_name("privacy_frontier.png"), model, tokens)


def _write(args, model, eval_w, fit_w, link, rows, start, complete: bool) -> None:
    """Write the JSON (and the plot) after every k, so that an interrupted run keeps what it measured."""
    from splitlab.envs.device_profiles import PROFILES

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["k"])
    plot = _plot(rows, args.snr_db, out, args.model, eval_w.numel())
    result = {
        "model": args.model, "num_layers": model.num_layers, "hidden_size": model.hidden_size,
        "corpus": "wiki (exllamav2 wiki.utf8)", "window": args.window, "complete": complete,
        "tokens_eval": int(eval_w.numel()), "tokens_fit": int(fit_w.numel()), "sequences_eval": int(len(eval_w)),
        "seeds": args.seeds, "noise": f"analog AWGN at {args.snr_db:g} dB per token (ChannelConfig kind=awgn)",
        "ci95": "percentile bootstrap over eval windows, 2000 resamples; noise seeds averaged within a window",
        "attacks": {"nn": "cosine nearest neighbour in the input embedding matrix",
                    "learned": "ridge regression (standardised inputs, penalty chosen on 20% of the fit text) to the "
                               "input embedding, fitted on the fit text through the same k and channel, then nearest "
                               "neighbour; scored only on the eval text"},
        "device": {"decode_context_tokens": args.context, "prefill_tokens": args.window, "edge": "edge-gpu",
                   "link": link.to_dict(), "profiles": {p: PROFILES[p].model_dump() for p in (*UE_PROFILES, "edge-gpu")},
                   "energy": "UE only: FLOPs x J/FLOP + DRAM bytes x J/byte + radio power x airtime",
                   "latency": "roofline UE + airtime + roofline edge, peak rates (a lower bound)"},
        "rows": rows, "plot": plot.name, "wall_time_s": time.perf_counter() - start,
        "load_average": list(os.getloadavg()),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    if complete:
        print(f"wrote {out} and {plot} in {result['wall_time_s']:.0f} s; load average {result['load_average']}")

if __name__ == "__main__":
    main()
