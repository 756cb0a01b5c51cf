"""Where a served policy comes from: a local run folder, or an MLflow/object-store URI downloaded first.

``splitlab serve --set policy_checkpoint=URI`` accepts, besides a local ``splitlab train`` run folder:

- ``runs:/<run_id>/policy`` (or ``runs:/<run_id>``): the run's logged ``policy/`` and ``policy.json``;
- ``models:/<name>/<version>`` (or ``models:/<name>@<alias>``): a registered policy model
  (:mod:`splitlab.platform.policy_model`), whose ``artifacts/run`` folder is the run folder;
- ``s3://...``, ``gs://...``, ``file://...`` and other artifact URIs MLflow can read.

:func:`resolve_policy_source` downloads with ``mlflow.artifacts.download_artifacts`` (tracking URI from
``$MLFLOW_TRACKING_URI`` or the default store) and returns the local folder that holds ``policy.json``
with the policy (the pickle-free export and/or RLlib's ``policy/``); a local path passes through unchanged.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from splitlab.policy_net import NET_FILE, WEIGHT_FILES

REMOTE_SCHEMES = ("runs:/", "models:/", "s3://", "gs://", "wasbs://", "abfss://", "hdfs://", "file://", "mlflow-artifacts:/",
                  "http://", "https://")
"""URI prefixes that are downloaded rather than read as a local path."""
POLICY_FILE = "policy.json"
"""Written by ``splitlab train`` next to ``policy/``: candidate splits, model depth, env, observer."""
EXPORT_PARTS = (POLICY_FILE, NET_FILE, *WEIGHT_FILES)
"""The info and the pickle-free export (net + weights): what the MLflow model holds."""
POLICY_PARTS = (*EXPORT_PARTS, "policy")
"""What a run logs for serving: the export and RLlib's pickled ``policy/``."""


def _servable(folder: Path) -> bool:
    return (folder / POLICY_FILE).exists() and any((folder / p).exists() for p in POLICY_PARTS[1:])


def is_remote(source: str) -> bool:
    return source.startswith(REMOTE_SCHEMES)


def resolve_policy_source(source: str, dst: str | Path | None = None, tracking_uri: str | None = None) -> str:
    """A local folder holding ``policy.json`` and the policy for ``source`` (see the module docstring).

    Without ``dst`` a source is downloaded once per process (serve's loaders may ask several times)."""
    if not is_remote(source):
        return source
    if dst is None:
        return _download_once(source, tracking_uri)
    return _download(source, Path(dst), tracking_uri)


@functools.lru_cache(maxsize=32)
def _download_once(source: str, tracking_uri: str | None) -> str:
    return _download(source, Path(tempfile.mkdtemp(prefix="splitlab-policy-")), tracking_uri)


def _download(source: str, dst: Path, tracking_uri: str | None) -> str:
    from mlflow.artifacts import download_artifacts

    from splitlab.platform.tracking import tracking_uri as resolve_uri

    if source.startswith("runs:/"):
        run_id = source[len("runs:/"):].split("/", 1)[0]
        if not run_id:
            raise ValueError(f"policy source {source!r} names no run: expected runs:/<run_id>/policy")
        from mlflow.tracking import MlflowClient

        # the policy's files sit side by side at the run's root: fetch those the run has
        logged = {a.path for a in MlflowClient(tracking_uri=resolve_uri(tracking_uri)).list_artifacts(run_id)}
        for part in POLICY_PARTS:
            if part in logged:
                download_artifacts(artifact_uri=f"runs:/{run_id}/{part}", dst_path=str(dst),
                                   tracking_uri=resolve_uri(tracking_uri))
        folder = dst
    else:
        folder = Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=resolve_uri(tracking_uri)))
    # a pyfunc model keeps its artifacts under artifacts/<folder name> (run, for splitlab's policy model)
    for candidate in (folder, *sorted((folder / "artifacts").glob("*"))):
        if _servable(candidate):
            return str(candidate)
    raise FileNotFoundError(f"policy source {source!r} downloaded to {folder} but holds no {POLICY_FILE} with the "
                            "policy (policy_net.json + weights, or policy/): expected runs:/<id>/policy, a registered split-policy model "
                            "(models:/<name>/<version>) or a copy of a `splitlab train` run folder")
