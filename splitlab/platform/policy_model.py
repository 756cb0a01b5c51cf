"""The trained split policy as an MLflow model: ``mlflow.pyfunc`` with input the env's observation (one row
per decision, the wireless preset's features :data:`~splitlab.envs.wireless.FEATURE_NAMES`) and output the
split point k.

The model is logged as code (:mod:`splitlab.platform.policy_pyfunc` plus :mod:`splitlab.policy_net`) over
the run's pickle-free export (``policy_net.json`` + ``policy.safetensors``): loading it unpickles nothing and
needs neither torch nor Ray. A run without that export (RLlib's DQN module today) gets no MLflow model.

``log_policy_model`` stores the run's ``policy.json`` and ``policy/`` (what ``splitlab serve`` reads) as the
model's artifacts, with a signature and an input example, under the run's ``policy_model`` artifact path,
and optionally registers it (``models:/<name>/<version>``). The raw folders stay logged as well, so
``runs:/<id>/policy`` and ``models:/...`` both resolve to a folder that serve can load
(:mod:`splitlab.serve.policy_source`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from splitlab import policy_net
from splitlab.policy_net import NET_FILE, weights_file

ARTIFACT_PATH = "policy_model"
"""Where in the run the pyfunc model goes."""
MODEL_CODE = Path(__file__).with_name("policy_pyfunc.py")
"""The model's code (MLflow runs it when loading; never imported here: it calls ``set_model``)."""


def _requirements() -> list[str]:
    """The pinned packages the model needs (given, not inferred: inference reloads the model in a subprocess)."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in ("mlflow", "numpy", "pandas", "safetensors")]


def log_policy_model(run_dir: str | Path, register_as: str | None = None) -> str:
    """Log the policy of a finished ``splitlab train`` run folder (``policy.json`` + ``policy/``) to the active
    MLflow run as a pyfunc model; returns its model URI (``models:/<name>/<version>`` when registered)."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    from splitlab.envs.wireless import FEATURE_NAMES, Observer

    run_dir = Path(run_dir)
    if weights_file(run_dir) is None:
        raise ValueError(f"{run_dir} has no pickle-free policy export ({NET_FILE} + weights); only exported "
                         "policies are logged as MLflow models")
    info = json.loads((run_dir / "policy.json").read_text())
    if info.get("observer") is None:
        raise ValueError(f"{run_dir} holds a policy of env {info.get('env')!r}, preset {info.get('preset')!r}; "
                         "only wireless single-user policies (observation -> k) are logged as MLflow models")
    observer = Observer.from_dict(info["observer"])
    example = pd.DataFrame([observer.features(snr, 0.0, 0, 1.0) for snr in (0.0, 10.0, 20.0)],
                           columns=list(FEATURE_NAMES))
    staging = run_dir / "_policy_model" / "run"  # the model's artifacts/run
    staging.mkdir(parents=True, exist_ok=True)
    import shutil

    from splitlab.serve.policy_source import EXPORT_PARTS

    for part in EXPORT_PARTS:  # what serve loads: the info and the pickle-free export (not RLlib's pickled policy/)
        if (run_dir / part).is_file():
            shutil.copy(run_dir / part, staging / part)
    try:
        ks = np.asarray(info["candidate_ks"])[:len(example)]
        model_info = mlflow.pyfunc.log_model(
            name=ARTIFACT_PATH, python_model=str(MODEL_CODE), artifacts={"run": str(staging)},
            code_paths=[str(Path(policy_net.__file__))],
            signature=infer_signature(example, ks), input_example=example,
            metadata={"observation": {"features": list(FEATURE_NAMES), "observer": info["observer"],
                                      "note": "one row per decision: the wireless env's observation; output: k"},
                      "candidate_ks": info["candidate_ks"], "num_layers": info["num_layers"]},
            registered_model_name=register_as, pip_requirements=_requirements())
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    if register_as and model_info.registered_model_version is not None:
        return f"models:/{register_as}/{model_info.registered_model_version}"
    return model_info.model_uri
