"""SplitEnv: both presets under gymnasium's checker, seeding, rewards by hand, oracle, bad configs."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from splitlab.channel import ChannelConfig, link_cost
from splitlab.envs import (
    FixedKPolicy,
    OraclePolicy,
    RandomPolicy,
    SplitEnv,
    SplitEnvConfig,
    evaluate_policy,
    held_out_traces,
    make_env,
    paper_reward,
    reference_policies,
    rollout,
    wireless_reward,
)

PAPER = {"preset": "paper", "reward_model": {"kind": "synthetic", "channel": "erasure", "num_layers": 32}}
WIRELESS = {"preset": "wireless", "episode_len": 20,
            "reward_model": {"kind": "synthetic", "channel": "awgn", "num_layers": 12, "hidden_size": 64}}


def grid_dict(channel: str, param: str, values: list[float], ppl: dict[int, list[float]], num_layers: int,
              hidden: int = 64, clean: float = 20.0) -> dict:
    rows = [{"k": k, "channel": channel, "param": param, "value": v, "ppl_mean": p}
            for k, ps in ppl.items() for v, p in zip(values, ps)]
    return {"model": "hand", "num_layers": num_layers, "hidden_size": hidden, "ppl_clean": clean, "rows": rows}


@pytest.mark.parametrize("config", [PAPER, {**PAPER, "paper_actions": "absolute"}, WIRELESS,
                                    {**WIRELESS, "dynamics": {"kind": "path_loss"}}],
                         ids=["paper", "paper-absolute", "wireless", "wireless-path-loss"])
def test_check_env_passes(config):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning other than the render one fails
        warnings.filterwarnings("ignore", message=".*render.*")
        check_env(SplitEnv(config), skip_render_check=True)


def test_spaces_follow_the_presets():
    paper = SplitEnv(PAPER)
    assert paper.k_max == 10 and paper.action_space.n == 9 and paper.observation_space.shape == (2,)
    assert SplitEnv({**PAPER, "paper_actions": "absolute"}).action_space.n == 10
    smol = SplitEnv({**PAPER, "reward_model": {"kind": "synthetic", "channel": "erasure", "num_layers": 30}})
    assert smol.k_max == 9  # round(10 / 32 * 30)
    wireless = SplitEnv({**WIRELESS, "candidate_ks": [0, 3, 6]})
    assert wireless.action_space.n == 3 and wireless.observation_space.shape == (5,)
    assert SplitEnv(WIRELESS).candidate_ks == tuple(range(13))


@pytest.mark.parametrize("config", [PAPER, WIRELESS], ids=["paper", "wireless"])
def test_seeded_episodes_repeat(config):
    def run(seed):
        env = SplitEnv(config)
        obs, _ = env.reset(seed=seed)
        rng = np.random.default_rng(5)
        out = [obs]
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            out += [obs, np.array([r])]
            done = term or trunc
        return np.concatenate(out)

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


def test_paper_reward_by_hand():
    ks = {k: [20.0 * (1 + 0.1 * k), 20.0 * (1 + 0.3 * k)] for k in range(33)}
    grid = grid_dict("erasure", "rho", [0.1, 0.3], ks, num_layers=32)
    env = SplitEnv({"preset": "paper", "reward_model": {"kind": "grid", "grid": grid}})
    env.reset(seed=0, options={"rho": 0.1, "k": 3})
    _, r, term, _, info = env.step(4 + 2)  # move +2 -> k = 5, rho * (1 - 0.0005)
    rho = 0.1 * (1 - 0.0005)
    # log-perplexity is linear in rho between the grid's two points
    ppl = math.exp(np.interp(rho, [0.1, 0.3], np.log(ks[5])))
    assert info["channel/rho"] == pytest.approx(rho) and info["cost/k"] == 5
    assert r == pytest.approx(10 * (20.0 - ppl) / 20.0 + 1 * (10 - 5) / 10)
    assert not term
    # moving down past 1 clips at k = 1 and raises rho; the reference stays the clean PPL (no stale value)
    _, r2, *_ , info2 = env.step(0)
    assert info2["cost/k"] == 1 and info2["channel/rho"] == pytest.approx(rho * 1.0005)
    assert info2["quality/ppl_ref"] == 20.0
    env.reset(seed=1, options={"rho": 0.1, "k": 4})
    _, r3, *_ = env.step(4)  # stay: rho unchanged, PPL evaluated afresh at (0.1, 4)
    assert r3 == pytest.approx(10 * (20.0 - ks[4][0]) / 20.0 + 0.6)


def test_paper_episode_has_five_steps_and_terminates():
    env = SplitEnv(PAPER)
    episode = rollout(env, RandomPolicy(0), seed=0)
    assert episode.steps == 5


def test_wireless_reward_by_hand():
    snr = 10 * math.log10(3)  # any SNR: the analog airtime does not depend on it
    grid = grid_dict("awgn", "snr_db", [snr, 30.0], {0: [40.0, 21.0], 2: [30.0, 20.5], 4: [25.0, 20.0]},
                     num_layers=4, hidden=64)
    config = {"preset": "wireless", "episode_len": 3, "reward_model": {"kind": "grid", "grid": grid},
              "dynamics": {"kind": "gauss_markov", "mean_db": snr, "std_db": 0.0},
              "snr_estimation_std_db": 0.0, "ue_budget_range": [0.5, 0.5],
              "channel": {"kind": "awgn", "bandwidth_hz": 1000.0, "quant": "fp16"},
              "device": {"ue_flops": 1e9, "edge_flops": 1e10, "params_per_layer": 0.5e9, "tokens": 1},
              "w_q": 1.0, "w_c": 0.5, "w_l": 0.25}
    env = SplitEnv(config)
    obs, _ = env.reset(seed=0)
    assert env.candidate_ks == (0, 2, 4)
    # 1 token x 64 elements = 32 analog symbols at 1000 symbol/s; a layer is 1e9 FLOPs: 2 s on the UE at half
    # budget, 0.1 s on the edge
    _, r, _, trunc, info = env.step(1)  # k = 2
    ue, tx, edge = 2 * 2.0, 32 / 1000, 2 * 0.1
    latency_ref = 4 * 1.0  # all 4 layers on the UE at full budget
    expected = -1.0 * math.log(30.0 / 20.0) - 0.5 * 2 / 4 - 0.25 * (ue + tx + edge) / latency_ref
    assert info["latency/ue_s"] == pytest.approx(ue) and info["latency/tx_s"] == pytest.approx(tx)
    assert info["latency/edge_s"] == pytest.approx(edge) and info["link/bytes"] == 128
    assert r == pytest.approx(expected) and not trunc
    assert env.action_rewards() == pytest.approx(
        [-math.log(2.0) - 0.25 * (tx + 0.4) / 4,
         expected,
         -math.log(25.0 / 20.0) - 0.5 - 0.25 * (8.0 + tx) / 4])
    assert obs[4] == pytest.approx(0.5) and obs[3] == 0.0
    assert obs[2] == pytest.approx(1024 / tx / 1000 / 10)  # goodput (fp16 bits / airtime) / bandwidth / 10


def test_reward_functions_are_shared_and_vectorised():
    terms = paper_reward(np.array([20.0, 30.0]), 20.0, np.array([1, 10]), 10)
    assert np.allclose(terms.total, [0.9, -5.0])
    w = wireless_reward(40.0, 20.0, 3, 30, 0.2, 0.1, w_q=2.0, w_c=1.0, w_l=0.5)
    assert w.total == pytest.approx(-2 * math.log(2) - 0.1 - 1.0)
    assert set(w.as_metrics()) == {"reward/quality", "reward/compute", "reward/latency", "reward/privacy",
                                   "reward/energy", "reward/total"}


def test_link_cost_is_the_channel_packages():
    env = SplitEnv(WIRELESS)
    env.reset(seed=0)
    snr = float(env.user.snr_db[0])
    _, _, _, _, info = env.step(0)
    cost = link_cost(128, 64, ChannelConfig(kind="awgn"), snr_db=snr)
    assert info["latency/tx_s"] == pytest.approx(cost.tx_time_s)
    assert info["link/bytes"] == cost.payload_bytes


def test_info_reports_namespaced_metrics():
    env = SplitEnv(WIRELESS)
    env.reset(seed=0)
    info = env.step(0)[4]
    for key in ("quality/ppl", "latency/ue_s", "latency/tx_s", "latency/edge_s", "latency/total_s", "link/bytes",
                "channel/snr_db", "reward/quality", "reward/compute", "reward/latency", "mbrl/real_evals"):
        assert key in info


def test_oracle_beats_every_fixed_k_on_held_out_traces():
    traces = held_out_traces(WIRELESS, n=3)
    env = SplitEnv(WIRELESS)
    policies = reference_policies(env)
    scores = {name: evaluate_policy(env, p, seeds=[7, 8, 9], traces=traces) for name, p in policies.items()}
    best_fixed = max(v for name, v in scores.items() if name.startswith("fixed_k="))
    assert scores["oracle"] >= best_fixed - 1e-9
    assert scores["oracle"] > scores["random"]


def test_paper_oracle_is_optimal_by_brute_force():
    config = {**PAPER, "episode_len": 3}
    env = SplitEnv(config)
    best = -np.inf
    for seq in itertools.product(range(env.action_space.n), repeat=3):
        env.reset(seed=11)
        best = max(best, sum(env.step(a)[1] for a in seq))
    oracle = rollout(env, OraclePolicy(), seed=11).return_
    assert oracle == pytest.approx(best)
    fixed = [rollout(env, FixedKPolicy(k), seed=11).return_ for k in range(1, env.k_max + 1)]
    assert oracle >= max(fixed) - 1e-9


def test_paper_oracle_beats_fixed_k_over_seeds():
    env = SplitEnv(PAPER)
    seeds = [100, 101, 102, 103]
    oracle = evaluate_policy(env, OraclePolicy(), seeds=seeds)
    assert all(oracle >= evaluate_policy(env, FixedKPolicy(k), seeds=seeds) - 1e-9 for k in range(1, 11))


def test_evaluate_policy_accepts_plain_callables_and_configs():
    assert evaluate_policy(WIRELESS, lambda obs: 0, episodes=2) == evaluate_policy(
        WIRELESS, FixedKPolicy(0), episodes=2)


def test_make_env_builds_both_kinds():
    assert isinstance(make_env(PAPER), SplitEnv)
    multi = make_env({"env": "multi_user", "num_users": 2, **{k: v for k, v in WIRELESS.items() if k != "preset"}})
    assert type(multi).__name__ == "MultiUserSplitEnv"
    with pytest.raises(ValueError, match="env must be one of"):
        make_env({"env": "cartpole"})


@pytest.mark.parametrize("change, field", [
    ({"preset": "papers"}, "preset must be one of"),
    ({"candidate_ks": []}, "candidate_ks must list at least one"),
    ({"w_q": -1.0}, "w_q must be greater than or equal to 0, got -1.0"),
    ({"w_l": -0.1}, "w_l must be greater than or equal to 0, got -0.1"),
    ({"alpha": -10.0}, "alpha must be greater than or equal to 0"),
    ({"episode_len": 0}, "episode_len must be greater than or equal to 1, got 0"),
    ({"rho_range": [0.3, 0.1]}, r"rho_range must be a pair \[low, high\] with 0 <= low <= high"),
    ({"candidate_ks": [0, 99]}, r"candidate_ks must lie in 0..12"),
    ({"gamma": 0.9}, r"unknown env config keys \['gamma'\]"),
    ({"reward_model": None}, "reward_model is required"),
    ({"reward_model": {"kind": "oracle"}}, "reward_model.kind must be one of"),
    ({"reward_model": {"kind": "synthetic", "layers": 3}}, r"unknown reward_model keys \['layers'\]"),
    ({"dynamics": {"kind": "markov"}}, "dynamics.kind must be one of"),
    ({"device": {"ue_flops": -1}}, "device.ue_flops must be greater than 0, got -1"),
    ({"channel": {"kind": "awgn", "bandwidth": 1}}, r"unknown channel keys \[\'bandwidth\'\]"),
], ids=lambda x: str(x)[:40])
def test_bad_configs_fail_naming_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        SplitEnv({**WIRELESS, **change})


def test_presets_need_the_matching_channel_parameter():
    with pytest.raises(ValueError, match="paper preset needs a reward model over 'rho'"):
        SplitEnv({**PAPER, "reward_model": {"kind": "synthetic", "channel": "awgn"}})
    with pytest.raises(ValueError, match="wireless preset needs a reward model over 'snr_db'"):
        SplitEnv({**WIRELESS, "reward_model": {"kind": "synthetic", "channel": "erasure"}})


def test_config_round_trips_to_plain_dict():
    cfg = SplitEnvConfig.from_dict({**WIRELESS, "dynamics": {"kind": "path_loss", "step_std_m": 2.0}})
    d = cfg.to_dict()
    assert d["dynamics"]["kind"] == "path_loss" and d["dynamics"]["step_std_m"] == 2.0
    assert SplitEnvConfig.from_dict(d).dynamics == cfg.dynamics
