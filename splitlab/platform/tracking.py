"""MLflow tracking shared by every splitlab run: the store, the tags, and :class:`RunTracker`, the MLflow
run of one ``splitlab train`` run.

The default store is SQLite in the working directory (MLflow 3.17 refuses the old file store);
``$MLFLOW_TRACKING_URI`` or an explicit ``--tracking-uri`` points runs at a server instead.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from splitlab.dotted import flatten

DEFAULT_DB = "mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """The URI runs log to: the argument, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def use_tracking(uri: str | None = None, experiment: str = "splitlab") -> str:
    """Point mlflow at the store and select (creating if needed) the experiment; returns the URI."""
    import mlflow

    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_experiment(experiment)
    return resolved


TAG_KIND = "splitlab.kind"
"""What a run is: train, sweep-trial, truth, analysis, ..."""
TAG_SWEEP = "splitlab.sweep"
"""The sweep's name on every trial run (``splitlab report NAME`` finds them by it)."""
TAG_SWEEP_ID = "splitlab.sweep_id"
"""One id per sweep, shared by its trials (a sweep name reused later gets a new id)."""
TAG_TRIAL_ID = "splitlab.trial_id"
"""Tune's trial id: a resumed sweep finds the run a trial already has by it."""
TAG_SWEEP_PARENT = "splitlab.sweep_parent"
"""The sweep id on a sweep's parent run (not :data:`TAG_SWEEP_ID`, which marks its trials)."""
TAG_PARENT = "mlflow.parentRunId"
"""MLflow's own tag that nests a run under another in the UI (a sweep's trials, a demo's stages)."""
TRACKED_PACKAGES = ("torch", "ray", "transformers", "mlflow")
"""Packages whose versions every run records (``versions.<name>`` tags)."""


def provenance_tags() -> dict[str, str]:
    """Tags that make a run reproducible: ``git.commit``, ``git.dirty`` (``true``/``false``; ``unknown``
    outside a git checkout) and ``versions.<package>`` for :data:`TRACKED_PACKAGES`.

    Computed once per process (a sweep tags every trial with the driver's checkout)."""
    global _PROVENANCE
    if _PROVENANCE is None:
        import subprocess
        from importlib import metadata

        repo = Path(__file__).resolve().parents[2]
        tags = {"git.commit": "unknown", "git.dirty": "unknown"}
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=10)
            if commit.returncode == 0:
                status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10)
                tags = {"git.commit": commit.stdout.strip(),
                        "git.dirty": "true" if status.stdout.strip() else "false"}
        except (OSError, subprocess.SubprocessError):
            pass  # no git on this node: the tags say unknown
        for name in TRACKED_PACKAGES:
            try:
                tags[f"versions.{name}"] = metadata.version(name)
            except metadata.PackageNotFoundError:
                tags[f"versions.{name}"] = "missing"
        _PROVENANCE = tags
    return dict(_PROVENANCE)


_PROVENANCE: dict[str, str] | None = None


def ensure_experiment(uri: str, name: str) -> str:
    """The MLflow experiment id for ``name`` in the store at ``uri``, created if needed.

    A new experiment in a SQLite store keeps its artifacts under ``./mlruns`` of the process that creates
    it; ``splitlab submit`` therefore creates it on the submitting side, not in the job's temporary folder.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name)


def parent_run(uri: str, experiment_id: str, kind: str, key: Mapping[str, str], name: str,
               params: Mapping[str, Any] | None = None) -> str:
    """The id of the parent run of a sweep or demo (``splitlab.kind`` = ``kind``) whose tags include ``key``:
    found again (and set RUNNING) when resumed, else created with :func:`provenance_tags` and ``params``.
    Children carry ``mlflow.parentRunId`` = this id (:data:`TAG_PARENT`)."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    where = " and ".join([f"tags.`{TAG_KIND}` = '{kind}'"] + [f"tags.`{k}` = '{v}'" for k, v in key.items()])
    found = client.search_runs([experiment_id], filter_string=where, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={**provenance_tags(), TAG_KIND: kind, **key})
    if params:
        flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flatten(params).items()}
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])
    return run.info.run_id


class RunTracker:
    """The MLflow run of one ``splitlab train`` run: params once, metrics per iteration, artifacts at the end.

    A resumed run continues the MLflow run it had (``run_id``); ``enabled=False`` makes every call a no-op.
    """

    def __init__(self, enabled: bool, uri: str | None = None, experiment: str = "splitlab") -> None:
        self.enabled, self.uri, self.experiment = enabled, uri, experiment
        self.run_id: str | None = None

    def start(self, name: str, run_id: str | None, tags: Mapping[str, str], params: Mapping[str, Any]) -> str | None:
        """Open (or with ``run_id`` reopen) the run; params and tags go to a new run only. Returns its id."""
        if not self.enabled:
            return None
        import mlflow

        use_tracking(self.uri, self.experiment)
        if run_id and not _has_run(run_id):
            run_id = None  # the run logged to another store before (tracking is not part of the spec's hash)
        if run_id:
            mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
        else:
            # nested under an open run of this process (a demo's parent run): a stage of it
            run_id = mlflow.start_run(run_name=name, nested=mlflow.active_run() is not None).info.run_id
            mlflow.set_tags({**provenance_tags(), **dict(tags)})
            flat = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in flatten(params).items()}
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        self.run_id = run_id
        return run_id

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the finite numbers of ``metrics`` at ``step`` (anything else is skipped)."""
        if not self.enabled:
            return
        import mlflow

        clean = {k: float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        mlflow.log_metrics(clean, step=step)

    def log_files(self, files: Sequence[str | Path], folders: Mapping[str, str | Path] = {}) -> None:
        """Upload existing ``files`` to the run's root and each folder under its artifact path."""
        if not self.enabled:
            return
        import mlflow

        for path in files:
            if Path(path).exists():
                mlflow.log_artifact(str(path))
        for artifact_path, folder in folders.items():
            mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def end(self, finished: bool) -> None:
        """Close the run: FINISHED, or KILLED when the training stopped before its end."""
        if not self.enabled:
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status="FINISHED" if finished else "KILLED")


def _has_run(run_id: str) -> bool:
    """Whether the current tracking store holds ``run_id``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient().get_run(run_id)
    except MlflowException:
        return False
    return True
