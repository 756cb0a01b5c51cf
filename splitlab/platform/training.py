"""``splitlab train SPEC.yaml``: train one split-policy agent from a spec, evaluate it, log it.

One run, in order:

1. **Rewards for the agent**: the spec's ``mode`` (:mod:`splitlab.platform.modes`): ``paper`` fits the
   surrogate on a measured grid and trains on it alone; ``dyna`` refreshes the surrogate from a budget
   of real LLM evaluations after every iteration; ``model_free`` rewards every step with the real quality.
2. **Training** with RLlib (PPO or DQN, new API stack), checkpointing every ``checkpoint.every``
   iterations. The run folder records its spec (:mod:`splitlab.platform.run_state`): a rerun of the same
   spec resumes from the newest checkpoint (the surrogate, its data, the evaluation cache and the
   counters included), a changed spec is refused naming the changed keys, ``resume=False`` starts over.
3. **Evaluation** of the greedy policy, every fixed k, random and the oracle on held-out channel
   traces with the true reward (:mod:`splitlab.platform.held_out`): ``policy/return``,
   ``policy/return_vs_oracle`` (random = 0, oracle = 1), ``policy/return_ratio`` (plain fraction of the
   oracle's return), the chosen k against the channel (``k_vs_channel.png``); every
   ``evaluation.every`` iterations too when set.
4. **Outputs** in the run folder (``out/name``): ``spec.yaml``, ``results.json``, ``history.csv``,
   ``surrogate.npz``, ``policy/`` (an RLModule checkpoint), ``policy.json``, plots; and one MLflow run
   (:class:`~splitlab.platform.tracking.RunTracker`) with the spec as params, the metrics per
   iteration and every output as artifacts.

Metric names: ``policy/train_return`` (the reward the agent trained on: surrogate for paper and dyna),
``policy/return`` and ``policy/return_vs_oracle`` (true reward, held-out traces), ``mbrl/real_evals``
(real LLM evaluations the training used), ``mbrl/real_eval_time_s``, ``mbrl/surrogate_mae`` and
``mbrl/surrogate_r2`` (held-out error of the last fit), ``mbrl/reward_queries`` (model-free: env
steps whose reward was a real evaluation or a cache hit), ``time/wall_s``, ``train/env_steps``,
``perf/env_steps_per_s``, ``eval/real_evals`` (evaluations the final scoring needed, apart).
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from splitlab.platform.held_out import HeldOutEvaluation
from splitlab.platform.modes import make_mode
from splitlab.platform.ray_runtime import ensure_ray
from splitlab.platform.run_env import env_config
from splitlab.platform.run_outputs import (plot_learning_curve, progress_line, rllib_metrics, write_history,
                                          write_policy_info)
from splitlab.platform.run_state import RESULTS_FILE, STATE_FILE, RunState, atomic_json, open_run_folder
from splitlab.platform.spec import ExperimentSpec
from splitlab.platform.tracking import TAG_KIND, RunTracker


@dataclass
class TrainResult:
    """What a finished run returns (also written to ``results.json``)."""

    run_dir: Path
    metrics: dict[str, float]
    """Final metrics (namespaced)."""
    policies: dict[str, dict[str, float]] = field(default_factory=dict)
    """Held-out score of every evaluated policy: return, return_std, mean_k, return_vs_oracle."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Metrics of every training iteration."""
    run_id: str | None = None
    """MLflow run id (None when tracking is off)."""
    files: dict[str, str] = field(default_factory=dict)
    """Output files by role: k_plot, learning_curve, surrogate, policy, results."""


class TrainingRun:
    """One run of a spec in ``run_dir``; :meth:`run` does everything (see the module docstring).

    Args:
        spec: the validated spec.
        run_dir: output folder (default ``spec.out/spec.name``).
        resume: continue the run in ``run_dir`` if it holds one of this spec; False starts over there.
        report: called with the metrics of every iteration (e.g. ``ray.tune.report`` in a sweep trial).
        log: progress lines (``print`` by default; None for silence).
    """

    def __init__(self, spec: ExperimentSpec, run_dir: str | Path | None = None, resume: bool = True,
                 report: Callable[[Mapping[str, Any]], None] | None = None,
                 log: Callable[[str], None] | None = print) -> None:
        self.spec = spec
        self.run_dir = Path(run_dir) if run_dir is not None else spec.run_dir
        self.resume = resume
        self.report = report
        self.log = log or (lambda msg: None)
        self.mode = make_mode(spec, self.run_dir, self._say)
        self.tracker = RunTracker(spec.tracking.enabled, spec.tracking.uri, spec.tracking.experiment)
        self.evaluation: HeldOutEvaluation | None = None
        self.algo = None
        self.state = RunState.fresh(spec)
        self.history: list[dict[str, float]] = []
        self.start_time = time.perf_counter()
        self.wall_before = 0.0

    def _say(self, msg: str) -> None:
        self.log(f"[{self.spec.name} {self.wall_s:7.1f}s] {msg}")

    @property
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.start_time

    # -- the whole run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        spec = self.spec
        resumed = open_run_folder(self.run_dir, spec, self.resume)  # SpecChanged for another spec's folder
        if resumed is not None and resumed.finished:
            self._say("already finished with this spec; results.json holds its results (--restart trains again)")
            return result_from_file(self.run_dir)
        (self.run_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        if resumed is not None:
            self.state = resumed
            self.history = list(resumed.history)
            self.wall_before = resumed.wall_s
            self._say(f"resuming after iteration {resumed.iteration} from {resumed.checkpoint}")
        self.state.save(self.run_dir)  # the folder records its spec before any work
        started = ensure_ray()
        try:
            self.state.mlflow_run_id = self.tracker.start(
                spec.name, self.state.mlflow_run_id, params=spec.to_dict(),
                tags={TAG_KIND: "train", "splitlab.mode": spec.mode, "splitlab.algorithm": spec.algorithm.name})
            result = self._train(resumed)
            result.run_id = self.state.mlflow_run_id
            return result
        finally:
            self._teardown(started)

    def _train(self, resumed: RunState | None) -> TrainResult:
        from splitlab.mbrl.agents import algorithm_config, build_algorithm

        spec, algo_spec = self.spec, self.spec.algorithm
        checkpoint = resumed.checkpoint_dir(self.run_dir) if resumed is not None else None
        reward = self.mode.prepare(resumed, checkpoint)
        self.evaluation = HeldOutEvaluation(spec, self.mode.pool)
        config = algorithm_config(algo_spec, env_config(spec, reward), spec.env_kind)
        self._say(f"building {algo_spec.name.upper()} ({spec.mode}) with {algo_spec.num_env_runners} env "
                  f"runner(s) x {algo_spec.envs_per_env_runner} env(s)")
        self.algo = build_algorithm(config, self.run_dir / "rllib")
        start_it = 0
        if checkpoint is not None:
            self.algo.restore_from_path(str((checkpoint / "algorithm").resolve()))  # RLlib wants absolute paths
            self.mode.restored(self.algo)
            start_it = resumed.iteration
        report = self.mode.surrogate.report if self.mode.surrogate is not None else None
        if report is not None and start_it == 0:
            self.tracker.log_metrics({**report.as_metrics(), **self.mode.real_evals(self.algo)}, 0)
        steps_before = float(self.history[-1].get("train/env_steps", 0.0)) if self.history else 0.0
        for it in range(start_it + 1, algo_spec.iterations + 1):
            t0 = time.perf_counter()
            result = self.algo.train()
            refreshed = self.mode.refresh(self.algo)  # part of the iteration: timed with it
            m = self._iteration_metrics(it, result, time.perf_counter() - t0, steps_before, refreshed)
            steps_before = m["train/env_steps"]
            self.history.append(m)
            self._say(progress_line(it, algo_spec.iterations, m))
            self.tracker.log_metrics(m, it)
            if it % spec.checkpoint.every == 0 or it == algo_spec.iterations:
                self._checkpoint(it)
            if self.report is not None:
                self.report(dict(m))
        return self._finish()

    def _checkpoint(self, iteration: int) -> Path:
        ckpt_root = self.run_dir / "checkpoints"
        relative = f"checkpoints/iter_{iteration:06d}"  # the state keeps it relative: a moved folder resumes
        ckpt = self.run_dir / relative
        if ckpt.exists():
            shutil.rmtree(ckpt)
        self.algo.save_to_path(str((ckpt / "algorithm").resolve()))
        self.mode.save(ckpt)
        s = self.state
        s.iteration, s.checkpoint, s.history, s.wall_s = iteration, relative, self.history, self.wall_s
        s.mode = self.mode.counters(self.algo)
        s.save(self.run_dir)
        kept = sorted(p for p in ckpt_root.iterdir() if p.name.startswith("iter_"))
        for old in kept[: -self.spec.checkpoint.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return ckpt

    def _iteration_metrics(self, it: int, result: Mapping[str, Any], seconds: float, steps_before: float,
                           refreshed: dict[str, float]) -> dict[str, float]:
        module_id = "shared" if self.spec.env_kind == "multi_user" else "default_policy"
        m = {"train/iteration": float(it), **rllib_metrics(result, steps_before, seconds, module_id),
             "time/wall_s": self.wall_s}
        m.update(self.mode.iteration_metrics(self.algo, m["train/env_steps"], refreshed))
        if self.spec.evaluation.every and it % self.spec.evaluation.every == 0:
            m.update(self.evaluation.score(self.algo, final=False)[0])
        return m

    def _finish(self) -> TrainResult:
        from splitlab.mbrl import evaluation as ev
        from splitlab.mbrl.agents import policy_module
        from splitlab.serve.policy import export_policy

        spec, run_dir = self.spec, self.run_dir
        self._say(f"evaluating on {spec.evaluation.episodes} held-out episodes against the baselines")
        metrics, results = self.evaluation.score(self.algo, final=True)
        oracle, random = metrics["oracle/return"], metrics["random/return"]
        policies = {name: {**r.summary(), "return_vs_oracle": ev.score_vs_oracle(r.mean, oracle, random),
                           "return_ratio": ev.return_ratio(r.mean, oracle)} for name, r in results.items()}
        param = "rho" if spec.env.preset == "paper" else "snr_db"
        files = {"k_plot": str(ev.plot_k_vs_channel(results, run_dir / "k_vs_channel.png", param,
                                                    title=f"{spec.name}: chosen split vs channel")),
                 "learning_curve": str(plot_learning_curve(self.history, run_dir / "learning_curve.png", metrics,
                                                           spec.name))}
        policy_dir = run_dir / "policy"
        shutil.rmtree(policy_dir, ignore_errors=True)
        module = policy_module(self.algo, spec.env_kind)
        module.save_to_path(str(policy_dir.resolve()))
        write_policy_info(spec, self.evaluation.env, run_dir / "policy.json")
        try:
            files["policy_weights"] = str(export_policy(module, run_dir))  # what `splitlab serve` loads, no pickle
        except ValueError as err:  # a module the export does not know (RLlib's DQN module today)
            self._say(f"no pickle-free policy export ({err}); serving this run needs trust_checkpoint, and it "
                      "is not logged as an MLflow model")
        files["policy"] = str(policy_dir)
        files.update(self.mode.write_outputs())
        surrogate = self.mode.surrogate
        final = {**(self.history[-1] if self.history else {}), **self.mode.real_evals(self.algo), **metrics,
                 "time/wall_s": self.wall_s}
        if surrogate is not None and surrogate.report is not None:
            final.update(surrogate.report.as_metrics())
        final = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
        write_history(self.history, run_dir / "history.csv")
        atomic_json(run_dir / RESULTS_FILE, {"name": spec.name, "mode": spec.mode, "algorithm": spec.algorithm.name,
                                             "metrics": final, "policies": policies, "history": self.history,
                                             "files": files})
        files["results"] = str(run_dir / RESULTS_FILE)
        self.state.finished, self.state.history, self.state.wall_s = True, self.history, self.wall_s
        self.state.save(run_dir)
        last = self.history[-1] if self.history else {}
        self.tracker.log_metrics({k: v for k, v in final.items() if last.get(k) != v}, spec.algorithm.iterations)
        self.tracker.log_files([run_dir / n for n in ("spec.yaml", "history.csv", "surrogate.npz", "grid.json",
                                                      "policy.json", "policy_net.json", "policy.safetensors",
                                                      "policy.npz")]
                               + [files[role] for role in ("k_plot", "learning_curve", "results")],
                               {"policy": files["policy"]})
        if self.tracker.enabled and spec.tracking.log_model and spec.env_kind == "split" \
                and spec.env.preset == "wireless" and "policy_weights" in files:  # the model is the export
            from splitlab.platform.policy_model import log_policy_model

            files["policy_model"] = log_policy_model(run_dir, spec.tracking.register_policy)
        self._say(f"policy return {metrics['policy/return']:.3f} ({metrics['policy/return_vs_oracle']:.3f} of the "
                  f"way from random to oracle {oracle:.3f}); real evaluations {final.get('mbrl/real_evals', 0):.0f}")
        return TrainResult(run_dir, final, policies, self.history, self.tracker.run_id, files)

    def _teardown(self, started_ray: bool) -> None:
        import ray

        self.tracker.end(self.state.finished)
        if self.algo is not None:
            self.algo.stop()
        if self.evaluation is not None:
            self.evaluation.close()
        self.mode.close()
        if started_ray:
            ray.shutdown()


def result_from_file(run_dir: Path) -> TrainResult:
    """The :class:`TrainResult` of a finished run, read back from its folder."""
    data = json.loads((run_dir / RESULTS_FILE).read_text())
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).exists() else {}
    return TrainResult(run_dir, data["metrics"], data["policies"], data["history"], state.get("mlflow_run_id"),
                       data["files"])


# ------------------------------------------------------------------------------ entry points
def run_training(spec: ExperimentSpec | Mapping[str, Any], run_dir: str | Path | None = None, resume: bool = True,
                 report: Callable[[Mapping[str, Any]], None] | None = None,
                 log: Callable[[str], None] | None = print) -> TrainResult:
    """Train, evaluate and log one spec (see the module docstring); resumes an interrupted run in ``run_dir``
    and refuses (:class:`~splitlab.platform.run_state.SpecChanged`) a folder that holds another spec's run."""
    if not isinstance(spec, ExperimentSpec):
        spec = ExperimentSpec.from_dict(spec)
    return TrainingRun(spec, run_dir, resume, report, log).run()


def run_trial(spec: Mapping[str, Any], out_dir: str | Path, report: Callable[[Mapping[str, Any]], None] | None = None,
              restore_dir: str | Path | None = None) -> dict[str, float]:
    """One sweep trial: train ``spec`` in ``out_dir`` reporting every iteration through ``report``.

    MLflow logging is left to the sweep's callback (the trial's own tracking is switched off); a
    ``restore_dir`` (files of the trial's last checkpoint) is copied in first so the run resumes.
    Returns the final metrics.
    """
    raw = dict(spec)
    raw.setdefault("name", "trial")
    raw["tracking"] = {**dict(raw.get("tracking") or {}), "enabled": False}
    typed = ExperimentSpec.from_dict(raw)
    out_dir = Path(out_dir)
    if restore_dir is not None and Path(restore_dir).is_dir():
        shutil.copytree(restore_dir, out_dir, dirs_exist_ok=True)
    return run_training(typed, out_dir, resume=True, report=report).metrics
