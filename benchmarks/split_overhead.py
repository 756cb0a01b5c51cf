"""Cost of splitting: split forward vs unsplit forward, and the memory of a process holding one half.

This example measures, on SmolLM2, a split forward (head at k, hand-over, tail) against the model's own
unsplit forward on the same 512 tokens, alternating the two, and the steady-state resident memory of a
process that holds only the UE half, only the edge half (k = 10), or the full model.

How to run:  .venv/bin/python benchmarks/split_overhead.py [--runs 15] [--k 10]

Results to expect: time ratio split/unsplit close to 1.0 (target <= 1.03); memory ratios UE half <= 0.6
and edge half <= 0.85 of the full-model process. Writes benchmarks/results/split_overhead.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(part: str, k: int) -> None:
    """Load one part, run one forward through it, report resident memory as JSON on stdout."""
    import torch

    from splitlab.llm import SplitModel

    torch.set_num_threads(1)
    baseline = rss_mib()  # interpreter + torch + transformers, before any weights
    model = SplitModel.load("smollm2", part=part, k=None if part == "full" else k)
    ids = torch.randint(0, 49152, (1, 512))
    if part in ("full", "ue"):
        act = model.head(ids, k)
    if part in ("full", "edge"):
        if part == "edge":
            from splitlab.llm.split_model import Activation

            act = Activation(torch.randn(1, 512, model.hidden_size), torch.arange(512)[None], None)
        model.tail(act, k)
    gc.collect()
    time.sleep(0.5)
    params = sum(p.numel() * p.element_size() for p in model.model.parameters()) / 2**20
    print(json.dumps({"part": part, "rss_mib": rss_mib(), "import_baseline_mib": baseline, "param_mib": params}))


def timing(runs: int, k: int) -> dict:
    import torch

    from splitlab.llm import SplitModel

    model = SplitModel.load("smollm2")
    ids = torch.randint(0, model.model.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0))
    split_t, full_t = [], []
    with torch.no_grad():
        model.model(ids)  # warm-up both paths
        model.tail(model.head(ids, k), k)
        for _ in range(runs):
            t = time.perf_counter()
            model.model(ids)
            full_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            model.tail(model.head(ids, k), k)
            split_t.append(time.perf_counter() - t)
    return {"unsplit_median_s": statistics.median(full_t), "split_median_s": statistics.median(split_t),
            "time_ratio": statistics.median(split_t) / statistics.median(full_t), "runs": runs,
            "tokens": 512, "k": k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--child", choices=["full", "ue", "edge"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.k)
        return
    result = timing(args.runs, args.k)
    memory = {}
    for part in ("full", "ue", "edge"):
        out = subprocess.run([sys.executable, __file__, "--child", part, "--k", str(args.k)],
                             check=True, capture_output=True, text=True).stdout
        memory[part] = json.loads(out.strip().splitlines()[-1])
    rss = {part: m["rss_mib"] for part, m in memory.items()}
    result.update({
        "rss_mib": rss,
        "param_mib": {part: m["param_mib"] for part, m in memory.items()},
        "import_baseline_mib": memory["full"]["import_baseline_mib"],
        # The same ratios without the interpreter + torch + transformers import cost every process pays.
        "ue_memory_ratio_net_of_imports": (rss["ue"] - memory["ue"]["import_baseline_mib"])
        / (rss["full"] - memory["full"]["import_baseline_mib"]),
        "edge_memory_ratio_net_of_imports": (rss["edge"] - memory["edge"]["import_baseline_mib"])
        / (rss["full"] - memory["full"]["import_baseline_mib"]),
        "ue_memory_ratio": rss["ue"] / rss["full"],
        "edge_memory_ratio": rss["edge"] / rss["full"],
        "targets": {"time_ratio": 1.03, "ue_memory_ratio": 0.6, "edge_memory_ratio": 0.85},
        "machine": f"{platform.machine()} {platform.processor()}",
    })
    result["meets_targets"] = (result["time_ratio"] <= 1.03 and result["ue_memory_ratio"] <= 0.6
                               and result["edge_memory_ratio"] <= 0.85)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "split_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
