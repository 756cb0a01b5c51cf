"""Where the agent's rewards come from: one class per training mode, behind :class:`TrainingMode`.

- :class:`PaperMode`: fit the surrogate ensemble on a measured grid (given, or measured now with the
  evaluator pool), then train on surrogate rewards only.
- :class:`DynaMode`: measure every split at a lattice of channel values with the pool, fit, train; after
  every iteration the run's :class:`~splitlab.mbrl.dyna.DynaLoop` refreshes the surrogate from visited
  points within the real-evaluation budget and pushes it to every env runner.
- :class:`ModelFreeMode`: the env runners score every step with the real quality itself (a live LLM
  reward model is loaded once per runner and caches its points).

Each mode prepares the reward spec the env runners score with, does its work after each iteration,
reports its metrics, and saves and restores its state: small counters go into the run's
``state.json`` (:meth:`TrainingMode.counters`), anything larger into the checkpoint folder.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitlab.platform.run_env import build_env, candidate_ks, channel_sample, decision_model, value_range
from splitlab.platform.run_state import RunState, atomic_json
from splitlab.platform.spec import ExperimentSpec

SURROGATE_FILE = "surrogate.npz"


class TrainingMode:
    """One mode of a training run (see the module docstring); the training loop calls, in order,
    :meth:`prepare`, :meth:`restored` (on resume), then per iteration :meth:`refresh` and
    :meth:`iteration_metrics`, :meth:`save` and :meth:`counters` at checkpoints, and :meth:`close`."""

    name = ""

    def __init__(self, spec: ExperimentSpec, run_dir: Path, say: Callable[[str], None]) -> None:
        self.spec, self.run_dir, self.say = spec, Path(run_dir), say
        self.pool = None
        """The real-LLM evaluator pool (an ``EvaluationPool``) when the mode uses one; the held-out
        evaluation shares its actors."""
        self.surrogate = None
        """The ``SurrogateEnsemble`` the agent trains on (None: model-free)."""
        self.run_key = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        """Tells this run's surrogate apart from another run's in an env runner's reward-model cache."""

    def _start_pool(self):
        from splitlab.mbrl.evaluators import EvaluationPool

        if self.pool is None:
            d = self.spec.dyna
            what = getattr(self.spec.quality, "model", self.spec.quality.kind)
            self.say(f"starting {d.evaluators} evaluator actor(s) for {what}")
            self.pool = EvaluationPool(self.spec.quality, n_actors=d.evaluators, num_cpus=d.evaluator_cpus)
        return self.pool

    def _surrogate_reward(self) -> dict[str, Any]:
        path = self.run_dir / SURROGATE_FILE
        return {"kind": "surrogate", "path": str(path.resolve()), "key": self.run_key}

    def prepare(self, resumed: RunState | None, checkpoint: Path | None) -> dict[str, Any]:
        """Get the rewards ready (from ``resumed`` and its ``checkpoint`` folder on a resume); returns the
        reward-model spec the env runners score with."""
        raise NotImplementedError

    def restored(self, algo: Any) -> None:
        """After the algorithm was restored from a checkpoint."""

    def refresh(self, algo: Any) -> dict[str, float]:
        """Work after each ``algo.train()`` that belongs to the iteration (timed with it); its metrics."""
        return {}

    def real_evals(self, algo: Any) -> dict[str, float]:
        """``mbrl/real_evals`` and ``mbrl/real_eval_time_s`` the training used so far (resumes included)."""
        raise NotImplementedError

    def iteration_metrics(self, algo: Any, env_steps: float, refreshed: dict[str, float]) -> dict[str, float]:
        """The mode's metrics of one iteration (``refreshed``: what :meth:`refresh` returned)."""
        return self.real_evals(algo)

    def save(self, checkpoint: Path) -> None:
        """Write the mode's state into a checkpoint folder (the algorithm is saved beside it)."""

    def counters(self, algo: Any) -> dict[str, float]:
        """Small state for ``state.json`` (read back from ``resumed.mode`` in :meth:`prepare`)."""
        return {}

    def write_outputs(self) -> dict[str, str]:
        """Final files in the run folder by role (the surrogate)."""
        if self.surrogate is None:
            return {}
        return {"surrogate": str(self.run_dir / SURROGATE_FILE)}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


class PaperMode(TrainingMode):
    """The paper's setup: the surrogate fitted once on a measured grid; no real evaluation while training."""

    name = "paper"

    def __init__(self, spec: ExperimentSpec, run_dir: Path, say: Callable[[str], None]) -> None:
        super().__init__(spec, run_dir, say)
        self.grid_points = 0.0
        self.grid_eval_s = 0.0

    def prepare(self, resumed: RunState | None, checkpoint: Path | None) -> dict[str, Any]:
        from splitlab.envs.reward_models import make_reward_model
        from splitlab.mbrl.surrogate import SurrogateEnsemble, fit_on_grid

        spec, path = self.spec, self.run_dir / SURROGATE_FILE
        if resumed is not None and path.exists():
            self.grid_points = float(resumed.mode.get("grid_points", 0))
            self.grid_eval_s = float(resumed.mode.get("grid_eval_s", 0.0))
            self.surrogate = SurrogateEnsemble.load(path)
            return self._surrogate_reward()
        if spec.paper.grid is not None:
            grid_model, n_points = make_reward_model(spec.paper.grid), None
        else:
            grid_model, n_points = self._measure_grid(self.run_dir / "grid.json")
        ks = candidate_ks(spec, build_env(spec, grid_model))
        self.surrogate, report, points = fit_on_grid(grid_model, spec.surrogate, ks=ks)
        self.grid_points = float(n_points if n_points is not None else points)
        self.surrogate.save(path)
        self.say(f"surrogate fitted on {points} grid points: {report.describe()}")
        return self._surrogate_reward()

    def _measure_grid(self, grid_path: Path) -> tuple[Any, int]:
        """Measure ``paper.ks`` x ``paper.values`` with the pool; write grid.json in analyze's format."""
        from splitlab.envs.quality_grid import QualityGrid
        from splitlab.envs.reward_models import GridRewardModel
        from splitlab.envs.rewards import paper_k_max
        from splitlab.mbrl.evaluators import measure_grid

        spec, pool = self.spec, self._start_pool()
        ref = pool.reference()
        if spec.paper.ks is not None:
            ks = list(spec.paper.ks)
        elif spec.env.preset == "paper":
            ks = list(range(1, paper_k_max(ref["num_layers"], spec.env.k_max) + 1))
        else:
            ks = list(spec.env.candidate_ks or ref["ks"])
        values = list(spec.paper.values) if spec.paper.values else list(np.linspace(*value_range(spec), 6))
        self.say(f"measuring the grid: {len(ks)} splits x {len(values)} channel values on the real model")
        grid = measure_grid(pool, ks, values)
        self.grid_eval_s = pool.eval_time_s
        grid_path.write_text(json.dumps(grid, indent=1))
        return GridRewardModel(QualityGrid.from_dict(grid, ref["channel"])), pool.real_evals

    def real_evals(self, algo: Any) -> dict[str, float]:
        return {"mbrl/real_evals": self.grid_points, "mbrl/real_eval_time_s": self.grid_eval_s}

    def iteration_metrics(self, algo: Any, env_steps: float, refreshed: dict[str, float]) -> dict[str, float]:
        report = self.surrogate.report
        return {**self.real_evals(algo), **(report.as_metrics() if report is not None else {})}

    def counters(self, algo: Any) -> dict[str, float]:
        return {"grid_points": self.grid_points, "grid_eval_s": self.grid_eval_s}


class DynaMode(TrainingMode):
    """Surrogate rewards refreshed after every iteration by the run's Dyna loop (called directly)."""

    name = "dyna"
    LOOP_FILE = "dyna_loop.json"

    def __init__(self, spec: ExperimentSpec, run_dir: Path, say: Callable[[str], None]) -> None:
        super().__init__(spec, run_dir, say)
        self.loop = None

    def prepare(self, resumed: RunState | None, checkpoint: Path | None) -> dict[str, Any]:
        from splitlab.mbrl.dyna import DynaLoop
        from splitlab.mbrl.surrogate import SurrogateEnsemble

        spec, pool, d = self.spec, self._start_pool(), self.spec.dyna
        saved = json.loads((checkpoint / self.LOOP_FILE).read_text()) if checkpoint is not None else None
        if saved is not None:
            pool.set_state(saved["pool"])  # the reference comes back with it: no evaluation below
        ref = pool.reference()
        surrogate = SurrogateEnsemble(ref["num_layers"], ref["hidden_size"], ref["ppl_clean"], ref["channel"],
                                      ref["param"], ref["ks"], spec.surrogate)
        probe_env = build_env(spec, surrogate)
        ks = candidate_ks(spec, probe_env)
        self.loop = DynaLoop(surrogate, pool, ks, value_range(spec), d.initial_evals, d.evals_per_iter, d.budget,
                             d.candidates, seed=spec.algorithm.seed, decision=decision_model(probe_env),
                             channel_sample=channel_sample(spec))
        if saved is not None:
            fitted = SurrogateEnsemble.load(checkpoint / SURROGATE_FILE)
            self.loop.set_state({**saved, "surrogate": fitted.get_state()})
            surrogate.report = fitted.report
        else:
            self.say(f"initial design: {d.initial_evals} real evaluations over k in {ks[0]}..{ks[-1]} x "
                     f"{self.loop.value_range[0]:.3g}..{self.loop.value_range[1]:.3g}")
            report = self.loop.initial_design()
            self.say(f"surrogate fitted on {len(self.loop.data_ppl)} points: {report.describe()}; "
                     f"{pool.real_evals} real evaluations")
        self.surrogate = surrogate
        surrogate.save(self.run_dir / SURROGATE_FILE)
        return self._surrogate_reward()

    def restored(self, algo: Any) -> None:
        from splitlab.mbrl.dyna import broadcast

        broadcast(algo, self.surrogate)

    def refresh(self, algo: Any) -> dict[str, float]:
        return self.loop.after_iteration(algo)

    def real_evals(self, algo: Any) -> dict[str, float]:
        return dict(self.loop.metrics())

    def iteration_metrics(self, algo: Any, env_steps: float, refreshed: dict[str, float]) -> dict[str, float]:
        return {k: float(v) for k, v in refreshed.items()}

    def save(self, checkpoint: Path) -> None:
        state = self.loop.get_state()
        state.pop("surrogate")  # weights go to an .npz next to it
        self.surrogate.save(checkpoint / SURROGATE_FILE)
        atomic_json(checkpoint / self.LOOP_FILE, state)

    def write_outputs(self) -> dict[str, str]:
        self.surrogate.save(self.run_dir / SURROGATE_FILE)
        return super().write_outputs()


class ModelFreeMode(TrainingMode):
    """Every step rewarded with the real quality inside the env runners; evaluations counted there.

    ``mbrl/real_evals`` counts the distinct points over all env runners, as one shared cache would have
    measured them (each runner caches its own, so their sum, ``mbrl/real_evals_runner_sum``, counts a point
    once per runner that met it); ``mbrl/real_eval_time_s`` is what the runners spent.
    """

    name = "model_free"

    def __init__(self, spec: ExperimentSpec, run_dir: Path, say: Callable[[str], None]) -> None:
        super().__init__(spec, run_dir, say)
        self.evals_before = 0.0
        self.eval_s_before = 0.0
        self.points: set[tuple[int, float]] = set()

    def prepare(self, resumed: RunState | None, checkpoint: Path | None) -> dict[str, Any]:
        if resumed is not None:  # runners start with empty counters: add what the earlier processes counted
            self.evals_before = float(resumed.mode.get("real_evals_runner_sum", resumed.mode.get("real_evals", 0.0)))
            self.eval_s_before = float(resumed.mode.get("real_eval_time_s", 0.0))
            self.points = {(int(k), float(v)) for k, v in resumed.mode.get("points", [])}
        return self.spec.quality.to_dict()

    def real_evals(self, algo: Any) -> dict[str, float]:
        from splitlab.mbrl.rllib_env import process_points, process_stats

        if algo is None:
            return {"mbrl/real_evals": float(len(self.points)), "mbrl/real_evals_runner_sum": self.evals_before,
                    "mbrl/real_eval_time_s": self.eval_s_before}
        group = algo.env_runner_group
        remote = group.num_remote_env_runners() > 0
        stats = group.foreach_env_runner(lambda r: process_stats(), local_env_runner=not remote)
        for points in group.foreach_env_runner(lambda r: process_points(), local_env_runner=not remote):
            self.points.update((int(k), float(v)) for k, v in points)
        return {"mbrl/real_evals": float(len(self.points)),
                "mbrl/real_evals_runner_sum": self.evals_before + sum(s["mbrl/real_evals"] for s in stats),
                "mbrl/real_eval_time_s": self.eval_s_before + sum(s["mbrl/real_eval_time_s"] for s in stats)}

    def iteration_metrics(self, algo: Any, env_steps: float, refreshed: dict[str, float]) -> dict[str, float]:
        return {**self.real_evals(algo), "mbrl/reward_queries": env_steps}

    def counters(self, algo: Any) -> dict[str, Any]:
        m = self.real_evals(algo)
        return {"real_evals": m["mbrl/real_evals"], "real_evals_runner_sum": m["mbrl/real_evals_runner_sum"],
                "real_eval_time_s": m["mbrl/real_eval_time_s"], "points": [list(p) for p in sorted(self.points)]}


MODES: dict[str, type[TrainingMode]] = {m.name: m for m in (PaperMode, DynaMode, ModelFreeMode)}
"""``spec.mode`` -> its class."""


def make_mode(spec: ExperimentSpec, run_dir: Path, say: Callable[[str], None]) -> TrainingMode:
    """The mode ``spec.mode`` names, for a run in ``run_dir``."""
    return MODES[spec.mode](spec, run_dir, say)
