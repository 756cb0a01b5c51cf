"""The Dyna machinery on Ray and RLlib: evaluator pool, weight broadcast, budgets, training runs, resume.

One embedded Ray (127.0.0.1, 2 CPUs) for the module; tiny models and small batches throughout.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from splitlab.platform.spec import ExperimentSpec

KS = [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
SMALL_ALGO = {"iterations": 3, "num_env_runners": 1, "envs_per_env_runner": 4, "train_batch_size": 400,
              "minibatch_size": 200, "num_epochs": 3, "lr": 0.003, "gamma": 0.0, "hidden": [32, 32],
              "env_runner_cpus": 0.25}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from splitlab.platform.ray_runtime import ensure_ray

    ensure_ray(2)
    yield ray
    ray.shutdown()


def spec(tmp_path, **sections) -> ExperimentSpec:
    raw = {"name": "t", "mode": "dyna", "quality": {"kind": "synthetic", "channel": "awgn"},
           "env": {"preset": "wireless", "candidate_ks": KS, "episode_len": 20,
                   "dynamics": {"kind": "gauss_markov", "mean_db": 12.0, "std_db": 8.0}},
           "algorithm": copy.deepcopy(SMALL_ALGO), "surrogate": {"epochs": 300},
           "dyna": {"initial_evals": 8, "evals_per_iter": 3, "budget": 14},
           "evaluation": {"episodes": 4}, "tracking": {"enabled": False}, "out": str(tmp_path)}
    for key, value in sections.items():
        merge = key in ("algorithm", "dyna", "evaluation", "surrogate") and isinstance(value, dict)
        raw[key] = {**raw[key], **value} if merge else value
    return ExperimentSpec.from_dict(raw)


def test_evaluation_pool_caches_counts_and_matches_the_model(ray_local):
    from splitlab.envs import LiveLLMRewardModel
    from splitlab.mbrl.evaluators import EvaluationPool, PoolRewardModel

    q = {"kind": "live", "model": "tiny-gpt2", "n_tokens": 64, "window": 32, "decimals": 1}
    with EvaluationPool(q, n_actors=2) as pool:
        ppl = pool.evaluate([(0, 10.0), (2, 10.04), (2, 10.0), (4, 5.0)])
        assert pool.real_evals == 3 and pool.cache_hits == 1 and ppl[1] == ppl[2]
        assert pool.eval_time_s > 0 and pool.wall_s > 0
        local = LiveLLMRewardModel("tiny-gpt2", n_tokens=64, window=32, decimals=1)
        assert ppl[3] == pytest.approx(local.quality(4, 5.0), rel=1e-6)  # same point, same noise seed
        ref = pool.reference()
        assert pool.real_evals == 4 and ref["num_layers"] == 4 and ref["param"] == "snr_db"
        sibling = PoolRewardModel(pool.sibling())
        assert sibling.quality(4, 5.0) == ppl[3] and sibling.real_evals == 0
        assert sibling.quality_table([0, 1], 7.0).shape == (2,) and sibling.real_evals == 2
        assert pool.real_evals == 4
        grid = pool.evaluate_grid([0, 4], [5.0, 12.0])  # shares the heads; same noise seeds as quality()
        assert grid.shape == (2, 2) and grid[1, 0] == ppl[3] and pool.real_evals == 7
        assert grid[0, 1] == pytest.approx(local.quality(0, 12.0), rel=1e-6)


def test_weight_broadcast_reaches_every_env_runner(ray_local, tmp_path):
    from splitlab.envs import GridRewardModel, QualityGrid, synthetic_grid
    from splitlab.mbrl.agents import algorithm_config, build_algorithm
    from splitlab.mbrl.dyna import broadcast
    from splitlab.mbrl.rllib_env import env_fingerprints
    from splitlab.mbrl.surrogate import SurrogateEnsemble, fit_on_grid
    from splitlab.platform.spec import AlgorithmSpec

    grid = GridRewardModel(QualityGrid.from_dict(synthetic_grid("awgn"), "awgn"))
    old = SurrogateEnsemble.like(grid, {"members": 2, "hidden": [16, 16], "epochs": 50})
    path = old.save(tmp_path / "s.npz")
    algo_spec = AlgorithmSpec(**{**SMALL_ALGO, "num_env_runners": 2, "envs_per_env_runner": 3})
    env_config = {"preset": "wireless", "candidate_ks": KS, "reward_model": {"kind": "surrogate", "path": str(path)}}
    algo = build_algorithm(algorithm_config(algo_spec, env_config), tmp_path / "rllib")
    try:
        group = algo.env_runner_group
        before = group.foreach_env_runner(env_fingerprints, local_env_runner=False)
        assert len(before) == 2 and all(fp == [old.fingerprint()] * 3 for fp in before)
        new, _, _ = fit_on_grid(grid, {"members": 2, "hidden": [16, 16], "epochs": 50})
        assert new.fingerprint() != old.fingerprint()
        broadcast(algo, new)
        after = group.foreach_env_runner(env_fingerprints, local_env_runner=False)
        assert after == [[new.fingerprint()] * 3] * 2  # every env of every runner scores with the new weights
        # and the envs there predict what the fitted ensemble predicts
        remote = group.foreach_env_runner(lambda r: r.env.unwrapped.envs[0].unwrapped.reward_model.quality(9, 7.0),
                                          local_env_runner=False)
        assert remote == pytest.approx([new.quality(9, 7.0)] * 2)
    finally:
        algo.stop()


def test_dyna_run_on_a_tiny_model_spends_exactly_its_budget(ray_local, tmp_path):
    from splitlab.platform.training import run_training

    s = spec(tmp_path, quality={"kind": "live", "model": "tiny-gpt2", "n_tokens": 64, "window": 32, "decimals": 0},
             env={"preset": "wireless", "candidate_ks": [0, 1, 2, 3, 4], "episode_len": 10,
                  "dynamics": {"kind": "gauss_markov", "mean_db": 10.0, "std_db": 6.0}},
             dyna={"initial_evals": 6, "evals_per_iter": 3, "budget": 11, "evaluators": 2},
             evaluation={"episodes": 2})
    result = run_training(s, log=None)
    evals = [h["mbrl/real_evals"] for h in result.history]
    assert evals == [9, 11, 11]  # 6 initial (reference included), +3, +2 (budget), then none
    assert result.metrics["mbrl/real_evals"] == 11 and result.metrics["mbrl/budget_left"] == 0
    assert result.metrics["mbrl/real_eval_time_s"] > 0
    assert result.history[-1]["mbrl/surrogate_points"] == 10  # every measured point but the clean reference
    assert result.metrics["eval/real_evals"] > 0  # the held-out scoring measured on the real model, counted apart
    assert (tmp_path / "t" / "surrogate.npz").exists() and (tmp_path / "t" / "policy").is_dir()
    # Served, the trained policy sees what it saw in the env at the start of an episode, so it splits alike.
    from ray.rllib.core.rl_module.rl_module import RLModule

    from splitlab.envs import SplitEnv
    from splitlab.mbrl.agents import greedy_policy
    from splitlab.serve.policy import load_rllib_rule

    rule = load_rllib_rule(result.files["policy"], num_layers=4)
    act = greedy_policy(RLModule.from_checkpoint(tmp_path / "t" / "policy"))
    from splitlab.platform.run_env import env_config

    env = SplitEnv({**env_config(s, s.quality), "snr_estimation_std_db": 0.0})
    for snr in (-5.0, 0.0, 4.5, 10.0, 17.0, 30.0):
        obs, _ = env.reset(options={"trace": [snr] * 11, "ue_budget": 1.0})
        np.testing.assert_array_equal(rule.observation({"snr_db": snr}), obs)
        assert rule({"snr_db": snr}) == env.candidate_ks[act(obs)]


def test_paper_mode_on_a_synthetic_grid_learns_to_beat_random(ray_local, tmp_path):
    from splitlab.platform.training import run_training

    s = spec(tmp_path, mode="paper", paper={"grid": {"kind": "synthetic", "channel": "awgn"}},
             algorithm={"iterations": 4, "train_batch_size": 800})
    result = run_training(s, log=None)
    m = result.metrics
    assert m["mbrl/real_evals"] == 11 * 17  # every synthetic grid point at the candidate splits
    assert m["mbrl/surrogate_r2"] > 0.95
    assert m["policy/return"] > m["random/return"]
    assert m["policy/return_vs_oracle"] > 0.6, m
    assert set(result.policies) >= {"policy", "oracle", "random", "fixed_k=9"}
    assert (tmp_path / "t" / "k_vs_channel.png").stat().st_size > 1000
    data = json.loads((tmp_path / "t" / "results.json").read_text())
    assert data["metrics"]["policy/return"] == pytest.approx(m["policy/return"])


class Interrupt(Exception):
    pass


def test_checkpoint_interrupt_resume(ray_local, tmp_path):
    import mlflow

    from splitlab.platform.training import run_training

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    s = spec(tmp_path, tracking={"enabled": True, "uri": uri, "experiment": "t"})

    def stop_after_two(metrics):
        if metrics["train/iteration"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(s, report=stop_after_two, log=None)
    state = json.loads((tmp_path / "t" / "state.json").read_text())
    assert state["iteration"] == 2 and not state.get("finished")
    evals_at_2 = state["history"][-1]["mbrl/real_evals"]

    seen = []
    result = run_training(s, report=lambda m: seen.append(m["train/iteration"]), log=None)
    assert seen == [3]  # only the missing iteration ran
    assert [h["train/iteration"] for h in result.history] == [1, 2, 3]
    assert result.history[2]["train/env_steps"] > result.history[1]["train/env_steps"]  # RLlib counters restored
    assert result.metrics["mbrl/real_evals"] == min(evals_at_2 + 3, 14)  # the budget carried over
    assert result.run_id == state["mlflow_run_id"]  # the same MLflow run continued
    run = mlflow.tracking.MlflowClient(uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and "policy/return_vs_oracle" in run.data.metrics
    steps = [m.step for m in mlflow.tracking.MlflowClient(uri).get_metric_history(result.run_id, "policy/train_return")]
    assert steps == [1, 2, 3]
    # a finished run is not trained again
    again = run_training(s, log=None)
    assert again.metrics["policy/return"] == pytest.approx(result.metrics["policy/return"])


def test_model_free_dqn_counts_distinct_real_evaluations(ray_local, tmp_path):
    from splitlab.platform.training import run_training

    counted = {"kind": "counted", "inner": {"kind": "synthetic", "channel": "awgn"}, "decimals": 0,
               "seconds_per_eval": 0.5}
    s = spec(tmp_path, mode="model_free", quality=counted,
             algorithm={"name": "dqn", "iterations": 1, "train_batch_size": 200, "minibatch_size": 32,
                        "epsilon_timesteps": 200})
    result = run_training(s, log=None)
    m = result.metrics
    assert 0 < m["mbrl/real_evals"] <= len(KS) * 60  # distinct (k, SNR rounded to 1 dB) points only
    assert m["mbrl/real_evals"] < m["mbrl/reward_queries"] == m["train/env_steps"]
    assert m["mbrl/real_eval_time_s"] == pytest.approx(0.5 * m["mbrl/real_evals"])
    assert np.isfinite(m["policy/return"])


@pytest.mark.slow
def test_killed_train_command_resumes(tmp_path):
    """`splitlab train` killed (SIGKILL, whole process group) mid-run; the rerun resumes from the checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    s = spec(tmp_path, algorithm={"iterations": 4})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(s.to_dict()))
    cmd = [sys.executable, "-m", "splitlab.cli", "train", str(path)]
    state_file = tmp_path / "t" / "state.json"
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if state_file.exists() and json.loads(state_file.read_text()).get("iteration", 0) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = json.loads(state_file.read_text())["iteration"]
    assert 2 <= killed_at < 4
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming after iteration {killed_at}" in out.stdout
    result = json.loads((tmp_path / "t" / "results.json").read_text())
    assert [h["train/iteration"] for h in result["history"]] == [1, 2, 3, 4]
