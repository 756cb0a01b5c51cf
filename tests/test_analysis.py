"""`splitlab analyze` end to end on a tiny model: table, plots, MLflow run."""
from __future__ import annotations

import json

import mlflow
import pytest

from splitlab.cli import main
from splitlab.platform.analysis import AnalysisConfig, summarise


def test_analyze_writes_grid_plots_and_mlflow_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["analyze", "--model", "tiny-llama", "--tokens", "128", "--window", "64", "--seeds", "2",
                 "--splits", "0,2,4", "--channels", "erasure,awgn", "--rho", "0.1,0.5", "--snr", "0,20",
                 "--out", "out"])
    assert code == 0
    grid = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert len(grid["rows"]) == 3 * (2 + 2)
    assert all(r["seeds"] == 2 and r["ppl_ci95"] >= 0 and r["ppl_mean"] > 0 for r in grid["rows"])
    for name in ("grid.csv", "summary.csv", "link_cost.csv", "heatmap_erasure.png", "lines_awgn.png", "best_k.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    out = capsys.readouterr().out
    assert "best k" in out and "MLflow run" in out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["splitlab-analysis"])
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["params.model"] == "tiny-llama"
    assert run["metrics.quality/ppl_clean"] == pytest.approx(grid["ppl_clean"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"grid.json", "heatmap_erasure.png"} <= artifacts


def test_analyze_with_tasks_adds_accuracy_rows_plots_and_metrics(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["analyze", "--model", "tiny-llama", "--tokens", "128", "--window", "64", "--seeds", "2",
                 "--splits", "0,3", "--channels", "awgn", "--snr=-10,30", "--tasks", "lambada,hellaswag",
                 "--task-items", "4", "--out", "out"])
    assert code == 0
    grid = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert set(grid["tasks"]) == {"lambada", "hellaswag"} and grid["tasks"]["hellaswag"]["items"] == 4
    for row in grid["rows"]:
        for task in ("lambada", "hellaswag"):
            # 4 items x 2 seeds: every mean is a multiple of 1/8
            assert (8 * row[f"acc_{task}_mean"]).is_integer() and row[f"acc_{task}_ci95"] >= 0
    for name in ("acc_lambada_awgn.png", "acc_hellaswag_awgn.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()[0].split(",")
    assert {"hellaswag_best_k", "hellaswag_best_acc", "lambada_worst_acc"} <= set(summary)
    out = capsys.readouterr().out
    assert "hellaswag accuracy (4 items, clean" in out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["splitlab-analysis"]).iloc[0]
    assert run["metrics.quality/acc_clean/hellaswag"] == pytest.approx(grid["tasks"]["hellaswag"]["acc_clean"])
    assert run["params.tasks"] == "lambada,hellaswag"


def test_bad_analysis_settings_are_named(capsys):
    with pytest.raises(ValueError, match="channels.0 must be one of 'erasure', .*, got 'fm-radio'"):
        AnalysisConfig(channels=["fm-radio"])
    with pytest.raises(ValueError, match=r"channels must have at least 1 item\(s\), got \[\]"):
        AnalysisConfig(channels=[])
    with pytest.raises(ValueError, match="rho"):
        AnalysisConfig(rho=[1.5])
    with pytest.raises(ValueError, match=r"tasks.0 must be one of 'lambada' or 'hellaswag', got 'mmlu'"):
        AnalysisConfig(tasks=["mmlu"])
    with pytest.raises(ValueError, match="task_items must be greater than or equal to 1, got 0"):
        AnalysisConfig(tasks=["lambada"], task_items=0)
    with pytest.raises(SystemExit):
        main(["analyze", "--model", "tiny-llama", "--set", "channel_settings.fading=sometimes", "--no-mlflow"])
    assert "fading" in capsys.readouterr().err


def test_summary_picks_the_paper_rewards_best_k_by_hand():
    grid = {"model": "m", "num_layers": 32, "hidden_size": 8, "ppl_clean": 10.0, "rows": [
        {"k": k, "channel": "erasure", "param": "rho", "value": 0.1, "ppl_mean": p, "ppl_ci95": 0.0}
        for k, p in ((1, 30.0), (3, 11.0), (10, 10.5))]}
    (s,) = summarise(grid)
    assert (s["best_k"], s["worst_k"]) == (10, 1)
    # k=3: 10*(10-11)/10 + (10-3)/10 = -0.3; k=10: -0.5 + 0 = -0.5; k=1: -20 + 0.9
    assert s["paper_reward_best_k"] == 3
