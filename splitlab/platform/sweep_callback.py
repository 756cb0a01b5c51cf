"""The MLflow side of a sweep: :class:`SweepMLflowCallback`, one run per Tune trial (see ``sweep``).

Built on public APIs only: Tune's ``LoggerCallback`` hooks and ``MlflowClient``.
"""
from __future__ import annotations

import math
import numbers
import time
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback

from splitlab.dotted import flatten
from splitlab.platform.tracking import (
    TAG_KIND,
    TAG_PARENT,
    TAG_SWEEP,
    TAG_SWEEP_ID,
    TAG_TRIAL_ID,
    ensure_experiment,
    provenance_tags,
)


class SweepMLflowCallback(LoggerCallback):
    """One MLflow run per trial: swept values as params, namespaced metrics, artifacts at the end.

    It finds the run a trial already has (after ``--resume``) instead of opening a second one, names
    runs by their swept values, logs only the trial's own metrics (names with a namespace, such as
    ``policy/return``) plus Tune's iteration count and time, and uploads the trial's final checkpoint
    (its output folder) as the run's artifacts.
    """

    def __init__(self, tracking_uri: str, sweep_name: str, sweep_id: str, experiment_name: str,
                 parent_run_id: str | None = None):
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        """The sweep's parent run: every trial run is its child (``mlflow.parentRunId``)."""
        self.sweep_name = sweep_name
        self.sweep_id = sweep_id
        self.experiment_name = experiment_name
        self.runs: dict[str, str] = {}
        """Tune trial id -> MLflow run id."""
        self._client = None
        self._experiment_id: str | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune saves callbacks with the sweep; a client holds a DB engine
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = ensure_experiment(self.tracking_uri, self.experiment_name)
        return self._experiment_id

    def log_trial_start(self, trial) -> None:
        if trial.trial_id in self.runs:
            return
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_SWEEP_ID}` = '{self.sweep_id}' and tags.`{TAG_TRIAL_ID}` = '{trial.trial_id}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            values = flatten(trial.config, sep="/")
            label = ",".join(f"{k.rsplit('/', 1)[-1]}={_short(v)}" for k, v in values.items())
            tags = {**provenance_tags(), TAG_SWEEP: self.sweep_name, TAG_SWEEP_ID: self.sweep_id,
                    TAG_TRIAL_ID: trial.trial_id, "trial_name": str(trial), TAG_KIND: "sweep-trial"}
            if self.parent_run_id:
                tags[TAG_PARENT] = self.parent_run_id
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{self.sweep_name}:{label}"[:250])
            run_id = run.info.run_id
            if values:
                from mlflow.entities import Param

                self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in values.items()])
        self.runs[trial.trial_id] = run_id

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        run_id = self.runs[trial.trial_id]
        step = int(result.get("training_iteration") or iteration)
        metrics = {k: v for k, v in flatten({k: v for k, v in result.items() if k != "config"}, sep="/").items()
                   if "/" in k and _is_number(v)}
        for key in ("training_iteration", "time_total_s"):
            if _is_number(result.get(key)):
                metrics[f"tune/{key}"] = result[key]
        if metrics:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        checkpoint = trial.checkpoint
        if checkpoint is not None and not failed:
            with checkpoint.as_directory() as folder:
                for entry in sorted(Path(folder).iterdir()):
                    if entry.name.startswith((".", "_")):
                        continue  # Tune's own checkpoint bookkeeping
                    if entry.is_dir():
                        self.client.log_artifacts(run_id, str(entry), artifact_path=entry.name)
                    else:
                        self.client.log_artifact(run_id, str(entry))
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _short(v: Any, limit: int = 24) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text if len(text) <= limit else text[: limit - 1] + "~"
