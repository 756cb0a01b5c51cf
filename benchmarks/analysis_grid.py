"""Prefix reuse in the split-point analysis: the grid with one clean pass per batch vs each point from scratch.

This example computes the same grid (every split point 0..30 of SmolLM2 x 4 AWGN SNRs, 1,024 tokens of
Wikipedia) twice: with prefix reuse (``perplexity_grid``: one pass gives every layer's hidden state,
only tails rerun) and naively (``perplexity``: head and tail from scratch for every point). The two are
alternated SNR by SNR in one run so that machine noise hits both alike, and must agree numerically.

How to run:  .venv/bin/python benchmarks/analysis_grid.py [--tokens 1024] [--snr 0,10,20,30]

Results to expect: wall-time ratio reuse/naive near 0.5 (target <= 0.6), identical perplexities.
Writes benchmarks/results/analysis_grid.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--snr", default="0,10,20,30")
    args = parser.parse_args()

    from splitlab.channel import Channel, ChannelConfig
    from splitlab.llm import SplitModel
    from splitlab.llm.corpora import token_windows
    from splitlab.llm.evaluation import perplexity, perplexity_grid

    model = SplitModel.load(args.model)
    windows = token_windows(model.tokenizer, "wiki", args.tokens, 128)
    ks = range(model.num_layers + 1)
    snrs = [float(s) for s in args.snr.split(",")]

    def corruption(snr: float, k: int):
        return Channel(ChannelConfig(kind="awgn", snr_db=snr)).as_corruption(np.random.default_rng([int(snr), k]))

    reuse_s = naive_s = 0.0
    max_rel_diff = 0.0
    for snr in snrs:
        t = time.perf_counter()
        grid = perplexity_grid(model, windows, {k: (k, corruption(snr, k)) for k in ks})
        reuse_s += time.perf_counter() - t
        t = time.perf_counter()
        naive = {k: perplexity(model, windows, k, corruption(snr, k)) for k in ks}
        naive_s += time.perf_counter() - t
        max_rel_diff = max(max_rel_diff, max(abs(grid[k] - naive[k]) / naive[k] for k in ks))
        print(f"snr {snr:g} dB: reuse {reuse_s:.1f} s, naive {naive_s:.1f} s so far")
    result = {"model": args.model, "tokens": int(windows.numel()), "splits": len(ks), "snr_db": snrs,
              "points": len(ks) * len(snrs), "reuse_s": reuse_s, "naive_s": naive_s,
              "time_ratio": reuse_s / naive_s, "target_time_ratio": 0.6,
              "meets_target": reuse_s / naive_s <= 0.6, "max_relative_ppl_difference": max_rel_diff}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "analysis_grid.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
