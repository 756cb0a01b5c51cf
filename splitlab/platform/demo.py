"""`splitlab demo`: the paper's story end to end, stage by stage, with a summary at the end.

Each stage prints a line when it starts and when it ends (with elapsed time). A failing stage says
which one and why; the stages already done keep their MLflow runs and files.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass
class DemoConfig:
    """What `splitlab demo` runs."""

    model: str = "smollm2"
    """Model spec (tests use tiny-llama)."""
    quick: bool = False
    """The same story at a smaller size (about 3 minutes on 2 cores)."""
    out: str = "runs/demo"
    """Output folder for tables and plots."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default sqlite:///mlflow.db in the working directory)."""


@dataclass
class DemoState:
    """What the stages hand each other, and what the summary prints."""

    cfg: DemoConfig
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


Stage = tuple[str, Callable[[DemoState], None]]


def stage_analysis(state: DemoState) -> None:
    from splitlab.platform.analysis import AnalysisConfig, run_analysis, summarise

    cfg = state.cfg
    quick = cfg.quick
    analysis = AnalysisConfig(
        model=cfg.model, tokens=256 if quick else 512, window=128 if cfg.model == "smollm2" else 64,
        splits=None if cfg.model != "smollm2" else list(range(0, 31, 6 if quick else 3)),
        channels=["erasure", "awgn"], rho=[0.02, 0.1, 0.3], snr_db=[0.0, 10.0, 20.0, 30.0],
        seeds=1 if quick else 2, out=str(Path(cfg.out) / "analysis"), tracking_uri=cfg.tracking_uri,
        experiment="splitlab-demo")
    grid, files, run_id = run_analysis(analysis, progress=True)
    state.results["analysis"] = {"grid": grid, "files": files, "run_id": run_id, "summary": summarise(grid)}
    print(f"    clean perplexity {grid['ppl_clean']:.2f}; {len(grid['rows'])} grid points; "
          f"heatmap: {Path(analysis.out) / 'heatmap_erasure.png'}")


def stages() -> list[Stage]:
    return [("split-point analysis (erasure + AWGN)", stage_analysis)]


def run_demo(cfg: DemoConfig) -> int:
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
    return 0


def print_summary(state: DemoState, total_s: float) -> None:
    from splitlab.platform.tracking import tracking_uri

    analysis = state.results.get("analysis")
    print("\n== summary ==")
    if analysis:
        print(f"{'channel':<10} {'setting':<12} {'best k':>6} {'PPL':>8} {'paper-reward k':>15}")
        for s in analysis["summary"]:
            print(f"{s['channel']:<10} {s['param'] + '=' + format(s['value'], 'g'):<12} {s['best_k']:>6} "
                  f"{s['best_ppl']:>8.2f} {s['paper_reward_best_k']!s:>15}")
    print(f"plots and tables: {state.cfg.out}/")
    print(f"MLflow store: {tracking_uri(state.cfg.tracking_uri)}; open the UI with: make ui")
    print(f"total {total_s:.0f} s")
