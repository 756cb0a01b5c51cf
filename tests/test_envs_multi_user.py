"""MultiUserSplitEnv: RLlib's env checks, agents that come and go, shared edge and cell, and PPO."""
from __future__ import annotations

import math

import numpy as np
import pytest
from ray.rllib.env.multi_agent_episode import MultiAgentEpisode
from ray.rllib.utils.pre_checks.env import check_multiagent_environments

from splitlab.envs import SHARED_MODULE_ID, MultiUserSplitEnv, make_env, shared_policy_mapping_fn

BASE = {"episode_len": 12, "candidate_ks": [0, 2, 4, 8],
        "reward_model": {"kind": "synthetic", "channel": "awgn", "num_layers": 8, "hidden_size": 64}}
CHURN = {**BASE, "num_users": 4, "join_prob": 0.4, "leave_prob": 0.3}


def random_episode(env, seed, check_episode=True):
    """Play one episode with random actions, feeding RLlib's own episode bookkeeping (which raises on
    any agent that acts after it is done, acts without reward, or is truncated without an observation)."""
    obs, infos = env.reset(seed=seed)
    episode = MultiAgentEpisode(observation_space=env.observation_spaces, action_space=env.action_spaces,
                                agent_to_module_mapping_fn=shared_policy_mapping_fn)
    episode.add_env_reset(observations=obs, infos=infos)
    rng = np.random.default_rng(seed)
    active, seen, trace = set(obs), set(obs), []
    while True:
        actions = {aid: int(rng.integers(len(env.candidate_ks))) for aid in sorted(active)}
        obs, rewards, terms, truncs, infos = env.step(actions)
        for d in (obs, rewards, terms, truncs, infos):
            assert set(d) - {"__all__"} <= set(env.agents)
        assert set(rewards) == set(actions)  # every agent that acted is rewarded, nobody else
        episode.add_env_step(obs, actions, rewards, infos, terminateds=terms, truncateds=truncs)
        trace.append((sorted(obs), rewards))
        left = {a for a, t in terms.items() if t and a != "__all__"}
        new = set(obs) - active
        assert not new & seen, "an agent id must never come back within an episode"
        seen |= new
        active = (active - left) | new
        assert active == set(env.users) and len(active) >= 1
        if truncs["__all__"]:
            assert all(truncs[a] for a in active)
            return episode, trace, seen


def test_rllib_env_check_passes():
    check_multiagent_environments(MultiUserSplitEnv(CHURN))


def test_agents_come_and_go_by_rllib_rules():
    env = MultiUserSplitEnv(CHURN)
    episode, trace, seen = random_episode(env, seed=3)
    assert episode.is_done and len(seen) > 4  # someone arrived
    assert len(trace) == 12
    assert len(env.possible_agents) == 4 + 11 * 4  # enough ids that arrivals never run out


def test_seeded_episodes_repeat():
    a = random_episode(MultiUserSplitEnv(CHURN), seed=5)[1]
    b = random_episode(MultiUserSplitEnv(CHURN), seed=5)[1]
    assert a == b


def test_users_share_bandwidth_and_edge():
    config = {**BASE, "num_users": 2, "user_snr_offset_db": [0, 0], "snr_estimation_std_db": 0.0,
              "dynamics": {"kind": "gauss_markov", "mean_db": 10.0, "std_db": 0.0}, "ue_budget_range": [1, 1]}
    env = MultiUserSplitEnv(config)
    obs, _ = env.reset(seed=0)
    _, rewards, _, _, infos = env.step({"ue_0": 1, "ue_1": 3})  # k = 2 and k = 8
    single = make_env({**{k: v for k, v in config.items() if k not in ("num_users", "user_snr_offset_db")}})
    single.reset(seed=0)
    alone = single.step(1)[4]
    # half the bandwidth: twice the time on air; the edge runs both tails (6 + 0 layers) as one batch
    assert infos["ue_0"]["latency/tx_s"] == pytest.approx(2 * alone["latency/tx_s"])
    assert infos["ue_0"]["latency/edge_s"] == pytest.approx(alone["latency/edge_s"])  # 6 tail layers either way
    assert infos["ue_1"]["latency/edge_s"] == pytest.approx(alone["latency/edge_s"])
    assert infos["ue_0"]["cell/edge_tail_layers"] == 6.0
    _, _, _, _, infos2 = env.step({"ue_0": 1, "ue_1": 0})  # now 6 + 8 tail layers
    assert infos2["ue_0"]["latency/edge_s"] == pytest.approx(alone["latency/edge_s"] * 14 / 6)
    assert rewards["ue_0"] < alone["reward/total"]  # sharing the cell costs latency
    assert math.isclose(env._obs("ue_0")[6], 14 / 16, rel_tol=1e-6)  # edge load feature


def test_actions_must_match_the_active_agents():
    env = MultiUserSplitEnv({**BASE, "num_users": 2})
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"missing \['ue_1'\]"):
        env.step({"ue_0": 0})


@pytest.mark.parametrize("change, message", [
    ({"num_users": 0}, "num_users must be greater than or equal to 1, got 0"),
    ({"leave_prob": 1.5}, "leave_prob must be less than or equal to 1, got 1.5"),
    ({"preset": "paper"}, "preset must be 'wireless'"),
    ({"users": 3}, r"unknown multi-user env config keys \['users'\]"),
    ({"candidate_ks": []}, "candidate_ks must list at least one"),
])
def test_bad_configs_fail_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        MultiUserSplitEnv({**CHURN, **change})


def test_ppo_trains_two_iterations_with_one_shared_module(tmp_path):
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from splitlab.envs import register_envs
    from splitlab.mbrl.agents import build_algorithm
    from splitlab.platform.ray_runtime import ensure_ray

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the learner runs in this process; 2 shared cores
    ensure_ray(2)
    try:
        env_id = register_envs()["multi_user"]
        config = (PPOConfig()
                  .environment(env_id, env_config={**CHURN, "num_users": 3})
                  .env_runners(num_env_runners=0, rollout_fragment_length=32)
                  .multi_agent(policies={SHARED_MODULE_ID}, policy_mapping_fn=shared_policy_mapping_fn)
                  .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
                  .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16]))
                  .debugging(seed=0))
        algo = build_algorithm(config, tmp_path)  # RLlib's result folder there, not ~/ray_results
        try:
            for _ in range(2):
                result = algo.train()
            assert result["env_runners"]["num_env_steps_sampled_lifetime"] >= 128
            assert set(result["learners"]) == {SHARED_MODULE_ID, "__all_modules__"}
            assert np.isfinite(result["env_runners"]["episode_return_mean"])
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
