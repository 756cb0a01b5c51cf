"""Sweeps: one experiment spec plus a ``sweep:`` section, run as Ray Tune trials, tracked in MLflow.

``splitlab sweep SPEC.yaml`` validates the whole spec (the sweep section and the experiment spec at
every listed value and both ends of every range) before Ray starts, then runs one trial per point of
the search space on an embedded local Ray (or a cluster with ``--address``). Each trial is one
training run of the split-policy agent (``splitlab.platform.training``) on the base spec with the
trial's values merged in.

Tracking: :class:`SweepMLflowCallback` (a Tune ``LoggerCallback`` on ``MlflowClient``) runs on the driver and gives
every trial one MLflow run: the swept values as params (``env/w_l``), the trial's namespaced metrics
per iteration (``policy/return``, ``mbrl/real_evals``, ...), tags ``splitlab.sweep`` (the sweep name)
and ``splitlab.sweep_id`` shared by all trials of the sweep, and at the end the trial's artifacts
(plots, surrogate, policy checkpoint, the resolved spec). Trials hand those files to the driver as
their final Tune checkpoint, so the same code works when trials run on other nodes.

Resume: Tune keeps the sweep's state under ``storage_path/name``; ``--resume`` restores it, keeps
finished trials as they are, reruns unfinished and errored ones, and logs them into their existing
MLflow runs (one run per trial, however many times the sweep was interrupted).
"""
from __future__ import annotations

import importlib
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from splitlab.dotted import flatten
from splitlab.platform.search_space import SweepSpec, apply_overrides, resolve_method
from splitlab.platform.spec import read_spec_file
from splitlab.platform.tracking import TAG_SWEEP, TAG_SWEEP_ID, ensure_experiment  # noqa: F401  (the tags: re-exported)

TRIAL_FN = "splitlab.platform.sweep:train_trial"
"""The function a trial runs, as ``module:function`` so that any worker can import it."""
STATE_FILE = "splitlab_sweep.json"
"""Written next to Tune's state: the sweep id (the shared MLflow tag) and the spec it ran."""


@dataclass
class TrialContext:
    """What a trial function gets besides its spec."""

    out_dir: Path
    """Write plots, the surrogate and the policy checkpoint here; everything in it becomes MLflow artifacts."""
    report: Callable[[Mapping[str, Any]], None]
    """Report intermediate metrics (one call per training iteration; schedulers stop trials on these)."""
    trial_name: str = "trial"
    """Tune's trial name (for logs)."""
    restore_dir: Path | None = None
    """Files of this trial's last checkpoint when an interrupted trial restarts, else None."""


TrialFn = Callable[[dict, TrialContext], Mapping[str, Any]]
"""``fn(spec, ctx) -> final metrics``: run one trial of the spec; intermediate metrics go through ctx.report."""


@dataclass
class SweepPlan:
    """A validated sweep: the base experiment spec and the ``sweep:`` section."""

    base: dict
    """The experiment spec without its sweep section (what ``splitlab train`` would run)."""
    sweep: SweepSpec
    """The validated sweep section."""
    source: str = "<dict>"
    """Where the spec came from (for messages)."""

    def trial_spec(self, overrides: Mapping) -> dict:
        """The spec one trial runs: base with the trial's values (its method's settings expanded) merged in."""
        return apply_overrides(self.base, resolve_method(overrides, self.sweep.method_overrides()))


def validate_experiment(spec: Mapping) -> Any:
    """Validate an experiment spec (no sweep section) with the training spec's own loader; returns it typed."""
    from splitlab.platform import spec as spec_module

    return spec_module.ExperimentSpec.from_dict(dict(spec))


def load_plan(source: str | Path | Mapping, validate: Callable[[Mapping], Any] | None = validate_experiment,
              name: str | None = None, where: str | None = None) -> SweepPlan:
    """Read and validate a sweep spec (a YAML path or a mapping) before anything starts.

    The experiment part is validated at every combination of the listed values and the range ends
    (``SweepSpec.representative_overrides``), so a grid value the spec would reject fails here, naming
    the sweep parameter, instead of as a failed trial an hour later.
    """
    if isinstance(source, Mapping):  # ``where``: the file it was read from, for messages and the default name
        raw, stem = dict(source), Path(where).stem if where else "sweep"
        where = where or "<dict>"
    else:
        path = Path(source)
        raw, where, stem = read_spec_file(path, "sweep spec"), str(path), path.stem
    if "sweep" not in raw:
        raise ValueError(f"{where}: no 'sweep' section; `splitlab train` runs a spec without one")
    if validate is validate_experiment:
        raw.setdefault("name", stem)  # as `splitlab train` names a spec without one
    sweep = SweepSpec.from_dict(raw.pop("sweep"), default_name=stem)
    if name:
        sweep = SweepSpec.from_dict({**sweep.to_dict(), "name": name})
    plan = SweepPlan(base=raw, sweep=sweep, source=where)
    if validate is not None:
        for overrides in sweep.representative_overrides():
            try:
                validate(plan.trial_spec(overrides))
            except ValueError as err:
                values = ", ".join(f"{k}={v!r}" for k, v in flatten(overrides).items())
                raise ValueError(f"{where}: the spec is invalid with sweep values {values}: {err}") from None
    return plan


def resolve_trial_fn(ref: str | TrialFn) -> TrialFn:
    """``"module:function"`` -> the function (strings keep the trainable small and importable anywhere)."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def train_trial(spec: dict, ctx: TrialContext) -> Mapping[str, Any]:
    """The default trial: one ``splitlab train`` run of ``spec`` in ``ctx.out_dir`` (its own MLflow logging off)."""
    from splitlab.platform import training

    return training.run_trial(spec, out_dir=ctx.out_dir, report=ctx.report, restore_dir=ctx.restore_dir)


ARTIFACT_SKIP = {"checkpoints", "rllib", "state.json"}
"""Run-folder entries that stay out of MLflow: resume state, not results (hidden and _-prefixed ones too)."""


def trial_bundles(spec: Mapping, cpus_per_trial: float) -> list[dict[str, float]]:
    """Ray resources one training trial needs: the trial itself, then the actors it starts.

    Env runners and CPU-reserving LLM evaluators are created inside the trial; Tune places them in the
    trial's placement group, so they get a bundle each here. Without those bundles they would queue
    outside the group for CPUs that the trials hold, and the sweep would wait forever.
    """
    typed = validate_experiment({"name": "trial", **dict(spec)})
    bundles = [{"CPU": float(cpus_per_trial)}]
    algo = typed.algorithm
    if algo.num_env_runners and algo.env_runner_cpus > 0:
        bundles += [{"CPU": float(algo.env_runner_cpus)}] * algo.num_env_runners
    dyna = typed.dyna
    if dyna.evaluator_cpus > 0 and typed.quality.kind == "live":
        bundles += [{"CPU": float(dyna.evaluator_cpus)}] * (2 * dyna.evaluators)  # training pool + evaluation pool
    return bundles


def _trial_resources(base: dict, cpus_per_trial: float, training: bool, methods: Mapping | None = None):
    from ray import tune

    def resources(config: dict):
        bundles = trial_bundles(apply_overrides(base, resolve_method(config, methods)), cpus_per_trial) if training else [
            {"CPU": float(cpus_per_trial)}]
        return tune.PlacementGroupFactory(bundles, strategy="PACK")

    return resources


def _stage_artifacts(out_dir: Path, spec: dict) -> Path:
    """Copy the run's results (not its resume state) into a folder that becomes the final checkpoint."""
    import shutil
    import tempfile

    stage = Path(tempfile.mkdtemp(prefix="splitlab-artifacts-"))
    for entry in out_dir.iterdir():
        if entry.name in ARTIFACT_SKIP or entry.name.startswith((".", "_")):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, stage / entry.name)
    if not (stage / "spec.yaml").exists():
        (stage / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return stage


def needs_metric(sweep: SweepSpec) -> bool:
    """Whether Tune itself reads ``sweep.metric`` while trials run (a scheduler or a model-based searcher)."""
    from splitlab.platform.search_space import BUILTIN_SEARCHERS

    return sweep.scheduler != "fifo" or sweep.searcher not in BUILTIN_SEARCHERS


def _reporter(metric: str | None) -> Callable[[Mapping[str, Any]], None]:
    """``tune.report`` that keeps ``metric`` in every result when a scheduler or searcher reads it.

    A metric computed only every few iterations (``evaluation.every``) is carried forward from its last
    value; one never reported before is an error that names the fix, instead of Tune's generic one.
    """
    from ray import tune

    last: dict[str, float] = {}

    def report(metrics: Mapping[str, Any], checkpoint: Any = None) -> None:
        metrics = dict(metrics)
        if metric is not None:
            if metric in metrics:
                last[metric] = metrics[metric]
            elif metric in last:
                metrics[metric] = last[metric]
            else:
                raise ValueError(f"sweep.metric {metric!r} is not among this trial's iteration metrics "
                                 f"{sorted(metrics)}; a scheduler or model-based searcher needs it every iteration: "
                                 "pick one of those, or set evaluation.every: 1 for policy/return_vs_oracle")
        tune.report(metrics, checkpoint=checkpoint)

    return report


def _trainable(config: dict, base: dict, trial_fn: str | TrialFn, launch_dir: str, experiment_dir: str,
               metric: str | None = None, measurements: str | None = None, methods: Mapping | None = None) -> None:
    """The Tune function trainable: merge, run, and hand the results over as the final checkpoint.

    The run folder is ``<experiment_dir>/<trial>/run`` when the sweep's storage is a local path, so a
    trial that an interrupted sweep restarts finds its own training checkpoints there and resumes.
    """
    import tempfile

    from ray import tune

    try:
        import torch

        torch.set_num_threads(1)  # many trials share few cores; intra-op threads only fight each other
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    ctx_tune = tune.get_context()
    spec = apply_overrides(base, resolve_method(config, methods))
    trial_name = ctx_tune.get_trial_name()
    shared = "://" not in experiment_dir and Path(experiment_dir).is_dir()
    if shared:
        out_dir = Path(experiment_dir) / trial_name / "run"
    else:  # remote storage: the run lives on this node; its resume state travels as Tune checkpoints
        out_dir = Path(tempfile.mkdtemp(prefix=f"splitlab-{trial_name}-")) / "run"
    out_dir.mkdir(parents=True, exist_ok=True)
    restore_dir = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restore_dir = Path(checkpoint.to_directory(str(out_dir.parent / "_restore")))
    if Path(launch_dir).is_dir():  # relative paths in the spec mean the folder the sweep started in
        os.chdir(launch_dir)
    if measurements:  # `store: auto` of a live quality: one store for every trial, on any node
        from splitlab.llm.measurement_store import ENV_VAR

        os.environ[ENV_VAR] = measurements  # this process and the evaluator actors it starts
        quality = spec.get("quality")
        if isinstance(quality, dict) and quality.get("kind") == "live" and quality.get("store", "auto") == "auto":
            quality["store"] = measurements  # env runners (other processes) build the live model from the spec
    report = _reporter(metric) if shared else _checkpointing_reporter(_reporter(metric), out_dir)
    ctx = TrialContext(out_dir=out_dir, report=report, trial_name=trial_name, restore_dir=restore_dir)
    final = dict(resolve_trial_fn(trial_fn)(spec, ctx) or {})
    stage = _stage_artifacts(out_dir, spec)
    try:
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(stage)))  # copied to storage here
    finally:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)


def _checkpointing_reporter(report: Callable[..., None], out_dir: Path) -> Callable[[Mapping[str, Any]], None]:
    """``report`` that also hands the run folder to Tune each time training wrote a new checkpoint.

    On remote storage (s3, or a folder this node cannot see) the run folder is node-local: without these
    checkpoints a trial restarted on another node (its node lost) would train from scratch.
    """
    from ray import tune

    from splitlab.platform.run_state import RunState

    saved = {"iteration": -1}

    def report_and_checkpoint(metrics: Mapping[str, Any]) -> None:
        state = RunState.load(out_dir)
        if state is None or state.iteration == saved["iteration"] or state.checkpoint_dir(out_dir) is None:
            report(metrics)
            return
        saved["iteration"] = state.iteration
        report(metrics, checkpoint=tune.Checkpoint.from_directory(str(out_dir)))  # copied to storage here

    return report_and_checkpoint


@dataclass
class SweepOutcome:
    """What a finished (or resumed) sweep returns."""

    name: str
    sweep_id: str
    path: str
    """Tune's experiment folder."""
    tracking_uri: str
    experiment: str
    trials: list[dict] = field(default_factory=list)
    """Per trial: trial_id, status, config (swept values), metrics (last reported)."""
    parent_run_id: str | None = None
    """The sweep's MLflow parent run (its trials are children; ``report`` logs its tables there)."""

    @property
    def errored(self) -> list[dict]:
        return [t for t in self.trials if t["status"] == "ERROR"]


def experiment_path(sweep: SweepSpec, storage_path: str | None = None) -> str:
    """Tune's experiment folder for a sweep: ``<storage_path>/<name>`` (local paths made absolute)."""
    root = storage_path or sweep.storage_path
    if "://" not in root:
        root = str(Path(root).resolve())
    return f"{root.rstrip('/')}/{sweep.name}"


def measurements_root(experiment_dir: str) -> str:
    """The measurement store the trials of a sweep share (``store: auto``): ``$SPLITLAB_MEASUREMENTS`` when the
    driver has it, else ``measurements`` next to the sweep's folder under its ``storage_path`` (local, NFS
    or s3), so sweeps with one storage reuse each other's measurements."""
    from splitlab.llm.measurement_store import ENV_VAR

    return os.environ.get(ENV_VAR) or f"{experiment_dir.rpartition('/')[0]}/measurements"


def _read_state(path: str) -> dict | None:
    """The sweep's state file under ``path`` (a local folder or a pyarrow URI such as s3://...), or None."""
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    target = f"{root}/{STATE_FILE}"
    if fs.get_file_info(target).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as f:
        return json.loads(f.read().decode())


def _write_state(path: str, state: dict) -> None:
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{STATE_FILE}") as f:
        f.write(json.dumps(state, indent=1, default=str).encode())


def run_sweep(plan: SweepPlan, *, address: str | None = None, resume: bool = False, tracking_uri: str | None = None,
              trial_fn: str | TrialFn = TRIAL_FN, storage_path: str | None = None, num_cpus: float | None = None,
              verbose: int = 1) -> SweepOutcome:
    """Run (or with ``resume`` continue) the sweep; returns the trials' final state.

    ``address``: None starts an embedded local Ray on 127.0.0.1 (or joins the cluster of the Ray job this
    runs in); ``auto`` or ``HOST:PORT`` joins a running cluster. ``tracking_uri``: default
    ``$MLFLOW_TRACKING_URI`` or SQLite in the working directory.
    """
    from ray import tune

    from splitlab.platform.ray_runtime import ensure_ray
    from mlflow.tracking import MlflowClient

    from splitlab.platform.tracking import TAG_SWEEP_PARENT, parent_run
    from splitlab.platform.tracking import tracking_uri as resolve_uri

    sweep = plan.sweep
    spec_uri = (plan.base.get("tracking") or {}).get("uri") if isinstance(plan.base.get("tracking"), Mapping) else None
    uri = resolve_uri(tracking_uri or spec_uri)
    path = experiment_path(sweep, storage_path)
    state = _read_state(path)
    if state is not None:
        if not resume:
            raise ValueError(f"sweep {sweep.name!r} already has state at {path}; pass --resume to continue it "
                             "(finished trials are kept) or choose another sweep.name / --name")
        sweep_id = state["sweep_id"]
        if state.get("tracking_uri") not in (None, uri):
            raise ValueError(f"sweep {sweep.name!r} logs to {state['tracking_uri']}; resume it with --tracking-uri "
                             f"{state['tracking_uri']} (not {uri}) so that its trials keep their MLflow runs")
    else:
        if resume:
            print(f"sweep {sweep.name!r}: nothing to resume at {path}; starting it")
        sweep_id = uuid.uuid4().hex[:12]
    launch_dir = os.getcwd()
    runtime_env = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}}
    ensure_ray(num_cpus, address=address, runtime_env=runtime_env, log_to_driver=True, quiet=False)
    experiment_id = ensure_experiment(uri, sweep.experiment)
    parent = parent_run(uri, experiment_id, "sweep", {TAG_SWEEP_PARENT: sweep_id}, sweep.name,
                        {"source": plan.source, "sweep": sweep.to_dict()})

    trainable = tune.with_parameters(_trainable, base=plan.base, trial_fn=trial_fn, launch_dir=launch_dir,
                                     experiment_dir=path, metric=sweep.metric if needs_metric(sweep) else None,
                                     measurements=measurements_root(path), methods=sweep.method_overrides())
    trainable = tune.with_resources(trainable, _trial_resources(plan.base, sweep.cpus_per_trial, trial_fn == TRIAL_FN,
                                                                sweep.method_overrides()))
    from splitlab.platform.sweep_callback import SweepMLflowCallback

    callback = SweepMLflowCallback(uri, sweep.name, sweep_id, sweep.experiment, parent)
    if state is not None and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:  # new, or the first run died before Tune's first snapshot: start over under the same sweep id
        tuner = _new_tuner(plan, trainable, callback, path, verbose)
        _write_state(path, {"sweep_id": sweep_id, "name": sweep.name, "source": plan.source, "tracking_uri": uri,
                            "experiment": sweep.experiment, "sweep": sweep.to_dict(), "base": plan.base})
    try:
        results = tuner.fit()
    except BaseException:
        MlflowClient(tracking_uri=uri).set_terminated(parent, status="KILLED")
        raise
    trials = []
    for result in results:
        metrics = {k: v for k, v in (result.metrics or {}).items() if k != "config"}
        trials.append({"trial_id": metrics.get("trial_id"), "status": "ERROR" if result.error else "TERMINATED",
                       "config": result.config, "metrics": metrics,
                       "error": str(result.error).splitlines()[0] if result.error else None})
    MlflowClient(tracking_uri=uri).set_terminated(parent, status="FAILED" if any(
        t["status"] == "ERROR" for t in trials) else "FINISHED")
    return SweepOutcome(name=sweep.name, sweep_id=sweep_id, path=path, tracking_uri=uri,
                        experiment=sweep.experiment, trials=trials, parent_run_id=parent)


def _new_tuner(plan: SweepPlan, trainable, callback, path: str, verbose: int):
    from ray import tune
    from ray.tune.schedulers import create_scheduler
    from ray.tune.search import BasicVariantGenerator, create_searcher

    from splitlab.platform.search_space import BUILTIN_SEARCHERS, SCHEDULERS

    sweep = plan.sweep
    if sweep.searcher in BUILTIN_SEARCHERS:
        searcher = BasicVariantGenerator(max_concurrent=sweep.max_concurrent_trials or 0, **sweep.searcher_args)
    else:
        searcher = create_searcher(sweep.searcher, **sweep.searcher_args)
    scheduler = create_scheduler(SCHEDULERS[sweep.scheduler], **sweep.scheduler_args)
    root, _, name = path.rpartition("/")
    return tune.Tuner(
        trainable,
        param_space=plan.sweep.param_space(),
        tune_config=tune.TuneConfig(metric=sweep.metric if needs_metric(sweep) else None,
                                    mode=sweep.mode if needs_metric(sweep) else None, search_alg=searcher, scheduler=scheduler,
                                    num_samples=sweep.num_samples,
                                    max_concurrent_trials=None if sweep.searcher in BUILTIN_SEARCHERS
                                    else sweep.max_concurrent_trials,
                                    trial_name_creator=lambda t: f"{sweep.name}_{t.trial_id}",
                                    trial_dirname_creator=lambda t: f"{sweep.name}_{t.trial_id}"),
        run_config=tune.RunConfig(name=name, storage_path=root, callbacks=[callback], verbose=verbose,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
    )
