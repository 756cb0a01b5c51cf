"""`splitlab demo`: the paper's story end to end, stage by stage, with a summary at the end.

Each stage prints a line when it starts and when it ends (with elapsed time). A failing stage says
which one and why; the stages already done keep their MLflow runs and files.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import numpy as np
from pydantic import Field

from splitlab.config import Bool, ConfigModel, Str


class DemoConfig(ConfigModel):
    """What `splitlab demo` runs."""

    model: Annotated[Str, Field(min_length=1)] = "smollm2"
    """Model spec (tests use tiny-llama)."""
    quick: Bool = False
    """The same story at a smaller size (about 2 minutes on 2 cores, the full demo about 8)."""
    out: Annotated[Str, Field(min_length=1)] = "runs/demo"
    """Output folder for tables and plots."""
    tracking_uri: Str | None = None
    """MLflow tracking URI (default sqlite:///mlflow.db in the working directory)."""


@dataclass
class DemoState:
    """What the stages hand each other, and what the summary prints."""

    cfg: DemoConfig
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


Stage = tuple[str, Callable[[DemoState], None]]
SMOLLM2_LAYERS = 30


def stage_analysis(state: DemoState) -> None:
    from splitlab.platform.analysis import AnalysisConfig, run_analysis, summarise

    cfg = state.cfg
    quick = cfg.quick
    analysis = AnalysisConfig(
        model=cfg.model, tokens=256 if quick else 512, window=128 if cfg.model == "smollm2" else 64,
        splits=[0, *_candidate_ks(SMOLLM2_LAYERS, quick)] if cfg.model == "smollm2" else None,
        channels=["erasure", "awgn"], rho=[0.02, 0.1, 0.3], snr_db=[0.0, 10.0, 20.0, 30.0],
        seeds=1 if quick else 2, out=str(Path(cfg.out) / "analysis"), tracking_uri=cfg.tracking_uri,
        experiment="splitlab-demo")
    grid, files, run_id = run_analysis(analysis, progress=True)
    state.results["analysis"] = {"grid": grid, "files": files, "run_id": run_id, "summary": summarise(grid)}
    print(f"    clean perplexity {grid['ppl_clean']:.2f}; {len(grid['rows'])} grid points; "
          f"heatmap: {Path(analysis.out) / 'heatmap_erasure.png'}")


def _candidate_ks(num_layers: int, quick: bool) -> list[int]:
    # The UE keeps at least a few layers: a split at the embeddings would send the tokens in clear.
    step = max(1, num_layers // (5 if quick else 10))
    return list(range(step, num_layers + 1, step))


def _quality(cfg: DemoConfig) -> dict:
    """The real measurement behind Dyna's evaluations and the scoring truth: the model split at k, its
    hidden state through AWGN at an SNR rounded to 1 dB."""
    return {"kind": "live", "model": cfg.model, "corpus": "wiki", "channel": {"kind": "awgn"},
            "n_tokens": 128 if cfg.quick else 256, "window": 64, "decimals": 0}


def _training_spec(state: DemoState, name: str, mode: str, iterations: int) -> dict:
    """A wireless-preset spec like tune_configs/dyna.yaml, sized for the demo."""
    cfg = state.cfg
    quick = cfg.quick
    grid = state.results["analysis"]["grid"]
    spec = {
        "name": name, "mode": mode,
        "quality": _quality(cfg),
        "env": {"env": "split", "preset": "wireless", "candidate_ks": _candidate_ks(grid["num_layers"], quick),
                "dynamics": {"kind": "gauss_markov", "mean_db": 12.0, "std_db": 8.0, "corr": 0.9},
                "w_q": 1.0, "w_c": 0.5, "w_l": 0.5},
        "algorithm": {"name": "ppo", "iterations": iterations, "lr": 0.001, "gamma": 0.0,
                      "train_batch_size": 800 if quick else 2000, "minibatch_size": 200 if quick else 250,
                      "num_epochs": 5, "entropy_coeff": 0.003, "hidden": [64, 64], "num_env_runners": 2,
                      "envs_per_env_runner": 8, "env_runner_cpus": 0.5},
        "surrogate": {"members": 5, "hidden": [128, 128], "epochs": 300 if quick else 800, "holdout": 0.2},
        "dyna": {"initial_evals": 12 if quick else 24, "evals_per_iter": 4 if quick else 6,
                 "budget": 24 if quick else 80, "evaluators": 1, "evaluator_cpus": 0.0},
        # Held-out scoring against the truth grid (stage 3): the oracle needs every candidate k at every
        # SNR the traces visit, which live evaluation would pay for again in every run.
        "evaluation": {"episodes": 5 if quick else 20, "baselines": True,
                       "truth": {"kind": "grid", "path": str(Path(cfg.out) / "truth"), "channel": "awgn"}},
        "checkpoint": {"every": 1, "keep": 1},
        "tracking": {"enabled": True, "uri": cfg.tracking_uri, "experiment": "splitlab-demo"},
        "out": str(Path(cfg.out) / "train"),
    }
    if mode == "paper":  # fit once on the analysis grid, train on the surrogate alone
        spec["paper"] = {"grid": {"kind": "grid", "path": str(Path(cfg.out) / "analysis"), "channel": "awgn"}}
    return spec


def stage_surrogate(state: DemoState) -> None:
    from splitlab.envs.quality_grid import QualityGrid
    from splitlab.envs.reward_models import GridRewardModel
    from splitlab.mbrl import SurrogateConfig, fit_on_grid

    grid = QualityGrid.from_dict(state.results["analysis"]["grid"], "awgn")
    ensemble, report, n = fit_on_grid(GridRewardModel(grid), SurrogateConfig(epochs=300 if state.cfg.quick else 800))
    path = ensemble.save(Path(state.cfg.out) / "surrogate_on_grid.npz")
    state.results["surrogate"] = {"report": report, "points": n, "path": path}
    print(f"    {n} measured points; {report.describe()} (log PPL ratio); saved {path}")


def stage_truth(state: DemoState) -> None:
    """Every candidate split x SNR every 2 dB over the channels the traces visit, measured once with the
    same evaluation as Dyna's: the truth both agents are scored on. No agent sees it."""
    import json

    import mlflow

    from splitlab.mbrl.evaluators import EvaluationPool, measure_grid
    from splitlab.platform.spec import ExperimentSpec
    from splitlab.platform.tracking import provenance_tags, use_tracking
    from splitlab.platform.ray_runtime import ensure_ray
    from splitlab.platform.run_env import value_range

    spec = ExperimentSpec.from_dict(_training_spec(state, "truth", "dyna", 1))
    low, high = value_range(spec)
    values = [float(v) for v in np.arange(2 * np.floor(low / 2), 2 * np.ceil(high / 2) + 1, 2.0)]
    ks = list(spec.env.candidate_ks)
    started_ray = ensure_ray()
    start = time.perf_counter()
    try:
        with EvaluationPool(spec.quality, n_actors=2) as pool:
            grid = measure_grid(pool, ks, values)
            seconds = pool.eval_time_s
            store = pool.store_stats()  # a rerun of the demo reads the truth from the measurement store
    finally:
        if started_ray:  # leave Ray as found: each training stage starts and stops its own
            import ray

            ray.shutdown()
    folder = Path(state.cfg.out) / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "grid.json").write_text(json.dumps(grid, indent=1))
    state.results["truth"] = {"points": len(grid["rows"]), "path": folder / "grid.json"}
    use_tracking(state.cfg.tracking_uri, "splitlab-demo")
    with mlflow.start_run(run_name="demo-truth", nested=mlflow.active_run() is not None):
        mlflow.set_tags({**provenance_tags(), "splitlab.kind": "truth"})
        mlflow.log_params({"model": state.cfg.model, "ks": ks, "snr_db": values, "n_tokens": spec.quality.n_tokens})
        mlflow.log_metrics({"truth/points": len(grid["rows"]), "truth/eval_s": seconds,
                            "quality/ppl_clean": grid["ppl_clean"], **store})
        mlflow.log_artifact(str(folder / "grid.json"))
    print(f"    {len(ks)} splits x {len(values)} SNRs ({values[0]:g}..{values[-1]:g} dB) in "
          f"{time.perf_counter() - start:.0f} s; {folder / 'grid.json'}")


def _train(state: DemoState, key: str, mode: str, iterations: int) -> None:
    from splitlab.platform.training import run_training

    result = run_training(_training_spec(state, f"demo-{key}", mode, iterations), resume=False)
    state.results[key] = result
    m = result.metrics
    print(f"    score {m.get('policy/return_vs_oracle', float('nan')):.3f} (random = 0, oracle = 1); real LLM "
          f"evaluations {m.get('mbrl/real_evals', 0):.0f}; {m.get('time/wall_s', 0):.0f} s")


def stage_dyna(state: DemoState) -> None:
    _train(state, "dyna", "dyna", 3 if state.cfg.quick else 12)


def stage_paper(state: DemoState) -> None:
    _train(state, "paper", "paper", 2 if state.cfg.quick else 6)


def stages() -> list[Stage]:
    return [("split-point analysis (erasure + AWGN)", stage_analysis),
            ("reward surrogate on the measured grid", stage_surrogate),
            ("truth for scoring: every candidate split x SNR every 2 dB on the real model", stage_truth),
            ("Dyna PPO: 2 env runners x 8 simulated users, surrogate refreshed by real evaluations", stage_dyna),
            ("paper mode: PPO on the grid-fitted surrogate alone", stage_paper)]


def run_demo(cfg: DemoConfig) -> int:
    """Every stage as a child of one MLflow parent run ``demo``, which gets the summary table at the end."""
    import mlflow

    from splitlab.platform.tracking import TAG_KIND, provenance_tags, use_tracking

    use_tracking(cfg.tracking_uri, "splitlab-demo")
    parent = mlflow.start_run(run_name="demo", tags={**provenance_tags(), TAG_KIND: "demo"})
    code = 1
    try:
        mlflow.log_params({"model": cfg.model, "quick": cfg.quick, "out": cfg.out})
        code = _run_stages(cfg, parent.info.run_id)
    finally:
        mlflow.end_run(status="FINISHED" if code == 0 else "FAILED")
    return code


def _run_stages(cfg: DemoConfig, parent_id: str) -> int:
    import mlflow

    state = DemoState(cfg)
    start = time.perf_counter()
    plan = stages()
    for i, (name, fn) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {name} ...", flush=True)
        t = time.perf_counter()
        try:
            fn(state)
        except Exception as err:  # noqa: BLE001 - report the stage, keep what is done
            traceback.print_exc()
            print(f"[{i}/{len(plan)}] {name} FAILED after {time.perf_counter() - t:.0f} s: {err}")
            print("stages before this one are kept in MLflow and under", cfg.out)
            return 1
        state.timings[name] = time.perf_counter() - t
        print(f"[{i}/{len(plan)}] {name} done in {state.timings[name]:.0f} s "
              f"(total {time.perf_counter() - start:.0f} s)", flush=True)
    print_summary(state, time.perf_counter() - start)
    rows = results_table(state)
    if rows:  # the comparison, in the parent run's Evaluation/Artifacts view
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "summary/results.json", run_id=parent_id)
    mlflow.log_metrics({"time/total_s": time.perf_counter() - start,
                        **{f"time/stage_{i}_s": s for i, s in enumerate(state.timings.values(), 1)}})
    dyna = state.results.get("dyna")
    if dyna is not None and dyna.run_id:
        mlflow.set_tag("splitlab.policy_run", dyna.run_id)  # `splitlab serve --set policy=runs:/<id>/policy`
    return 0


def results_table(state: DemoState) -> list[dict]:
    """One row per method on the held-out traces: mean return, the score between random (0) and the
    oracle (1) (returns are negative here, so a plain fraction of the oracle's would mislead), real
    LLM evaluations used in training, and wall time."""
    reference = state.results.get("dyna") or state.results.get("paper")
    if reference is None:
        return []
    oracle = reference.policies.get("oracle", {}).get("return")
    random = reference.policies.get("random", {}).get("return")

    def score(value: float) -> float:
        return (value - random) / (oracle - random) if oracle is not None and random is not None and oracle != random \
            else float("nan")

    rows = []
    for key, label in (("dyna", "Dyna PPO (ours)"), ("paper", "paper mode PPO")):
        result = state.results.get(key)
        if result is not None:
            m = result.metrics
            rows.append({"method": label, "return": m["policy/return"], "score": score(m["policy/return"]),
                         "real_evals": m.get("mbrl/real_evals"), "wall_s": m.get("time/wall_s")})
    fixed = {name: p for name, p in reference.policies.items() if name.startswith("fixed")}
    best_fixed = max(fixed, key=lambda n: fixed[n]["return"]) if fixed else None
    for name in ([best_fixed] if best_fixed else []) + ["random", "oracle"]:
        if name in reference.policies:
            value = reference.policies[name]["return"]
            rows.append({"method": f"best fixed ({name})" if name == best_fixed else name, "return": value,
                         "score": score(value), "real_evals": None, "wall_s": None})
    return rows


def print_summary(state: DemoState, total_s: float) -> None:
    from splitlab.platform.tracking import tracking_uri

    analysis = state.results.get("analysis")
    print("\n== summary ==")
    if analysis:
        print(f"split-point analysis ({analysis['grid']['model']}, clean perplexity "
              f"{analysis['grid']['ppl_clean']:.2f}):")
        print(f"  {'channel':<10} {'setting':<12} {'best k':>6} {'PPL':>8} {'paper-reward k':>15}")
        for s in analysis["summary"]:
            print(f"  {s['channel']:<10} {s['param'] + '=' + format(s['value'], 'g'):<12} {s['best_k']:>6} "
                  f"{s['best_ppl']:>8.2f} {s['paper_reward_best_k']!s:>15}")
    surrogate = state.results.get("surrogate")
    if surrogate:
        print(f"surrogate (log PPL ratio): {surrogate['report'].describe()}")
    rows = results_table(state)
    if rows:
        print("held-out channel traces (score: random = 0, oracle = 1):")
        print(f"  {'method':<26} {'return':>9} {'score':>6} {'real LLM evals':>15} {'wall s':>7}")
        for r in rows:
            evals = "-" if r["real_evals"] is None else f"{r['real_evals']:.0f}"
            wall = "-" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
            print(f"  {r['method']:<26} {r['return']:>9.2f} {r['score']:>6.3f} {evals:>15} {wall:>7}")
    print(f"plots and tables: {state.cfg.out}/ (analysis/heatmap_*.png, train/*/k_vs_channel.png)")
    print(f"MLflow store: {tracking_uri(state.cfg.tracking_uri)}; open the UI with: make ui")
    dyna = state.results.get("dyna")
    if dyna is not None and dyna.files.get("policy"):
        print(f"serve the trained policy: splitlab serve --model {state.cfg.model} "
              f"--set policy_checkpoint={dyna.files['policy']}")
    print(f"total {total_s:.0f} s")
