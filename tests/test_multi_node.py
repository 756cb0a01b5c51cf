"""A sweep on a real 3-node Ray cluster on this machine that loses a node half-way (slow).

Three nodes (``ray start --head`` and two ``ray start --address`` workers, 1 CPU each, so trials must
spread), an MLflow tracking server (``mlflow/start.sh``, what ``make ui`` runs), storage on a folder
every node sees. ``splitlab submit`` runs a 4-trial sweep of the real training code; once a trial on
worker B has checkpointed, worker B is killed (its raylet's process group, SIGKILL). Tune restarts that
trial elsewhere (``sweep.max_failures``), it resumes from its checkpoint in the shared folder, and the
sweep ends with every trial finished and logged.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from processes import new_cluster, start_mlflow_server, stop_process_group

pytestmark = pytest.mark.slow

SPEC = {
    "name": "tiny", "mode": "paper",
    "quality": {"kind": "synthetic", "channel": "awgn"},
    "paper": {"grid": {"kind": "synthetic", "channel": "awgn"}},
    "env": {"preset": "wireless", "candidate_ks": [0, 3, 6, 9], "episode_len": 10},
    "algorithm": {"iterations": 8, "num_env_runners": 0, "train_batch_size": 400, "minibatch_size": 100,
                  "num_epochs": 2, "hidden": [16, 16]},
    "checkpoint": {"every": 1},
    "surrogate": {"epochs": 50, "members": 2},
    "evaluation": {"episodes": 2, "baselines": False},
    "sweep": {"name": "nodes", "cpus_per_trial": 1, "max_failures": 2,
              "params": {"env.w_l": {"grid_search": [0.1, 0.3, 0.5, 0.7]}}},
}


def _trial_nodes(cluster) -> dict[str, set[str]]:
    """Node id -> states of the Tune trial actors placed there (dead ones are kept by the state API)."""
    nodes: dict[str, set[str]] = {}
    for actor in cluster.state("actors"):
        if actor.get("class_name") == "ImplicitFunc":
            nodes.setdefault(actor["node_id"], set()).add(actor["state"])
    return nodes


def _checkpointed(storage: Path) -> int:
    """Trials whose run folder has a checkpoint of iteration >= 2."""
    return sum(json.loads(p.read_text()).get("iteration", 0) >= 2 for p in storage.glob("nodes/*/run/state.json"))


def test_sweep_survives_losing_a_worker_node(tmp_path):
    from mlflow.tracking import MlflowClient

    cluster = new_cluster(secrets.token_hex(16))
    server = None
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_worker(num_cpus=1, name="worker_a")
        known = {n["node_id"] for n in cluster.alive_nodes()}
        worker_b = cluster.add_worker(num_cpus=1, name="worker_b")
        (node_b,) = {n["node_id"] for n in cluster.alive_nodes()} - known
        (tmp_path / "tracking").mkdir()
        server, tracking = start_mlflow_server(tmp_path / "tracking", f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")

        spec = tmp_path / "nodes.yaml"
        spec.write_text(yaml.safe_dump(SPEC))
        storage = tmp_path / "shared"
        env = {**os.environ, "RAY_AUTH_TOKEN": cluster.token}
        for key in ("RAY_AUTH_MODE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
            env.pop(key, None)
        log = (tmp_path / "submit.log").open("w")
        submit = subprocess.Popen(
            [sys.executable, "-m", "splitlab.cli", "submit", str(spec), "--address", cluster.dashboard,
             "--tracking-uri", tracking, "--storage-path", str(storage), "--timeout", "900"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + 600
        while not ("ALIVE" in seen.get(node_b, set()) and _checkpointed(storage) >= 2):
            assert submit.poll() is None, "the sweep ended before the kill: " + (tmp_path / "submit.log").read_text()[-4000:]
            assert time.monotonic() < deadline, f"no trial checkpointed on worker B; trial actors: {seen}"
            time.sleep(2.0)
            seen = _trial_nodes(cluster)
        os.killpg(worker_b.pid, signal.SIGKILL)  # the node is lost: raylet, its agents and its workers

        assert submit.wait(timeout=900) == 0, (tmp_path / "submit.log").read_text()[-6000:]
        log.close()
        out = (tmp_path / "submit.log").read_text()
        assert "SUCCEEDED" in out
        assert "resuming after iteration" in out  # the lost trial restarted from its checkpoint, not from scratch
        placed = _trial_nodes(cluster)
        assert len(placed) >= 2, placed  # trials ran on several nodes
        client = MlflowClient(tracking_uri=tracking)
        exp = client.get_experiment_by_name("splitlab-sweeps")
        runs = client.search_runs([exp.experiment_id], filter_string="tags.`splitlab.sweep` = 'nodes'")
        trials = [r for r in runs if "env/w_l" in r.data.params]
        assert sorted(r.data.params["env/w_l"] for r in trials) == ["0.1", "0.3", "0.5", "0.7"]
        assert all(r.info.status == "FINISHED" and "policy/return" in r.data.metrics for r in trials)
    finally:
        if server is not None:
            stop_process_group(server, timeout=20)
        cluster.stop()
