"""The decode-phase env: migration costs, the exact DP oracle, the shared edge queue and the numpy cell."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from splitlab.envs.cell import Cell, CellConfig, CellVectorEnv
from splitlab.envs.edge_queue import EdgeQueue, EdgeQueueConfig
from splitlab.envs.migration import migration_work
from splitlab.envs.sequential import DecodeModel, SequentialConfig, SequentialSplitEnv
from splitlab.envs.sequential_policies import (
    ClairvoyantPolicy,
    FixedPolicy,
    GreedyPolicy,
    InfoMatchedPolicy,
    RandomPolicy,
    clairvoyant_plan,
    run_cell,
    solve_dp,
)

SYNTH = {"kind": "synthetic", "channel": "awgn", "num_layers": 12, "hidden_size": 64}


def _cell(users=8, load=0.05, switch=1.0, steps=6, ks=(0, 4, 8, 12), **kw) -> Cell:
    decode = {"reward_model": SYNTH, "candidate_ks": list(ks), "episode_len": steps, "switch_scale": switch,
              "prompt_tokens": 64, "block_tokens": 8}
    return Cell(CellConfig(num_users=users, queue={"load": load}, decode=decode, **kw))


def test_migration_work_by_direction():
    w = migration_work(np.array([2, 6, 4]), np.array([6, 2, 4]), 100, kv_bytes_per_layer_token=10.0,
                       hidden_bytes_per_token=3.0, ue_holds_boundary=np.array([True, True, False]))
    np.testing.assert_array_equal(w.recompute_ue_layer_tokens, [400, 200, 0])  # up: 4 layers; down: rebuild 2
    np.testing.assert_array_equal(w.recompute_edge_layer_tokens, [0, 400, 0])
    np.testing.assert_array_equal(w.recompute_bytes, [0, 300, 0])
    np.testing.assert_array_equal(w.transfer_bytes, [4000, 4000, 0])
    lost = migration_work(2, 6, 100, 10.0, 3.0, ue_holds_boundary=False)
    assert lost.recompute_ue_layer_tokens == 600  # without the states after k=2 the UE starts from the tokens


def test_single_user_env_passes_check_env_and_switching_costs_grow_with_context():
    env = SequentialSplitEnv({"reward_model": SYNTH, "episode_len": 8})
    check_env(env, skip_render_check=True)
    m = env.model
    a, prev = np.array([len(m.ks) - 1]), np.array([0])
    stalls = [m.step(a, prev, np.array([True]), m.tokens_before(t), np.array([15.0]), np.array([1.0])).migration_s[0]
              for t in (0, 10, 100)]
    assert 0 < stalls[0] < stalls[1] < stalls[2]
    free = SequentialConfig(reward_model=SYNTH, switch_scale=0.0)
    assert DecodeModel(free).step(a, prev, np.array([True]), 500, np.array([15.0]), np.array([1.0])).migration_s[0] == 0


def test_dp_is_exact_against_brute_force_for_one_user():
    cell = _cell(users=1, steps=4, switch=3.0)
    cell.reset(5)
    m, exo = cell.model, cell.exo
    snr = exo.snr_db
    tokens = np.broadcast_to(m.tokens_before(np.arange(4))[:, None], snr.shape)
    plan, value = solve_dp(m, snr, tokens, exo.budget, np.zeros_like(snr), cell.edge_scale,
                           np.array([-1]), np.array([True]))
    best = -np.inf
    for seq in itertools.product(range(len(m.ks)), repeat=4):
        best = max(best, run_cell(cell, ClairvoyantPolicy(np.array(seq)[:, None]), 5)[0])
    executed = run_cell(cell, ClairvoyantPolicy(plan), 5)[0]
    # On a near-idle edge the only coupling is the user's own tail, which the DP prices exactly.
    assert value[0] == pytest.approx(best, rel=1e-6)
    assert executed == pytest.approx(best, rel=1e-6)


def test_oracles_order_on_a_near_idle_cell():
    cell = _cell(users=6, steps=6, switch=2.0, load=1e-4)  # users barely couple: the per-user DP is exact
    seed = 3
    plan, clairvoyant, candidates = clairvoyant_plan(cell, seed, rounds=1)
    scores = {"random": run_cell(cell, RandomPolicy(0), seed).mean(),
              "myopic": run_cell(cell, GreedyPolicy("myopic"), seed).mean(),
              "info": run_cell(cell, InfoMatchedPolicy(), seed).mean()}
    scores.update({f"fixed_{a}": run_cell(cell, FixedPolicy(a), seed).mean() for a in range(4)})
    assert clairvoyant == pytest.approx(candidates["dp_round_0"], abs=1e-3)  # near-idle: the DP round wins
    assert all(clairvoyant >= v - 1e-9 for v in scores.values()), scores


def test_edge_queue_carries_work_and_gates_admission():
    q = EdgeQueue(EdgeQueueConfig(load=1.0, max_backlog_steps=1.0), capacity_s=2.0)
    assert q.serve(3.0) == 3.0 and q.backlog_s == 1.0  # 1 s left over
    assert q.serve(0.5) == 1.5 and q.backlog_s == 0.0
    q.serve(5.0)
    assert q.backlog_s == 3.0 and not q.admits()
    with pytest.raises(ValueError, match="capacity"):
        EdgeQueue(EdgeQueueConfig(), 0.0)


def test_a_users_choice_changes_the_others_wait_in_later_steps():
    cell = _cell(users=16, load=2.0, steps=6)
    light, heavy = np.full(16, 1), np.full(16, 1)  # k = 4: 1.33x the edge's capacity, a backlog remains
    heavy[0] = 0  # user 0 puts its whole model on the edge
    waits = []
    for first in (light, heavy):
        cell.reset(1)
        cell.step(first)
        cell.step(np.full(16, 3))
        waits.append(cell.others_wait_s[1:].mean())
    assert waits[1] > waits[0]


def test_cell_churn_admission_and_vector_env():
    cell = _cell(users=32, load=3.0, steps=5, join_prob=0.5, leave_prob=0.2, initial_users=16)
    obs = cell.reset(0)
    assert obs.shape == (32, 9) and (obs[16:] == 0).all()
    joined = left = 0
    for _ in range(20):
        r, acted, gone, arrived, metrics = cell.step(np.zeros(32, dtype=np.int64))
        assert (r[~acted] == 0).all()
        joined, left = joined + arrived.sum(), left + gone.sum()
    assert joined > 0 and left > 0 and cell.blocked > 0  # at load 3 the backlog closes admission
    env = CellVectorEnv({"num_users": 8, "decode": {"reward_model": SYNTH, "episode_len": 3}}, num_envs=16)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16, 9)
    ends = []
    for _ in range(7):
        obs, rew, term, trunc, _ = env.step(env.action_space.sample())
        ends.append(term.copy())
    ends = np.array(ends)
    assert ends[2].all() and not ends[3].any() and ends[6].all()  # 3-step generations, one reset step between
    with pytest.raises(ValueError, match="multiple of num_users"):
        CellVectorEnv({"num_users": 8, "decode": {"reward_model": SYNTH}}, num_envs=12)


def test_bad_sequential_config_names_the_field():
    with pytest.raises(ValueError, match="block_tokens"):
        SequentialConfig(reward_model=SYNTH, block_tokens=0)
    with pytest.raises(ValueError, match="not_a_field"):
        CellConfig(not_a_field=1)


def test_ppo_samples_and_trains_on_two_cells_per_env_runner(tmp_path):
    import ray
    import torch
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from splitlab.envs.cell import register_cell_env
    from splitlab.mbrl.agents import build_algorithm
    from splitlab.platform.ray_runtime import ensure_ray

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ensure_ray(2)
    try:
        env_config = {"num_users": 4, "leave_prob": 0.1, "decode": {"reward_model": SYNTH, "episode_len": 3}}
        config = (PPOConfig()
                  .environment(register_cell_env(), env_config=env_config)
                  .env_runners(num_env_runners=0, num_envs_per_env_runner=8, rollout_fragment_length=8,
                               gym_env_vectorize_mode="vector_entry_point")
                  .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
                  .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16]))
                  .debugging(seed=0))
        algo = build_algorithm(config, tmp_path)  # RLlib's result folder here, not ~/ray_results
        try:
            runner = algo.env_runner_group.local_env_runner
            assert len(runner.env.unwrapped.cells) == 2  # 8 sub-envs = 2 cells x 4 users, one shared module
            episodes = runner.sample(num_timesteps=64, explore=True)
            lengths = [len(e) for e in episodes if e.is_done]
            assert lengths and all(1 <= n <= 3 for n in lengths)  # generations of <= 3 steps, some cut short
            result = algo.train()
            assert np.isfinite(result["env_runners"]["episode_return_mean"])
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)


def test_device_profiles_price_the_decode_steps():
    """With ue_profile the costs are the roofline device model of the named model's own layers."""
    from splitlab.envs.device_profiles import DeviceCostModel
    from splitlab.llm.cost import layer_costs_of

    synth = {**SYNTH, "num_layers": 4}  # tiny-llama: 4 layers of width 64
    phone = DecodeModel(SequentialConfig(reward_model=synth, ue_profile="phone", layers_of="tiny-llama",
                                         prompt_tokens=32))
    step = DeviceCostModel(layer_costs_of("tiny-llama"), "phone").per_k("decode", context=32)
    np.testing.assert_allclose(phone.costs.ue_s_per_token, step.ue_time_s)
    np.testing.assert_allclose(phone.costs.edge_s_per_token, step.edge_time_s)
    assert phone.costs.radio_tx_w == DeviceCostModel(layer_costs_of("tiny-llama"), "phone").ue.tx_power_w
    jetson = DecodeModel(SequentialConfig(reward_model=synth, ue_profile="jetson", layers_of="tiny-llama",
                                          prompt_tokens=32))
    assert not np.allclose(jetson.costs.ue_s_per_token[1:], phone.costs.ue_s_per_token[1:])
    with pytest.raises(ValueError, match="layers_of 'tiny-llama' has 4 layers"):
        DecodeModel(SequentialConfig(reward_model=SYNTH, ue_profile="phone", layers_of="tiny-llama"))


def test_registered_sequential_env_and_env_returns_on_the_oracles_traces():
    from ray.tune.registry import ENV_CREATOR, _global_registry

    from splitlab.envs.registry import make_env, register_envs
    from splitlab.envs.sequential_policies import env_returns, idle_cell
    from splitlab.mbrl.rllib_env import register_mbrl_envs

    config = {"reward_model": SYNTH, "candidate_ks": [0, 4, 8, 12], "episode_len": 5, "switch_scale": 2.0,
              "prompt_tokens": 64, "block_tokens": 8}
    env = make_env({"env": "sequential", **config})
    assert isinstance(env, SequentialSplitEnv)
    # What RLlib builds from the registered names (the plain one and the shared-reward-model one).
    for env_id in (register_envs()["sequential"], register_mbrl_envs()["sequential"]):
        built = _global_registry.get(ENV_CREATOR, env_id)(dict(config))
        assert isinstance(built, SequentialSplitEnv)
        assert built.action_space.n == 4 and built.observation_space.shape == (9,)
    cell = idle_cell(env)
    assert cell.n == 1 and cell.edge_scale == pytest.approx(1.0)
    for seed in (0, 7):
        plan, value, _ = clairvoyant_plan(cell, seed, rounds=1)
        # The DP plan acted out in the env: the same draws (checked inside) and the same return.
        replayed = env_returns(env, lambda obs: int(plan[env.t, 0]), [seed], cell)[0]
        assert replayed == pytest.approx(value, rel=1e-9)
        assert replayed >= run_cell(cell, GreedyPolicy("myopic"), seed)[0] - 1e-9
    other = idle_cell(SequentialSplitEnv({**config, "snr_std_db": 1.0}))  # other channel draws
    with pytest.raises(RuntimeError, match="deviation_db"):
        env_returns(env, lambda obs: 0, [3], other)
