"""``splitlab train SPEC.yaml``: train one split-policy agent from a spec, evaluate it, log it.

One run, in order:

1. **Rewards for the agent** (``mode``):
   - ``paper``: fit the surrogate ensemble on a measured grid (given, or measured now with the
     evaluator pool), then train on surrogate rewards only;
   - ``dyna``: measure every split at a lattice of channel values with the pool, fit, train; after every
     iteration :class:`~splitlab.mbrl.dyna.DynaCallback` refreshes the surrogate from visited points
     (where the ensemble disagrees most, and where a measurement could change the best split), within
     the real-evaluation budget, and pushes it to every env runner;
   - ``model_free``: the env runners score every step with the real quality itself (a live LLM
     reward model is loaded once per runner and caches its points).
2. **Training** with RLlib (PPO or DQN, new API stack), checkpointing every ``checkpoint.every``
   iterations; a rerun of the same spec resumes from the newest checkpoint (the surrogate, its
   data, the evaluation cache and the counters included).
3. **Evaluation** of the greedy policy, every fixed k, random and the oracle on held-out channel
   traces with the true reward: ``policy/return``, ``policy/return_vs_oracle`` (random = 0,
   oracle = 1), ``policy/return_ratio`` (plain fraction of the oracle's return), the chosen k
   against the channel (``k_vs_channel.png``).
4. **Outputs** in the run folder (``out/name``): ``spec.yaml``, ``results.json``,
   ``history.csv``, ``surrogate.npz``, ``policy/`` (an RLModule checkpoint), plots; and one MLflow
   run with the spec as params, the metrics per iteration and every output as artifacts.

Metric names: ``policy/train_return`` (the reward the agent trained on: surrogate for paper and dyna),
``policy/return`` and ``policy/return_vs_oracle`` (true reward, held-out traces), ``mbrl/real_evals``
(real LLM evaluations the training used), ``mbrl/real_eval_time_s``, ``mbrl/surrogate_mae`` and
``mbrl/surrogate_r2`` (held-out error of the last fit), ``mbrl/reward_queries`` (model-free: env
steps whose reward was a real evaluation or a cache hit), ``time/wall_s``, ``train/env_steps``,
``perf/env_steps_per_s``, ``eval/real_evals`` (evaluations the final scoring needed, apart).
"""
from __future__ import annotations

import csv
import json
import pickle
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from splitlab.platform.ray_runtime import ensure_ray
from splitlab.platform.spec import ExperimentSpec

STATE_FILE = "state.json"
RESULTS_FILE = "results.json"


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


# ------------------------------------------------------------------------------- helpers
def channel_sample(spec: ExperimentSpec, seed: int = 12345) -> np.ndarray | None:
    """SNRs [N] the agent will meet: 200 sampled traces of the dynamics (with the users' offsets in the
    multi-user env); None for the paper preset, whose channel is an erasure probability."""
    from splitlab.envs.config import make_dynamics

    if spec.env.get("preset") == "paper":
        return None
    dynamics = make_dynamics(spec.env.get("dynamics"))
    rng = np.random.default_rng(seed)
    traces = [dynamics.trace(51, rng) for _ in range(200)]
    if spec.env_kind == "multi_user":
        low, high = spec.env.get("user_snr_offset_db", (-5.0, 5.0))
        traces = [t + rng.uniform(float(low), float(high)) for t in traces]
    return np.concatenate(traces)


def value_range(spec: ExperimentSpec, seed: int = 12345) -> tuple[float, float]:
    """Channel values the agent will meet: ``dyna.value_range``, else the 2nd-98th percentile of
    :func:`channel_sample` (wireless) or the paper preset's rho range."""
    if spec.dyna.value_range is not None:
        return spec.dyna.value_range
    snr = channel_sample(spec, seed)
    if snr is None:
        from splitlab.envs.config import SplitEnvConfig

        env = {k: v for k, v in spec.env.items() if k != "env"}
        low, high = SplitEnvConfig.from_dict({**env, "reward_model": {"kind": "synthetic"}}).rho_range
        return float(low) * 0.98, float(high) * 1.02
    low, high = np.percentile(snr, [2, 98])
    return float(low), float(high)


def _env_config(spec: ExperimentSpec, reward_model: Any) -> dict[str, Any]:
    cfg = {k: v for k, v in spec.env.items() if k != "env"}
    cfg["reward_model"] = reward_model
    return cfg


def _build_env(spec: ExperimentSpec, reward_model: Any) -> Any:
    from splitlab.envs import make_env

    return make_env({**_env_config(spec, reward_model), "env": spec.env_kind})


def _candidate_ks(spec: ExperimentSpec, env: Any) -> list[int]:
    if spec.env_kind == "split" and env.config.preset == "paper":
        return list(range(1, env.k_max + 1))
    return list(env.candidate_ks)


def _decision_model(env: Any) -> Any:
    """The wireless reward of every split given its quality, for UE budgets across the env's range (None
    for the paper preset, whose candidates move k rather than pick it)."""
    model = getattr(env, "model", None)
    if model is None or not hasattr(model, "decision_rewards"):
        return None
    budgets = np.linspace(*model.config.ue_budget_range, 3)
    return lambda value, quality: model.decision_rewards(value, quality, budgets)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _get(result: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    node: Any = result
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


# ------------------------------------------------------------------------------ the run
class TrainingRun:
    """One run of a spec in ``run_dir``; :meth:`run` does everything (see the module docstring).

    Args:
        spec: the validated spec.
        run_dir: output folder (default ``spec.out/spec.name``).
        resume: continue from the newest checkpoint in ``run_dir`` if there is one; False starts over.
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
        self.pool = None
        self.eval_pool = None
        self.loop = None
        self.loop_key = None
        self.algo = None
        self.history: list[dict[str, float]] = []
        self.state: dict[str, Any] = {}
        self.extra_evals = 0.0  # paper: grid points; model_free: evaluations before a resume
        self.extra_eval_s = 0.0
        self.start_time = time.perf_counter()
        self.wall_before = 0.0
        self._evaluator = None

    # -- progress -----------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        self.log(f"[{self.spec.name} {time.perf_counter() - self.start_time + self.wall_before:7.1f}s] {msg}")

    @property
    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.start_time

    # -- setup ----------------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any] | None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        if state.get("finished"):
            return state
        ckpt = state.get("checkpoint")
        return state if ckpt and Path(ckpt).exists() else None

    def _pool(self):
        from splitlab.mbrl.evaluators import EvaluationPool

        if self.pool is None:
            d = self.spec.dyna
            what = self.spec.quality.get("model", self.spec.quality["kind"])
            self._say(f"starting {d.evaluators} evaluator actor(s) for {what}")
            self.pool = EvaluationPool(self.spec.quality, n_actors=d.evaluators, num_cpus=d.evaluator_cpus)
        return self.pool

    def _surrogate_spec(self, path: Path) -> dict[str, Any]:
        return {"kind": "surrogate", "path": str(path.resolve()), "key": self.loop_key or self.spec.name}

    def _prepare_paper(self, resumed: dict | None) -> dict[str, Any]:
        from splitlab.envs.reward_models import make_reward_model
        from splitlab.mbrl.surrogate import SurrogateEnsemble, fit_on_grid

        spec = self.spec
        surrogate_path = self.run_dir / "surrogate.npz"
        grid_path = self.run_dir / "grid.json"
        if resumed and surrogate_path.exists():
            self.extra_evals = float(resumed.get("grid_points", 0))
            self.extra_eval_s = float(resumed.get("grid_eval_s", 0.0))
            self.surrogate = SurrogateEnsemble.load(surrogate_path)
            return self._surrogate_spec(surrogate_path)
        if spec.paper.grid is not None:
            grid_model = make_reward_model(spec.paper.grid)
            n_points = None
        else:
            grid_model, n_points = self._measure_grid(grid_path)
        ks = self._paper_ks(grid_model)
        self.surrogate, report, points = fit_on_grid(grid_model, spec.surrogate, ks=ks)
        self.extra_evals = float(n_points if n_points is not None else points)
        self.state["grid_points"] = self.extra_evals
        self.state["grid_eval_s"] = self.extra_eval_s
        self.surrogate.save(surrogate_path)
        self._say(f"surrogate fitted on {points} grid points: {report.describe()}")
        return self._surrogate_spec(surrogate_path)

    def _paper_ks(self, model: Any) -> list[int] | None:
        env = _build_env(self.spec, model)
        ks = _candidate_ks(self.spec, env)
        return ks

    def _measure_grid(self, grid_path: Path) -> tuple[Any, int]:
        """Measure ``paper.ks`` x ``paper.values`` with the pool; write grid.json in analyze's format."""
        from splitlab.envs.quality_grid import QualityGrid
        from splitlab.envs.reward_models import GridRewardModel
        from splitlab.envs.rewards import paper_k_max
        from splitlab.mbrl.evaluators import measure_grid

        spec, pool = self.spec, self._pool()
        ref = pool.reference()
        if spec.paper.ks is not None:
            ks = list(spec.paper.ks)
        else:
            ks = list(spec.env.get("candidate_ks") or ref["ks"])
            if spec.env.get("preset") == "paper":
                k_max = paper_k_max(ref["num_layers"], spec.env.get("k_max"))
                ks = list(range(1, k_max + 1))
        values = list(spec.paper.values) if spec.paper.values else list(np.linspace(*value_range(spec), 6))
        self._say(f"measuring the grid: {len(ks)} splits x {len(values)} channel values on the real model")
        grid = measure_grid(pool, ks, values)
        self.extra_eval_s = pool.eval_time_s
        grid_path.write_text(json.dumps(grid, indent=1))
        return GridRewardModel(QualityGrid.from_dict(grid, ref["channel"])), pool.real_evals

    def _prepare_dyna(self, resumed: dict | None) -> dict[str, Any]:
        from splitlab.mbrl.dyna import LOOPS, DynaLoop
        from splitlab.mbrl.surrogate import SurrogateEnsemble

        spec, pool = self.spec, self._pool()
        d = spec.dyna
        self.loop_key = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        surrogate_path = self.run_dir / "surrogate.npz"
        ref = pool.reference() if not resumed else None
        if resumed:
            with open(Path(resumed["checkpoint"]) / "mbrl_state.pkl", "rb") as f:
                saved = pickle.load(f)
            pool.set_state(saved["loop"]["pool"])
            ref = pool.reference()
        surrogate = SurrogateEnsemble(ref["num_layers"], ref["hidden_size"], ref["ppl_clean"], ref["channel"],
                                      ref["param"], ref["ks"], spec.surrogate)
        probe_env = _build_env(spec, surrogate)
        ks = _candidate_ks(spec, probe_env)
        self.loop = DynaLoop(surrogate, pool, ks, value_range(spec), d.initial_evals, d.evals_per_iter, d.budget,
                             d.candidates, seed=spec.algorithm.seed, decision=_decision_model(probe_env),
                             channel_sample=channel_sample(spec))
        if resumed:
            self.loop.set_state(saved["loop"])
        else:
            self._say(f"initial design: {d.initial_evals} real evaluations over k in {ks[0]}..{ks[-1]} x "
                      f"{self.loop.value_range[0]:.3g}..{self.loop.value_range[1]:.3g}")
            report = self.loop.initial_design()
            self._say(f"surrogate fitted on {len(self.loop.data_ppl)} points: {report.describe()}; "
                      f"{pool.real_evals} real evaluations")
        self.surrogate = surrogate
        surrogate.save(surrogate_path)
        LOOPS[self.loop_key] = self.loop
        return self._surrogate_spec(surrogate_path)

    # -- checkpoints --------------------------------------------------------------------------------
    def _checkpoint(self, iteration: int) -> Path:
        ckpt_root = self.run_dir / "checkpoints"
        ckpt = ckpt_root / f"iter_{iteration:06d}"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        self.algo.save_to_path(str((ckpt / "algorithm").resolve()))
        with open(ckpt / "mbrl_state.pkl", "wb") as f:
            pickle.dump({"loop": self.loop.get_state() if self.loop else None}, f)
        evals, seconds = self._model_free_evals()
        self.state.update({"iteration": iteration, "checkpoint": str(ckpt.resolve()), "history": self.history,
                           "wall_s": self.wall_s, "real_evals_offset": evals, "real_eval_s_offset": seconds})
        _atomic_json(self.run_dir / STATE_FILE, self.state)
        kept = sorted(p for p in ckpt_root.iterdir() if p.name.startswith("iter_"))
        for old in kept[: -self.spec.checkpoint.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return ckpt

    # -- metrics --------------------------------------------------------------------------------------
    def _model_free_evals(self) -> tuple[float, float]:
        """Real evaluations made inside the env runners (model-free live rewards), resumes included."""
        if self.spec.mode != "model_free" or self.algo is None:
            return 0.0, 0.0
        from splitlab.mbrl.rllib_env import process_stats

        group = self.algo.env_runner_group
        remote = group.num_remote_env_runners() > 0
        stats = group.foreach_env_runner(lambda r: process_stats(), local_env_runner=not remote)
        return (self.state.get("real_evals_offset_base", 0.0) + sum(s["mbrl/real_evals"] for s in stats),
                self.state.get("real_eval_s_offset_base", 0.0) + sum(s["mbrl/real_eval_time_s"] for s in stats))

    def _real_evals(self) -> dict[str, float]:
        if self.spec.mode == "dyna":
            return {k: v for k, v in self.loop.metrics().items()}
        if self.spec.mode == "paper":
            return {"mbrl/real_evals": self.extra_evals, "mbrl/real_eval_time_s": self.extra_eval_s}
        evals, seconds = self._model_free_evals()
        return {"mbrl/real_evals": evals, "mbrl/real_eval_time_s": seconds}

    def _iteration_metrics(self, it: int, result: Mapping[str, Any], seconds: float, steps_before: float) -> dict:
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

        steps = float(_get(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, default=0.0) or 0.0)
        m: dict[str, float] = {"train/iteration": float(it), "train/env_steps": steps,
                               "time/iteration_s": seconds, "time/wall_s": self.wall_s,
                               "perf/env_steps_per_s": (steps - steps_before) / seconds if seconds > 0 else 0.0}
        ret = _get(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
        if ret is not None and np.isfinite(ret):
            m["policy/train_return"] = float(ret)
        sampling = _get(result, ENV_RUNNER_RESULTS, "sample")
        if isinstance(sampling, (int, float)) and sampling > 0:
            m["perf/sample_s"] = float(sampling)
        module_id = "shared" if self.spec.env_kind == "multi_user" else "default_policy"
        for src, dst in (("policy_loss", "losses/policy"), ("vf_loss", "losses/value"), ("entropy", "losses/entropy"),
                         ("qf_loss", "losses/q")):
            v = _get(result, "learners", module_id, src)
            if isinstance(v, (int, float)) and np.isfinite(v):
                m[dst] = float(v)
        if self.spec.mode == "dyna":
            m.update({k: float(v) for k, v in (result.get("splitlab") or {}).items()})
        else:
            m.update(self._real_evals())
        if self.spec.mode == "model_free":
            m["mbrl/reward_queries"] = steps
        if self.spec.mode == "paper" and self.surrogate.report is not None:
            m.update(self.surrogate.report.as_metrics())
        if self.spec.evaluation.every and it % self.spec.evaluation.every == 0:
            m.update(self._evaluate(final=False)[0])
        return m

    # -- evaluation -------------------------------------------------------------------------------------
    def _truth(self) -> Any:
        from splitlab.envs.reward_models import make_reward_model
        from splitlab.mbrl.evaluators import EvaluationPool, PoolRewardModel

        truth = self.spec.evaluation.truth
        if truth != "quality":
            return make_reward_model(truth)
        if self.spec.quality["kind"] != "live":
            return make_reward_model(self.spec.quality)
        if self.eval_pool is None:
            self.eval_pool = self.pool.sibling() if self.pool is not None else EvaluationPool(
                self.spec.quality, n_actors=self.spec.dyna.evaluators, num_cpus=self.spec.dyna.evaluator_cpus)
        return PoolRewardModel(self.eval_pool)

    def _evaluate(self, final: bool) -> tuple[dict[str, float], dict[str, Any]]:
        """Held-out scores: the greedy policy always; baselines once (cached, the episodes never change)."""
        from splitlab.mbrl import evaluation as ev
        from splitlab.mbrl.agents import greedy_policy, policy_module

        spec = self.spec
        if self._evaluator is None:
            self._evaluator = {"env": _build_env(spec, self._truth()), "baselines": None}
        env = self._evaluator["env"]
        module = policy_module(self.algo, spec.env_kind)
        e = spec.evaluation
        if spec.env_kind == "multi_user":
            run, baselines = ev.evaluate_multi_user, ev.multi_user_baselines(env, seed=e.seed)
            policy = {"policy": ev.module_multi_act(module)}
        else:
            run, baselines = ev.evaluate_split_env, ev.split_env_baselines(env, seed=e.seed)
            policy = {"policy": greedy_policy(module)}
        cached = self._evaluator["baselines"] or {}
        wanted = baselines if (final and e.baselines) else {n: baselines[n] for n in ("oracle", "random")}
        todo = {n: p for n, p in wanted.items() if n not in cached}
        if todo:
            cached.update(run(env, todo, e.episodes, e.seed))
            self._evaluator["baselines"] = cached
        results = {**run(env, policy, e.episodes, e.seed), **{n: cached[n] for n in wanted}}
        oracle, random = results["oracle"].mean, results["random"].mean
        pol = results["policy"]
        metrics = {"policy/return": pol.mean, "policy/return_vs_oracle": ev.score_vs_oracle(pol.mean, oracle, random),
                   "policy/return_ratio": ev.return_ratio(pol.mean, oracle), "policy/mean_k": pol.mean_k,
                   "oracle/return": oracle, "random/return": random}
        truth_model = env.reward_model
        metrics["eval/real_evals"] = float(truth_model.real_evals if self.eval_pool is not None else 0.0)
        return metrics, results

    # -- the whole run ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        spec = self.spec
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = self._load_state() if self.resume else None
        if resumed and resumed.get("finished") and (self.run_dir / RESULTS_FILE).exists():
            self._say("already finished; results.json holds its results (rerun with --restart to train again)")
            return _result_from_file(self.run_dir)
        if not resumed:
            for stale in ("checkpoints", STATE_FILE, RESULTS_FILE):
                p = self.run_dir / stale
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        (self.run_dir / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        if resumed:
            self.state = dict(resumed)
            self.history = list(resumed.get("history", []))
            self.wall_before = float(resumed.get("wall_s", 0.0))
            self.state["real_evals_offset_base"] = float(resumed.get("real_evals_offset", 0.0))
            self.state["real_eval_s_offset_base"] = float(resumed.get("real_eval_s_offset", 0.0))
            self._say(f"resuming after iteration {resumed['iteration']} from {resumed['checkpoint']}")
        started = ensure_ray()
        run = None
        try:
            run = self._start_tracking()
            result = self._train_and_evaluate(resumed)
            result.run_id = run
            return result
        finally:
            self._teardown(started)

    def _start_tracking(self) -> str | None:
        if not self.spec.tracking.enabled:
            return None
        import mlflow

        from splitlab.platform.tracking import use_tracking

        use_tracking(self.spec.tracking.uri, self.spec.tracking.experiment)
        run_id = self.state.get("mlflow_run_id")
        if run_id:
            mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=self.spec.name)
            run_id = run.info.run_id
            self.state["mlflow_run_id"] = run_id
            mlflow.set_tags({"splitlab.kind": "train", "splitlab.mode": self.spec.mode,
                             "splitlab.algorithm": self.spec.algorithm.name})
            params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                      for k, v in _flatten(self.spec.to_dict()).items()}
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        return run_id

    def _train_and_evaluate(self, resumed: dict | None) -> TrainResult:
        from splitlab.mbrl.agents import algorithm_config, build_algorithm
        from splitlab.mbrl.dyna import MBRL_KEY, DynaCallback, broadcast

        spec = self.spec
        if spec.mode == "paper":
            reward = self._prepare_paper(resumed)
        elif spec.mode == "dyna":
            reward = self._prepare_dyna(resumed)
        else:
            reward = dict(spec.quality)
            self.surrogate = None
        env_config = _env_config(spec, reward)
        if self.loop_key:
            env_config[MBRL_KEY] = {"loop": self.loop_key}
        config = algorithm_config(spec.algorithm, env_config, spec.env_kind,
                                  DynaCallback if spec.mode == "dyna" else None)
        self._say(f"building {spec.algorithm.name.upper()} ({spec.mode}) with {spec.algorithm.num_env_runners} env "
                  f"runner(s) x {spec.algorithm.envs_per_env_runner} env(s)")
        self.algo = build_algorithm(config, self.run_dir / "rllib")
        start_it = 0
        if resumed:
            self.algo.restore_from_path(str(Path(resumed["checkpoint"]) / "algorithm"))
            if self.loop is not None:
                broadcast(self.algo, self.loop.surrogate)
            start_it = int(resumed["iteration"])
        self._log_setup_metrics(start_it)
        steps_before = float(self.history[-1].get("train/env_steps", 0.0)) if self.history else 0.0
        for it in range(start_it + 1, spec.algorithm.iterations + 1):
            t0 = time.perf_counter()
            result = self.algo.train()
            m = self._iteration_metrics(it, result, time.perf_counter() - t0, steps_before)
            steps_before = m["train/env_steps"]
            self.history.append(m)
            self._say(_progress_line(it, spec.algorithm.iterations, m))
            self._log_metrics(m, it)
            if it % spec.checkpoint.every == 0 or it == spec.algorithm.iterations:
                self._checkpoint(it)
            if self.report is not None:
                self.report(dict(m))
        return self._finish()

    def _log_setup_metrics(self, step: int) -> None:
        if self.surrogate is not None and self.surrogate.report is not None and step == 0:
            self._log_metrics({**self.surrogate.report.as_metrics(), **self._real_evals()}, 0)

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.spec.tracking.enabled:
            return
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and np.isfinite(v)}
        mlflow.log_metrics(clean, step=step)

    def _finish(self) -> TrainResult:
        from splitlab.mbrl import evaluation as ev
        from splitlab.mbrl.agents import policy_module

        spec = self.spec
        self._say(f"evaluating on {spec.evaluation.episodes} held-out episodes against the baselines")
        metrics, results = self._evaluate(final=True)
        oracle, random = metrics["oracle/return"], metrics["random/return"]
        policies = {name: {**r.summary(), "return_vs_oracle": ev.score_vs_oracle(r.mean, oracle, random),
                           "return_ratio": ev.return_ratio(r.mean, oracle)} for name, r in results.items()}
        files: dict[str, str] = {}
        param = "rho" if spec.env.get("preset") == "paper" else "snr_db"
        files["k_plot"] = str(ev.plot_k_vs_channel(results, self.run_dir / "k_vs_channel.png", param,
                                                   title=f"{spec.name}: chosen split vs channel"))
        files["learning_curve"] = str(_plot_learning_curve(self.history, self.run_dir / "learning_curve.png",
                                                           metrics, spec.name))
        module = policy_module(self.algo, spec.env_kind)
        policy_dir = self.run_dir / "policy"
        shutil.rmtree(policy_dir, ignore_errors=True)
        module.save_to_path(str(policy_dir.resolve()))
        env = self._evaluator["env"]
        preset = spec.env.get("preset", "wireless")
        # What a server needs to act with this policy exactly as it was trained (splitlab.serve.policy).
        observer = env.model.observer.to_dict() if spec.env_kind == "split" and preset == "wireless" else None
        (self.run_dir / "policy.json").write_text(json.dumps({
            "candidate_ks": _candidate_ks(spec, env), "num_layers": env.num_layers, "env": spec.env_kind,
            "preset": preset, "observer": observer}, indent=1))
        files["policy"] = str(policy_dir)
        if self.surrogate is not None:
            files["surrogate"] = str(self.run_dir / "surrogate.npz")
            if self.loop is not None:
                self.surrogate.save(self.run_dir / "surrogate.npz")
        final = {**(self.history[-1] if self.history else {}), **self._real_evals(), **metrics,
                 "time/wall_s": self.wall_s}
        if self.surrogate is not None and self.surrogate.report is not None:
            final.update(self.surrogate.report.as_metrics())
        final = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
        _write_history(self.history, self.run_dir / "history.csv")
        out = {"name": spec.name, "mode": spec.mode, "algorithm": spec.algorithm.name, "metrics": final,
               "policies": policies, "history": self.history, "files": files}
        _atomic_json(self.run_dir / RESULTS_FILE, out)
        files["results"] = str(self.run_dir / RESULTS_FILE)
        self.state.update({"finished": True, "history": self.history, "wall_s": self.wall_s})
        _atomic_json(self.run_dir / STATE_FILE, self.state)
        last = self.history[-1] if self.history else {}
        self._log_metrics({k: v for k, v in final.items() if last.get(k) != v}, spec.algorithm.iterations)
        self._log_artifacts(files)
        self._say(f"policy return {metrics['policy/return']:.3f} ({metrics['policy/return_vs_oracle']:.3f} of the "
                  f"way from random to oracle {oracle:.3f}); real evaluations {final.get('mbrl/real_evals', 0):.0f}")
        return TrainResult(self.run_dir, final, policies, self.history, None, files)

    def _log_artifacts(self, files: Mapping[str, str]) -> None:
        if not self.spec.tracking.enabled:
            return
        import mlflow

        for name in ("spec.yaml", "history.csv", "surrogate.npz", "grid.json", "policy.json"):
            p = self.run_dir / name
            if p.exists():
                mlflow.log_artifact(str(p))
        for role in ("k_plot", "learning_curve", "results"):
            if role in files:
                mlflow.log_artifact(files[role])
        mlflow.log_artifacts(files["policy"], artifact_path="policy")

    def _teardown(self, started_ray: bool) -> None:
        import ray

        if self.spec.tracking.enabled:
            import mlflow

            if mlflow.active_run() is not None:
                status = "FINISHED" if self.state.get("finished") else "KILLED"
                mlflow.end_run(status=status)
        if self.algo is not None:
            self.algo.stop()
        if self.loop_key:
            from splitlab.mbrl.dyna import LOOPS

            LOOPS.pop(self.loop_key, None)
        for pool in (self.eval_pool, self.pool):
            if pool is not None:
                pool.shutdown()
        if started_ray:
            ray.shutdown()


def _progress_line(it: int, total: int, m: Mapping[str, float]) -> str:
    parts = [f"iter {it}/{total}"]
    if "policy/train_return" in m:
        parts.append(f"train return {m['policy/train_return']:.3f}")
    if "policy/return_vs_oracle" in m:
        parts.append(f"held-out vs oracle {m['policy/return_vs_oracle']:.3f}")
    parts.append(f"real evals {m.get('mbrl/real_evals', 0):.0f}")
    if "mbrl/surrogate_mae" in m:
        parts.append(f"surrogate MAE {m['mbrl/surrogate_mae']:.4f}")
    parts.append(f"{m['perf/env_steps_per_s']:.0f} steps/s")
    return ", ".join(parts)


def _write_history(history: list[dict[str, float]], path: Path) -> None:
    keys = sorted({k for row in history for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _plot_learning_curve(history: list[dict[str, float]], path: Path, final: Mapping[str, float], name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [h.get("train/env_steps", i) for i, h in enumerate(history)]
    if any("policy/train_return" in h for h in history):
        ax.plot(steps, [h.get("policy/train_return", np.nan) for h in history],
                label="training return (agent's reward)")
    if any("policy/return" in h for h in history):
        ax.plot(steps, [h.get("policy/return", np.nan) for h in history], marker="o",
                label="held-out return (true reward)")
    for key, style in (("oracle/return", "--"), ("random/return", ":")):
        if key in final:
            ax.axhline(final[key], ls=style, color="k", lw=1, label=key.split("/")[0])
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(f"{name}: learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _result_from_file(run_dir: Path) -> TrainResult:
    data = json.loads((run_dir / RESULTS_FILE).read_text())
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).exists() else {}
    return TrainResult(run_dir, data["metrics"], data["policies"], data["history"], state.get("mlflow_run_id"),
                       data["files"])


# ------------------------------------------------------------------------------ entry points
def run_training(spec: ExperimentSpec | Mapping[str, Any], run_dir: str | Path | None = None, resume: bool = True,
                 report: Callable[[Mapping[str, Any]], None] | None = None,
                 log: Callable[[str], None] | None = print) -> TrainResult:
    """Train, evaluate and log one spec (see the module docstring); resumes an interrupted run in ``run_dir``."""
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
