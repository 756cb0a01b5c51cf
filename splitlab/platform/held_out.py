"""Scoring a training run's policy: the greedy policy, every fixed k, random and the oracle on held-out
channel traces with the true reward (``evaluation:`` section of the spec).

The truth is ``evaluation.truth``, or the spec's quality itself; a live LLM quality is measured on a
sibling of the training's evaluator pool (same actors, counters of its own, reported apart as
``eval/real_evals``). The baselines' scores are computed once per run: the episodes never change.
"""
from __future__ import annotations

from typing import Any

from splitlab.platform.run_env import build_env
from splitlab.platform.spec import ExperimentSpec
from splitlab.progress import progress_bar


class HeldOutEvaluation:
    """The held-out scoring of one run (see the module docstring).

    Args:
        spec: the run's spec.
        training_pool: the training's ``EvaluationPool`` (shared actors for a live truth), or None.
    """

    def __init__(self, spec: ExperimentSpec, training_pool: Any = None) -> None:
        self.spec, self.training_pool = spec, training_pool
        self.pool = None
        self._env = None
        self.baselines: dict[str, Any] = {}

    def _truth(self) -> Any:
        from splitlab.envs.reward_models import make_reward_model
        from splitlab.mbrl.evaluators import EvaluationPool, PoolRewardModel

        truth = self.spec.evaluation.truth
        if truth != "quality":
            return make_reward_model(truth)
        if self.spec.quality.kind != "live":
            return make_reward_model(self.spec.quality)
        if self.pool is None:
            self.pool = self.training_pool.sibling() if self.training_pool is not None else EvaluationPool(
                self.spec.quality, n_actors=self.spec.dyna.evaluators, num_cpus=self.spec.dyna.evaluator_cpus)
        return PoolRewardModel(self.pool)

    @property
    def env(self) -> Any:
        """The env the policies are scored in (scoring with the truth)."""
        if self._env is None:
            self._env = build_env(self.spec, self._truth())
        return self._env

    def score(self, algo: Any, final: bool) -> tuple[dict[str, float], dict[str, Any]]:
        """Held-out metrics and per-policy results: the greedy policy always; oracle and random (every
        baseline when ``final`` and ``evaluation.baselines``) once, then from the cache."""
        from splitlab.mbrl import evaluation as ev
        from splitlab.mbrl.agents import greedy_policy, policy_module

        spec, env, e = self.spec, self.env, self.spec.evaluation
        module = policy_module(algo, spec.env_kind)
        if spec.env_kind == "multi_user":
            run, baselines = ev.evaluate_multi_user, ev.multi_user_baselines(env, seed=e.seed)
            policy = {"policy": ev.module_multi_act(module)}
        else:
            run, baselines = ev.evaluate_split_env, ev.split_env_baselines(env, seed=e.seed)
            policy = {"policy": greedy_policy(module)}
        wanted = baselines if (final and e.baselines) else {n: baselines[n] for n in ("oracle", "random")}
        todo = {n: p for n, p in wanted.items() if n not in self.baselines}
        results = {}
        # scoring with a live truth can take minutes (every candidate split at every SNR the traces visit)
        with progress_bar((len(todo) + 1) * e.episodes, f"scoring {len(todo) + 1} policies", "episode") as bar:
            for name, pol in {**policy, **todo}.items():
                bar.set_postfix_str(name)
                results.update(run(env, {name: pol}, e.episodes, e.seed, on_episode=lambda: bar.update(1)))
        self.baselines.update({n: results[n] for n in todo})
        results.update({n: self.baselines[n] for n in wanted})
        oracle, random = results["oracle"].mean, results["random"].mean
        pol = results["policy"]
        metrics = {"policy/return": pol.mean, "policy/return_vs_oracle": ev.score_vs_oracle(pol.mean, oracle, random),
                   "policy/return_ratio": ev.return_ratio(pol.mean, oracle), "policy/mean_k": pol.mean_k,
                   "oracle/return": oracle, "random/return": random,
                   "eval/real_evals": float(env.reward_model.real_evals if self.pool is not None else 0.0)}
        if self.pool is not None:  # the truth's measurement store: eval/store_hits, eval/store_hit_rate, ...
            metrics.update({f"eval/{k.replace('/', '_')}": v for k, v in self.pool.store_stats().items()})
        return metrics, results

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
