"""Object storage, for real: the measurement store and a sweep's trial checkpoints on s3 (a local moto
server on 127.0.0.1 standing in for AWS; pyarrow and Ray reach it through $AWS_ENDPOINT_URL)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from processes import free_port
from splitlab.llm.measurement_store import MeasurementStore, measurement_key
from test_measurement_store import WRITER
from test_sweep_run import crashing_trial

BUCKET = "splitlab"


@pytest.fixture(scope="module")
def s3():
    """A moto s3 server with one bucket; the AWS variables are set for this process and the Ray it starts."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
    try:
        yield f"s3://{BUCKET}"
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        server.stop()


def test_measurement_store_on_s3_takes_concurrent_writers_and_remeasures_corrupt_entries(s3):
    import splitlab.llm.measurement_store as ms

    root = f"{s3}/measurements"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, root, ms.__file__]) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    store = MeasurementStore(root)
    assert [store.get(measurement_key(metric="ppl", k=i % 5, value=float(i))) for i in range(40)] == \
        [100.0 + i for i in range(40)]
    assert store.stats()["store/hit_rate"] == 1.0 and store.corrupt == 0
    key = measurement_key(metric="ppl", k=1, value=1.0)
    with store.fs.open_input_stream(store.path(key)) as f:
        entry = json.loads(f.read())
    with store.fs.open_output_stream(store.path(key)) as f:
        f.write(json.dumps({**entry, "value": 0.0}).encode())  # checksum no longer matches
    assert store.get(key) is None and store.corrupt == 1
    store.put(key, 101.0)
    assert MeasurementStore(root).get(key) == 101.0


def test_a_failed_trial_with_s3_storage_resumes_from_its_last_checkpoint(s3, tmp_path):
    import ray

    from splitlab.platform.ray_runtime import LOCAL, ensure_ray
    from splitlab.platform.sweep import load_plan, run_sweep

    ensure_ray(2, address=LOCAL, runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})  # inherits AWS_*
    try:
        raw = {"env": {"w_l": 0.1}, "test": {"calls_dir": str(tmp_path)},
               "sweep": {"name": "crash", "metric": "policy/return", "cpus_per_trial": 0.5, "max_failures": 1,
                         "storage_path": f"{s3}/tune", "params": {"env.w_l": 0.1}}}
        outcome = run_sweep(load_plan(raw, validate=None), trial_fn=crashing_trial,
                            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", verbose=0)
    finally:
        ray.shutdown()
    assert not outcome.errored, outcome.trials
    assert (tmp_path / "attempts").read_text().split("\n")[:2] == ["start 1", "start 3"]  # resumed after iter 2
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(f"{s3}/tune/crash")
    names = {info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True))}
    assert "splitlab_sweep.json" in names and "state.json" in names  # sweep state and run checkpoints on s3
