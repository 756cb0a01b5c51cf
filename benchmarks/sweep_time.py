"""What the shared measurement store saves a sweep: the hardest network-sweep trial cold and warm, and a
small multi-trial sweep with its store hit rates.

This example trains the hardest point of ``tune_configs/network_sweep.yaml`` (0 dB mean SNR, Rayleigh
fading, 5 MHz, 8 users, w_l = 1) twice in fresh run folders: once with an empty measurement store
(``hardest_trial_cold_s``: every real SmolLM2 evaluation, Dyna's and the scoring truth's, is measured)
and once with the store the first run filled (``hardest_trial_warm_s``: the same points are read back;
the goal is <= 180 s). Then it runs a small sweep (``--trials`` conditions of the same spec) on an
embedded Ray with one store for every trial and records each trial's wall time and hit rates.

The trials are reduced so that the whole script fits in about 15 minutes on a loaded 2-core machine;
the reductions are ``--set`` overrides recorded in the JSON (``settings``): fewer PPO iterations,
fewer tokens per evaluation, fewer held-out episodes. Full-size numbers scale with those (see README).

How to run:  nice .venv/bin/python benchmarks/sweep_time.py [--trials 4] [--set algorithm.iterations=2 ...]
             (``--collect /tmp/splitlab-sweep-time-XXXX`` writes the JSON from a run that was cut short)

Results to expect: the warm trial skips every real evaluation (store hit rate 1.0, ``mbrl/real_evals``
counted by the pool but served from the store) and takes the training time plus the model load; the
cold one adds the evaluations. Writes ``benchmarks/results/sweep_time.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HARDEST = {"env.dynamics.mean_db": 0.0, "env.dynamics.fading": "rayleigh", "env.channel.bandwidth_hz": 5.0e6,
           "env.num_users": 8, "env.w_l": 1.0}
"""The network sweep's hardest condition (the one that took 18.5 minutes at full size)."""
REDUCED = {"algorithm.iterations": 2, "quality.n_tokens": 128, "evaluation.episodes": 2,
           "dyna.initial_evals": 8, "dyna.budget": 16, "algorithm.train_batch_size": 400,
           "algorithm.minibatch_size": 200, "surrogate.epochs": 200}
"""Default reductions (each a ``--set`` key) that keep the benchmark within ~15 minutes here."""


def _trial_spec(plan, overrides: dict, settings: dict, out: Path, name: str) -> dict:
    from splitlab.dotted import set_dotted

    spec = plan.trial_spec({})
    for key, value in {**overrides, **settings}.items():
        set_dotted(spec, key, value)
    spec.update({"name": name, "out": str(out), "tracking": {"enabled": False}})
    spec.pop("sweep", None)
    return spec


def _train(spec: dict) -> dict:
    from splitlab.platform.training import run_training

    start = time.perf_counter()
    result = run_training(spec, resume=False, log=None)
    return {**_summary(result.metrics), "wall_s": time.perf_counter() - start}


def _summary(m: dict) -> dict:
    """The figures kept from a run's final metrics (``results.json``)."""
    return {"wall_s": m.get("time/wall_s"), "real_evals": m.get("mbrl/real_evals"),
            "store_hits": m.get("store/hits"), "store_misses": m.get("store/misses"),
            "store_hit_rate": m.get("store/hit_rate"), "eval_store_hit_rate": m.get("eval/store_hit_rate"),
            "return_vs_oracle": m.get("policy/return_vs_oracle")}


def _write(out: dict) -> None:
    out["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sweep_time.json").write_text(json.dumps(out, indent=1, default=str))


def collect(work: Path, settings: dict) -> dict:
    """The JSON from the finished run folders of an earlier (cut short) run of this script in ``work``:
    each run's ``time/wall_s`` (training and scoring, no interpreter start) and store counters."""
    out: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "settings": settings,
                 "hardest_condition": HARDEST, "collected_from": str(work), "goal_warm_s": 180.0}
    for name in ("cold", "warm"):
        results = work / name / f"hardest-{name}" / "results.json"
        if results.exists():
            out[name] = _summary(json.loads(results.read_text())["metrics"])
            out[f"hardest_trial_{name}_s"] = out[name]["wall_s"]
    if "warm" in out:
        out["goal_met"] = out["hardest_trial_warm_s"] <= 180.0
    out["sweep"] = None
    out["note"] = "one run each (wall times, not sampled figures); the small sweep was not run to the end"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", default=None, help="write the JSON from the run folders of an earlier run "
                                                        "of this script (its splitlab-sweep-time-* folder)")
    parser.add_argument("--trials", type=int, default=4, help="conditions in the small sweep (0: skip it)")
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE reductions (YAML-typed)")
    args = parser.parse_args()
    import yaml

    from splitlab.llm.measurement_store import ENV_VAR
    from splitlab.platform.sweep import load_plan, run_sweep

    settings = dict(REDUCED)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = yaml.safe_load(value)
    if args.collect:
        _write(collect(Path(args.collect), settings))
        return
    plan = load_plan(ROOT / "tune_configs" / "network_sweep.yaml")
    work = Path(tempfile.mkdtemp(prefix="splitlab-sweep-time-"))
    os.environ[ENV_VAR] = str(work / "measurements")
    load = os.getloadavg()
    cold = _train(_trial_spec(plan, HARDEST, settings, work / "cold", "hardest-cold"))
    warm = _train(_trial_spec(plan, HARDEST, settings, work / "warm", "hardest-warm"))
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_start": load},
           "settings": settings, "hardest_condition": HARDEST,
           "hardest_trial_cold_s": cold["wall_s"], "hardest_trial_warm_s": warm["wall_s"],
           "goal_warm_s": 180.0, "goal_met": warm["wall_s"] <= 180.0, "cold": cold, "warm": warm,
           "n": 1, "seeds": [0], "note": "one run each (a wall time, not a sampled figure); ratio side by side"}
    _write(out)  # the trial figures survive a sweep that is cut short
    if args.trials:
        # a fresh store, so the sweep's hit rates come from sharing between its own trials
        os.environ[ENV_VAR] = str(work / "sweep-measurements")
        means = [0.0, 10.0, 20.0, 30.0][: args.trials]
        base = _trial_spec(plan, {**HARDEST, "env.num_users": 1}, settings, work / "sweep-runs", "sweep")
        base["sweep"] = {"name": "sweep-time", "cpus_per_trial": 0.5, "storage_path": str(work / "tune"),
                         "scheduler": "fifo", "searcher": "random",
                         "params": {"env.dynamics.mean_db": {"grid_search": means}}}
        start = time.perf_counter()
        outcome = run_sweep(load_plan(base), tracking_uri=f"sqlite:///{work / 'mlflow.db'}", num_cpus=2, verbose=0)
        trials = [{"mean_db": t["config"].get("env", {}).get("dynamics", {}).get("mean_db"), "status": t["status"],
                   "time_total_s": t["metrics"].get("time_total_s"),
                   "store_hit_rate": t["metrics"].get("store/hit_rate"),
                   "eval_store_hit_rate": t["metrics"].get("eval/store_hit_rate"),
                   "real_evals": t["metrics"].get("mbrl/real_evals")} for t in outcome.trials]
        out["sweep"] = {"trials": trials, "wall_s": time.perf_counter() - start, "n_trials": len(trials)}
    _write(out)
    print(json.dumps({k: out[k] for k in ("hardest_trial_cold_s", "hardest_trial_warm_s", "goal_met")}))


if __name__ == "__main__":
    main()
