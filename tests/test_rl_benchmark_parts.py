"""The pieces of the RL benchmark (benchmarks/rl_benchmark.py) on synthetic quality: the information-matched
oracle, plug-in greedy, GP-UCB, learning-curve statistics, the cached tables and shared-cache counting."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from splitlab.envs import SplitEnv
from splitlab.envs.belief_policies import InfoMatchedOracle, PlugInGreedyPolicy, observed_snr_budget
from splitlab.envs.policies import FixedKPolicy, OraclePolicy, RandomPolicy
from splitlab.envs.reward_models import make_reward_model
from splitlab.mbrl.evaluation import evaluate_split_env
from splitlab.mbrl.gp_bandit import GaussianProcess, run_gp_ucb
from splitlab.mbrl.learning_curves import band, evals_to_score, evals_to_score_summary, score_at
from splitlab.mbrl.truth_grid import GridSettings, cached_grid
from splitlab.platform.statistics import bootstrap_ci

KS = [3, 9, 15, 21, 27]


def wireless(std_db: float = 2.0, reward: dict | None = None) -> SplitEnv:
    return SplitEnv({"preset": "wireless", "candidate_ks": KS, "snr_estimation_std_db": std_db,
                     "reward_model": reward or {"kind": "synthetic", "channel": "awgn"},
                     "dynamics": {"kind": "gauss_markov", "mean_db": 10.0, "std_db": 8.0, "corr": 0.9}})


def test_info_matched_oracle_sits_between_the_best_fixed_split_and_the_clairvoyant_oracle():
    env = wireless(std_db=3.0)
    info = InfoMatchedOracle(env, users=60, samples_per_bin=16)
    policies = {"info": info, "clair": OraclePolicy(), "random": RandomPolicy(0),
                **{f"k{k}": FixedKPolicy(k) for k in KS}}
    res = {n: r.mean for n, r in evaluate_split_env(env, policies, episodes=6, seed=1_000_003).items()}
    best_fixed = max(res[f"k{k}"] for k in KS)
    assert res["random"] < best_fixed <= res["info"] + 1e-9 < res["clair"]
    # It reads only the observation: the same observation gives the same split whatever the hidden state.
    obs, _ = env.reset(seed=3)
    a = info.act(obs, env)
    env.user.snr_db[:] = -30.0
    assert info.act(obs, env) == a
    assert observed_snr_budget(env, obs)[0] == pytest.approx(env.user.snr_est_db[0], abs=1e-4)


def test_info_matched_oracle_refuses_the_paper_preset_and_bad_arguments():
    with pytest.raises(ValueError, match="wireless"):
        InfoMatchedOracle(SplitEnv({"preset": "paper", "reward_model": {"kind": "synthetic", "channel": "erasure"}}))
    with pytest.raises(ValueError, match="users"):
        InfoMatchedOracle(wireless(), users=0)


def test_plug_in_greedy_on_the_true_quality_matches_the_oracle_without_estimation_noise():
    env = wireless(std_db=0.0)
    truth = make_reward_model({"kind": "synthetic", "channel": "awgn"})
    res = evaluate_split_env(env, {"plug": PlugInGreedyPolicy(truth), "clair": OraclePolicy()}, episodes=3, seed=5)
    assert res["plug"].ks == res["clair"].ks


def test_gaussian_process_interpolates_a_smooth_function():
    x = np.linspace(0, 1, 15)[:, None] * np.ones((1, 2))
    y = np.sin(3 * x[:, 0]) + x[:, 1]
    gp = GaussianProcess().fit(x, y)
    mean, std = gp.predict(np.array([[0.5, 0.5]]))
    assert mean[0] == pytest.approx(np.sin(1.5) + 0.5, abs=0.05) and std[0] < 0.3
    far_mean, far_std = gp.predict(np.array([[5.0, -5.0]]))
    assert far_std[0] > 5 * std[0]
    with pytest.raises(ValueError, match="need x"):
        GaussianProcess().fit(np.zeros(3), np.zeros(3))


def test_gp_ucb_spends_its_budget_and_beats_random():
    counted = {"kind": "counted", "decimals": 0, "inner": {"kind": "synthetic", "channel": "awgn"}}
    env = wireless(std_db=1.0, reward=counted)
    seen = []
    out = run_gp_ucb(env, budget=25, seed=0, checkpoints=[10, 20], score=lambda p: seen.append(p) or 0.5)
    assert out["evals"] == 25 and env.reward_model.real_evals == 25 and out["reward_queries"] >= 25
    assert [e for e, _ in out["curve"]] == [10, 20] and len(seen) == 2
    scoring = wireless(std_db=1.0)
    res = evaluate_split_env(scoring, {"gp": out["policy"], "random": RandomPolicy(0)}, episodes=4, seed=9)
    assert res["gp"].mean > res["random"].mean


def test_learning_curve_statistics():
    curve = [(10, 0.5), (20, 0.93), (40, 0.96), (80, 0.99)]
    assert evals_to_score(curve, 0.95) == 40 and math.isinf(evals_to_score(curve, 0.995))
    assert score_at(curve, 5) != score_at(curve, 5) and score_at(curve, 39) == 0.93
    summary = evals_to_score_summary([curve, [(30, 0.97)], [(50, 0.2)]], [0.95])["0.95"]
    assert summary["median"] == 40 and summary["reached"] == 2 and summary["per_seed"] == [40, 30, None]
    assert summary["ci95"][0] == 30 and summary["ci95"][1] is None  # a resample of "never"s has no bound
    b = band([curve, [(30, 0.97)]], [10, 30])
    assert b["n"] == [1, 2] and b["mean"][1] == pytest.approx((0.93 + 0.97) / 2) and b["ci95"][0] == 0.0
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0])
    assert 1.0 <= lo <= 2.5 <= hi <= 4.0
    assert bootstrap_ci([7.0]) == (7.0, 7.0)


def test_cached_grid_reuses_a_table_only_with_equal_settings(tmp_path):
    calls = []

    def measure(settings):
        calls.append(settings)
        return {"rows": [], "n": len(calls)}, {"points": 1.0}

    s = GridSettings("tiny-llama", "lambada", 2048, 64, (1, 2), (0.0, 5.0), (0, 1, 2))
    path = tmp_path / "t.json"
    grid, cost = cached_grid(path, s, measure)
    assert grid["n"] == 1 and "reused" not in cost
    grid, cost = cached_grid(path, s, measure)
    assert grid["n"] == 1 and cost["reused"] == "t.json" and len(calls) == 1
    grid, _ = cached_grid(path, GridSettings("tiny-llama", "lambada", 2048, 64, (1, 2), (0.0, 4.0), (0, 1, 2)), measure)
    assert grid["n"] == 2 and json.loads(path.read_text())["settings"]["values"] == [0.0, 4.0]
    assert s.live_spec(2)["seed"] == 2 and s.live_spec(2)["corpus"] == "lambada"


def test_env_runner_points_are_merged_into_one_shared_cache_count():
    from splitlab.mbrl.rllib_env import forget_shared_models, process_points, process_stats, shared_reward_model

    forget_shared_models()
    a = shared_reward_model({"kind": "counted", "decimals": 0, "inner": {"kind": "synthetic", "channel": "awgn"}})
    for v in (3.2, 3.4, 7.9):
        a.quality(9, v)
    assert process_points() == [(9, 3.0), (9, 8.0)] and process_stats()["mbrl/real_evals"] == 2
    forget_shared_models()
    assert process_points() == []
