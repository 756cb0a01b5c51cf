"""How far myopic rules fall below the oracles once switching costs and a shared edge queue make k sequential.

This example scores the reference policies of :mod:`splitlab.envs.sequential_policies` on cells of
users decoding 32 blocks of 16 tokens at split points k in 0, 3, ..., 30 (:class:`splitlab.envs.cell.Cell`, a fixed population per
episode), for every (switching-cost scale, edge load) pair and two quality models:

- ``smollm2_awgn``: the committed SmolLM2-135M grid (``docs/analysis/grid.json``, AWGN sweep);
- ``synthetic``: the synthetic grid of :mod:`splitlab.envs.synthetic` (a stand-in whose best k moves with
  the SNR; never a measurement), where the per-step best k changes along a trace.

Policies: the clairvoyant DP (exact for one user on an idle edge; in a loaded cell the best of every
fixed-k plan and 4 rounds of congestion-priced per-user DP against the realised queue, an achievable
lower bound on the cell's clairvoyant optimum), the information-matched planner (noisy SNR estimates
and last wait, true quality; certainty-equivalent DP 12 steps ahead), myopic greedy (true SNR and
quality, ignoring switching and queue), greedy that also sees the last wait (``greedy_queue``) and also
prices the switch (``greedy_switch_queue``), greedy on a surrogate fitted to the grid (estimated SNR),
the best fixed k (chosen on 5 training traces), and random. A return is the mean over the cell's users of
the per-user episode return; each figure is the mean over ``--traces`` held-out traces (seeds 0..n-1)
with a 95% t-interval, and the gaps are paired per trace.

How to run:  nice .venv/bin/python benchmarks/sequential_gap.py [--traces 20] [--users 16]

Results to expect (about 25 minutes on 2 busy cores): with free switching and an idle edge every
rule is near the clairvoyant DP; on the synthetic grid myopic greedy falls far below it as soon as
switching costs, and greedy that prices the switch recovers most of that; on both grids, at load 2
(the edge cannot serve everyone at k = 0) every selfish rule (greedy variants, the information-matched
planner) collapses while the clairvoyant plan spreads users over k. Writes
``benchmarks/results/sequential_gap.json`` and ``benchmarks/results/sequential_gap.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REWARD_MODELS = {
    "smollm2_awgn": {"kind": "grid", "path": "docs/analysis", "channel": "awgn"},
    "synthetic": {"kind": "synthetic", "channel": "awgn", "num_layers": 30, "hidden_size": 576},
}
SWITCH_SCALES = (0.0, 0.1, 1.0, 3.0)
LOADS = (0.05, 1.0, 2.0)
TRAIN_SEEDS = tuple(range(1000, 1005))
CANDIDATE_KS = tuple(range(0, 31, 3))  # the measured grid's split points, for both quality models


def _stats(x: list[float]) -> dict:
    from splitlab.platform.analysis import _ci95

    a = np.asarray(x, dtype=np.float64)
    return {"mean": float(a.mean()), "ci95": _ci95(a), "n": len(a)}


def score_setting(reward_model, surrogate, load: float, switch: float, users: int, traces: int) -> dict:
    from splitlab.envs.cell import Cell, CellConfig
    from splitlab.envs.sequential import DecodeModel
    from splitlab.envs.sequential_policies import (
        FixedPolicy,
        InfoMatchedPolicy,
        clairvoyant_plan,
        policy_suite,
        run_cell,
    )

    decode = {"reward_model": reward_model, "kv_dim": 192, "switch_scale": switch, "candidate_ks": list(CANDIDATE_KS)}
    cell = Cell(CellConfig(num_users=users, queue={"load": load}, decode=decode))
    m = cell.model
    sur_model = DecodeModel(cell.config.decode.model_copy(), surrogate, m.costs)
    suite = policy_suite(m, sur_model)
    suite["info_matched"] = lambda: InfoMatchedPolicy(horizon=12)
    train = {a: np.mean([run_cell(cell, FixedPolicy(a), s).mean() for s in TRAIN_SEEDS]) for a in range(len(m.ks))}
    best_a = max(train, key=train.get)
    per_trace: dict[str, list[float]] = {"clairvoyant_dp": [], "best_fixed": []}
    for seed in range(traces):
        _, value, _ = clairvoyant_plan(cell, seed, rounds=4)
        per_trace["clairvoyant_dp"].append(value)
        per_trace["best_fixed"].append(float(run_cell(cell, FixedPolicy(best_a), seed).mean()))
        for name, make in suite.items():
            per_trace.setdefault(name, []).append(float(run_cell(cell, make(), seed).mean()))
    clair = np.asarray(per_trace["clairvoyant_dp"])
    return {"load": load, "switch_scale": switch, "best_fixed_k": int(m.ks[best_a]),
            "returns": {k: _stats(v) for k, v in per_trace.items()},
            "gap_to_clairvoyant": {k: _stats(list(clair - np.asarray(v))) for k, v in per_trace.items()
                                   if k != "clairvoyant_dp"},
            "per_trace": per_trace}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["reward_models"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = results["reward_models"][name]["settings"]
        for load, marker in zip(LOADS, "o^s"):
            sel = [r for r in rows if r["load"] == load]
            x = [r["switch_scale"] for r in sel]
            for policy, color in (("greedy_myopic", "C3"), ("greedy_switch_queue", "C1"), ("info_matched", "C2"),
                                  ("best_fixed", "C0")):
                g = [r["gap_to_clairvoyant"][policy] for r in sel]
                ax.errorbar(np.asarray(x) + 1e-3, [v["mean"] for v in g], yerr=[v["ci95"] for v in g], color=color,
                            marker=marker, label=f"{policy}, load {load}", capsize=2, lw=1)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("switching-cost scale")
        ax.set_ylabel("clairvoyant DP return - policy return (per user)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=int, default=20, help="held-out traces (cell seeds) per setting")
    parser.add_argument("--users", type=int, default=16, help="users per cell")
    parser.add_argument("--only", choices=sorted(REWARD_MODELS), help="one quality model only")
    args = parser.parse_args()

    from splitlab.envs.reward_models import make_reward_model
    from splitlab.mbrl.surrogate import fit_on_grid

    results: dict = {"traces": args.traces, "held_out_seeds": f"0..{args.traces - 1}",
                     "best_fixed_selected_on_seeds": list(TRAIN_SEEDS), "users_per_cell": args.users,
                     "episode": {"steps": 32, "block_tokens": 16, "prompt_tokens": 128},
                     "switch_scales": list(SWITCH_SCALES), "loads": list(LOADS),
                     "load_avg_1m_at_start": os.getloadavg()[0], "reward_models": {}}
    start = time.perf_counter()
    for name, spec in REWARD_MODELS.items():
        if args.only and name != args.only:
            continue
        model = make_reward_model(spec)
        surrogate, report, n_points = fit_on_grid(model)
        settings = []
        for load in LOADS:
            for switch in SWITCH_SCALES:
                t0 = time.perf_counter()
                row = score_setting(model, surrogate, load, switch, args.users, args.traces)
                settings.append(row)
                r = row["returns"]
                print(f"{name:13s} load {load:4.2f} switch {switch:3.1f}  clairvoyant {r['clairvoyant_dp']['mean']:9.2f}"
                      f"  info {r['info_matched']['mean']:9.2f}  myopic {r['greedy_myopic']['mean']:9.2f}"
                      f"  switch-greedy {r['greedy_switch_queue']['mean']:9.2f}  surrogate "
                      f"{r['greedy_surrogate']['mean']:9.2f}  fixed(k={row['best_fixed_k']}) "
                      f"{r['best_fixed']['mean']:9.2f}  random {r['random']['mean']:9.2f}"
                      f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        results["reward_models"][name] = {"spec": spec, "surrogate_fit": report.describe(),
                                          "surrogate_points": n_points, "settings": settings}
    results["wall_time_s"] = time.perf_counter() - start
    results["load_avg_1m_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sequential_gap.json"
    out.write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "sequential_gap.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
