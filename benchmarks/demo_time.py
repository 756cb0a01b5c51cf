"""How long the main job takes: `splitlab demo --quick` and `splitlab demo`, each in a fresh folder.

Each runs as a subprocess in its own temporary working directory (its own runs/ and mlflow.db), the
way `make demo` runs it, with the SmolLM2 checkpoint already converted (`make setup` and a first use
do that once, about 20 s). The JSON keeps each stage's time from the demo's own stage lines, the
total, the wall time of the whole command (interpreter and Ray start included) and the summary
table's scores, against issue 8's targets: the quick demo within 3 minutes, the full one within 15,
on a 2-core machine.

How to run:  .venv/bin/python benchmarks/demo_time.py [--only quick|full]   (about 10 minutes on 2 cores)

Results to expect: about 2 minutes for the quick demo and 8 for the full one on a quiet 2-core
machine (analysis and the truth grid take most of it); more under load, since every stage is
CPU-bound. Writes ``benchmarks/results/demo_time.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS_S = {"quick": 180.0, "full": 900.0}
STAGE = re.compile(r"^\[(\d+)/(\d+)\] (.*) done in (\d+) s \(total (\d+) s\)$")
ROW = re.compile(r"^  (Dyna PPO \(ours\)|paper mode PPO|random|oracle|best fixed \(\S+\))\s+(-?[\d.]+)\s+(-?[\d.]+)")


def run_demo(kind: str) -> dict:
    cmd = [sys.executable, "-m", "splitlab.cli", "demo"] + (["--quick"] if kind == "quick" else [])
    with tempfile.TemporaryDirectory(prefix=f"splitlab-demo-{kind}-") as work:
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - start
    lines = done.stdout.splitlines()
    if done.returncode != 0:
        raise SystemExit(f"splitlab demo ({kind}) failed:\n" + "\n".join(lines[-30:]) + done.stderr[-3000:])
    stages = [{"stage": m[3], "seconds": float(m[4])} for m in map(STAGE.match, lines) if m]
    total = next(float(line.split()[1]) for line in lines if line.startswith("total "))
    scores = {m[1]: {"return": float(m[2]), "score": float(m[3])} for m in map(ROW.match, lines) if m}
    return {"stages": stages, "total_s": total, "command_wall_s": wall, "target_s": TARGETS_S[kind],
            "met": wall <= TARGETS_S[kind], "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["quick", "full"], default=None)
    parser.add_argument("--out", default=str(RESULTS / "demo_time.json"))
    args = parser.parse_args()
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg_start": os.getloadavg()}}
    for kind in ("quick", "full"):
        if args.only in (None, kind):
            print(f"== splitlab demo{' --quick' if kind == 'quick' else ''}", flush=True)
            out[kind] = run_demo(kind)
            print(f"   {out[kind]['total_s']:.0f} s by the demo, {out[kind]['command_wall_s']:.0f} s command "
                  f"(target {TARGETS_S[kind]:.0f} s)", flush=True)
    out["machine"]["load_avg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: {"total_s": v["total_s"], "command_wall_s": v["command_wall_s"], "met": v["met"]}
                      for k, v in out.items() if k in TARGETS_S}, indent=1))


if __name__ == "__main__":
    main()
