"""`splitlab demo --quick` on a tiny model: every stage runs and lands its runs in MLflow."""
from __future__ import annotations

import json

import mlflow
import pytest

from splitlab.cli import main


def test_quick_demo_runs_every_stage_and_logs_to_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--model", "tiny-llama"]) == 0
    out = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert f"{stage}" in out and "FAILED" not in out
    assert "Dyna PPO (ours)" in out and "oracle" in out and "make ui" in out
    assert (tmp_path / "runs/demo/analysis/heatmap_erasure.png").exists()
    assert (tmp_path / "runs/demo/surrogate_on_grid.npz").exists()
    truth = json.loads((tmp_path / "runs/demo/truth/grid.json").read_text())
    assert {r["k"] for r in truth["rows"]} == {1, 2, 3, 4} and len({r["value"] for r in truth["rows"]}) >= 10
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["splitlab-demo"])
    names = set(runs["tags.mlflow.runName"])
    assert {"analyze-tiny-llama", "demo-truth", "demo-dyna", "demo-paper"} <= names
    dyna = runs[runs["tags.mlflow.runName"] == "demo-dyna"].iloc[0]
    assert dyna["metrics.mbrl/real_evals"] <= 24  # the quick demo's Dyna budget
    # one parent run with every stage as its child, the summary table logged to it
    parent = runs[runs["tags.mlflow.runName"] == "demo"].iloc[0]
    children = runs[runs["tags.mlflow.runName"] != "demo"]
    assert set(children["tags.mlflow.parentRunId"]) == {parent["run_id"]} and parent["status"] == "FINISHED"
    assert parent["tags.splitlab.policy_run"] == dyna["run_id"] and parent["tags.git.dirty"] in ("true", "false")
    table = mlflow.load_table("summary/results.json", run_ids=[parent["run_id"]])
    assert "Dyna PPO (ours)" in set(table["method"])
    import ray

    assert not ray.is_initialized()  # the demo leaves no Ray behind in the caller's process


def test_a_failing_stage_is_named_and_earlier_stages_stay(tmp_path, monkeypatch, capsys):
    from splitlab.platform import demo

    monkeypatch.chdir(tmp_path)

    def broken(state):
        raise RuntimeError("no evaluators could start")

    monkeypatch.setattr(demo, "stages", lambda: [("analysis", demo.stage_analysis), ("dyna", broken)])
    assert main(["demo", "--quick", "--model", "tiny-llama"]) == 1
    out = capsys.readouterr().out
    assert "[2/2] dyna FAILED" in out and "no evaluators could start" in out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["splitlab-demo"])
    assert sorted(runs["tags.mlflow.runName"]) == ["analyze-tiny-llama", "demo"]  # the parent and its one stage
    assert runs.set_index("tags.mlflow.runName").loc["demo", "status"] == "FAILED"


@pytest.mark.slow
def test_full_demo_on_smollm2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "[5/5]" in out and "FAILED" not in out and "Dyna PPO (ours)" in out
