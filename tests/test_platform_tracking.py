"""The tracking server (`mlflow/start.sh`, what `make ui` runs): REST API and UI over a sweep's runs.

The server runs on 127.0.0.1 on a free port over a SQLite store holding a sweep's runs (written here
the way SweepMLflowCallback writes them), and is stopped by ending its process group.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from processes import start_mlflow_server, stop_process_group
from splitlab.platform.sweep import TAG_SWEEP, TAG_SWEEP_ID

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"ui-sweep:mean_db=0": 0.0, "ui-sweep:mean_db=20": 20.0}


def _sweep_store(folder: Path) -> tuple[str, str]:
    """A SQLite store with two runs of a sweep (params, namespaced metrics, a plot); returns (uri, experiment id)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("splitlab-sweeps", artifact_location=str(folder / "mlruns" / "sweeps"))
    (folder / "plots").mkdir()
    (folder / "plots" / "k_vs_channel.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    for name, snr in RUNS.items():
        run = client.create_run(exp, run_name=name, tags={TAG_SWEEP: "ui-sweep", TAG_SWEEP_ID: "abc123"})
        client.log_param(run.info.run_id, "env/dynamics/mean_db", snr)
        for step in (1, 2):
            client.log_metric(run.info.run_id, "policy/return", -10.0 + snr / 4 + step, step=step)
        client.log_artifacts(run.info.run_id, str(folder / "plots"), artifact_path="plots")
        client.set_terminated(run.info.run_id)
    return uri, exp


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracking")
    uri, exp = _sweep_store(folder)
    server, url = start_mlflow_server(folder, uri)
    try:
        yield url, exp, folder
    finally:
        stop_process_group(server, timeout=20)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_tracking_server_answers_rest_and_lists_the_sweep_runs(tracking_server):
    url, exp, _ = tracking_server
    found = _get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=splitlab-sweeps")
    assert found["experiment"]["experiment_id"] == exp
    runs = _post(f"{url}/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [exp], "filter": f"tags.`{TAG_SWEEP}` = 'ui-sweep'"})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == sorted(RUNS)
    for run in runs:
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["env/dynamics/mean_db"] in {"0.0", "20.0"}
        assert {m["key"] for m in run["data"]["metrics"]} == {"policy/return"}
        listed = _get(f"{url}/api/2.0/mlflow/artifacts/list?run_id={run['info']['run_id']}&path=plots")
        assert [f["path"] for f in listed["files"]] == ["plots/k_vs_channel.png"]
    history = _get(f"{url}/api/2.0/mlflow/metrics/get-history?run_id={runs[0]['info']['run_id']}"
                   "&metric_key=" + urllib.parse.quote("policy/return"))
    assert [m["step"] for m in history["metrics"]] == [1, 2]
    none = _post(f"{url}/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [exp], "filter": f"tags.`{TAG_SWEEP}` = 'no-such-sweep'"})
    assert not none.get("runs")


@pytest.mark.slow
def test_mlflow_ui_page_lists_the_sweep_runs_in_headless_chromium(tracking_server):
    """Needs Debian's chromium (`apt-get install -y chromium`); `make test-all` runs it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (`make test-all` installs it)")
    url, exp, folder = tracking_server
    page = f"{url}/#/experiments/{exp}/runs"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             f"--user-data-dir={folder / 'chromium'}", "--virtual-time-budget=30000"]
    dom = ""
    for _ in range(3):  # the page fetches the runs after loading; a busy machine may need another look
        done = subprocess.run([browser, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180)
        dom = done.stdout
        if all(name in dom for name in RUNS):
            break
    assert re.search(r"<title>[^<]*Experiment", dom), dom[:2000]
    assert all(name in dom for name in RUNS), "the runs page does not list the sweep's runs"
    shot = folder / "runs.png"
    subprocess.run([browser, *flags, "--window-size=1400,800", f"--screenshot={shot}", page], capture_output=True,
                   timeout=180)
    assert shot.exists() and shot.stat().st_size > 10_000
