"""`splitlab submit` against a real Ray head started here with `ray start --head` on 127.0.0.1.

The head runs with token authentication on (RAY_AUTH_MODE=token and a random token); the submitting
process gets the token only as $RAY_AUTH_TOKEN, so the test also shows that `splitlab submit` sends it.
The job is a one-trial sweep of the real training code on a tiny model; its MLflow run must land in
the SQLite store given with --tracking-uri. The head is stopped by ending its process group and
every process of its Ray session (never `ray stop`, which would hit other Ray instances here).
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from processes import new_cluster
from splitlab.platform.submit import EXCLUDES, build_entrypoint, project_root, stage_project

ROOT = Path(__file__).resolve().parents[1]


def test_entrypoint_and_project_detection(tmp_path):
    assert build_entrypoint("tune_configs/network_sweep.yaml", True, resume=True, name="n") == (
        "python -m splitlab.cli sweep tune_configs/network_sweep.yaml --address auto --resume --name n")
    assert build_entrypoint("tune_configs/dyna.yaml", False) == "python -m splitlab.cli train tune_configs/dyna.yaml"
    assert project_root(ROOT / "tune_configs") == ROOT and project_root(tmp_path) is None
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: x\n")
    stage = stage_project(ROOT, spec)
    try:
        assert (stage / "splitlab" / "cli.py").is_file() and (stage / "submitted" / "mine.yaml").is_file()
        assert not list(stage.rglob("__pycache__")) and not (stage / ".venv").exists()
    finally:
        import shutil

        shutil.rmtree(stage)
    assert ".venv" in EXCLUDES and "*.db" in EXCLUDES
    assert {".env", ".env.*", "*.env"} <= set(EXCLUDES)  # secrets never travel with a job


def test_staged_upload_leaves_env_files_behind(tmp_path):
    root = tmp_path / "proj"
    (root / "splitlab").mkdir(parents=True)
    (root / "splitlab" / "cli.py").write_text("")
    (root / "splitlab" / ".env").write_text("SPLITLAB_API_KEY=secret")
    (root / "tune_configs").mkdir()
    (root / "tune_configs" / "prod.env").write_text("TOKEN=secret")
    spec = tmp_path / "mine.yaml"
    spec.write_text("name: x\n")
    stage = stage_project(root, spec)
    try:
        assert (stage / "splitlab" / "cli.py").is_file()
        assert not list(stage.rglob("*.env")) and not list(stage.rglob(".env"))
    finally:
        import shutil

        shutil.rmtree(stage)


@pytest.fixture
def ray_head():
    """A local head with the dashboard (job API) on a free port and token auth on; yields (address, token)."""
    cluster = new_cluster(secrets.token_hex(16))
    try:
        cluster.start_head(num_cpus=2)
        yield cluster.dashboard, cluster.token
    finally:
        cluster.stop()


@pytest.mark.slow
def test_submit_runs_a_sweep_job_on_a_local_head(ray_head, tmp_path):
    from mlflow.tracking import MlflowClient

    address, token = ray_head
    spec = tmp_path / "submit_tiny.yaml"  # outside the project: travels in a staged copy of the code
    spec.write_text(yaml.safe_dump({
        "name": "tiny", "mode": "paper",
        "quality": {"kind": "synthetic", "channel": "awgn"},
        "paper": {"grid": {"kind": "synthetic", "channel": "awgn"}},
        "env": {"preset": "wireless", "candidate_ks": [0, 3, 6, 9], "episode_len": 10},
        "algorithm": {"iterations": 1, "num_env_runners": 0, "train_batch_size": 200, "minibatch_size": 100,
                      "num_epochs": 1, "hidden": [16, 16]},
        "surrogate": {"epochs": 50, "members": 2},
        "evaluation": {"episodes": 2, "baselines": False},
        "sweep": {"name": "submitted", "cpus_per_trial": 0.5, "params": {"env.w_l": {"grid_search": [0.5]}}},
    }))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_AUTH_TOKEN": token}
    for key in ("RAY_AUTH_MODE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-m", "splitlab.cli", "submit", str(spec), "--address", address, "--tracking-uri", uri,
         "--storage-path", str(tmp_path / "tune"), "--timeout", "400"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "SUCCEEDED" in done.stdout
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("splitlab-sweeps")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`splitlab.sweep` = 'submitted'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["env/w_l"] == "0.5" and "policy/return" in runs[0].data.metrics
    assert {"spec.yaml", "policy"} <= {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    # created on the submitting side (artifacts beside its store), not in the job's temporary copy
    assert Path(exp.artifact_location.removeprefix("file://")) == tmp_path / "mlruns" / exp.experiment_id


def test_submit_rejects_a_bad_spec_before_contacting_the_cluster(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", "quality": {"kind": "synthetic"},
                                    "sweep": {"params": {"env.w_l": {"uniform": [1.0, 0.0]}}}}))
    done = subprocess.run([sys.executable, "-m", "splitlab.cli", "submit", str(spec), "--address",
                           "http://127.0.0.1:9"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "sweep.params.env.w_l.uniform needs low < high" in done.stderr
