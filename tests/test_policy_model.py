"""The trained policy as an MLflow pyfunc model (observation -> k), registered, and resolved for serving
from runs:/ and models:/ URIs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from splitlab.serve.policy_source import resolve_policy_source
from test_run_core import raw_spec


@pytest.fixture(scope="module")
def ray_local():
    from splitlab.platform.ray_runtime import ensure_ray

    ensure_ray(2)
    yield
    import ray

    ray.shutdown()


def test_policy_is_an_mlflow_model_and_serve_can_fetch_it(ray_local, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from splitlab.envs.wireless import FEATURE_NAMES
    from splitlab.platform.training import run_training

    monkeypatch.chdir(tmp_path)  # the SQLite store keeps artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = raw_spec(tmp_path / "runs", algorithm={"iterations": 1},
                   tracking={"enabled": True, "uri": uri, "register_policy": "split-policy"})
    result = run_training(raw, log=None)
    assert result.files["policy_model"] == "models:/split-policy/1"
    run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
    assert {"git.commit", "git.dirty", "versions.torch", "versions.ray"} <= set(run.data.tags)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/split-policy/1")
    import pandas as pd

    from splitlab.envs.wireless import Observer

    observer = Observer.from_dict(json.loads((result.run_dir / "policy.json").read_text())["observer"])
    obs = np.stack([observer.features(snr, 0.0, 0, 1.0) for snr in (-5.0, 25.0)])  # [2, F]

    ks = model.predict(pd.DataFrame(obs, columns=list(FEATURE_NAMES)))
    assert set(np.asarray(ks).tolist()) <= {0, 6, 12, 18, 24, 30}
    from splitlab.policy_net import load_net, logits

    candidate_ks = np.asarray(json.loads((result.run_dir / "policy.json").read_text())["candidate_ks"])
    assert np.array_equal(ks, candidate_ks[logits(*load_net(result.run_dir), obs).argmax(-1)])  # the exported net
    local = Path(mlflow.artifacts.download_artifacts("models:/split-policy/1", dst_path=str(tmp_path / "model")))
    assert (local / "code" / "policy_net.py").is_file() and not list(local.rglob("*.pkl"))  # code, no pickle
    assert model.metadata.get_input_schema().input_names() == list(FEATURE_NAMES)
    # serve's source resolver: a run's artifacts and the registered model both become a loadable folder
    for source, part in ((f"runs:/{result.run_id}/policy", "policy"), ("models:/split-policy/1", "policy_net.json")):
        folder = Path(resolve_policy_source(source, tmp_path / source.split(":")[0], uri))
        assert (folder / "policy.json").exists() and (folder / part).exists()
    assert resolve_policy_source("runs/train/x") == "runs/train/x"
    with pytest.raises(ValueError, match="names no run"):
        resolve_policy_source("runs:/", tmp_path / "x", uri)
