"""Environment throughput: how many split decisions per second the environments deliver.

This example steps the environments with the measured-grid reward model (a synthetic grid in
``grid.json`` format shaped like SmolLM2: 30 layers, hidden 576) and random actions:

- a single ``SplitEnv`` (``wireless`` and ``paper`` presets) in this process;
- ``MultiUserSplitEnv`` with 16 users (env steps/s and agent steps/s);
- the same two envs sampled through RLlib env runners (PPO's default module, new API stack) with
  1 and then 2 env runners, reporting env steps/s and the ratio of 2 runners to 1 (rounds
  interleaved in the same runner processes; medians reported, the raw rounds kept in the JSON);
- ``cell_1024``: the decode-phase cell of 1,024 users sharing an edge queue (``splitlab.envs.cell``,
  numpy, with churn), in process (user steps/s, goal >= 200,000) and as RLlib's vector env with 2 cells
  per env runner (user steps/s per runner, goal >= 20,000; ratio of 2 runners to 1, goal >= 1.6), plus
  one env runner in this process timed by wall and by CPU time (what a runner does on a core of its own).

How to run:  .venv/bin/python benchmarks/env_throughput.py [--seconds 2] [--rounds 3] [--rllib-steps 1500]
             [--only cell_1024]   (measure one entry, keep the others of the JSON as they are)

Results to expect: about 10,000 single-user steps/s in process on a quiet 2-core machine (the
link-cost model is the largest part); 16 users (about 8 active with the default churn) cost about
10x per env step. Through RLlib the module's forward pass and episode
bookkeeping dominate, so steps/s drop by an order of magnitude; on 2 shared cores 2 runners give
well under 2x (the driver and both runners compete for the same cores). Writes
``benchmarks/results/env_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REWARD_MODEL = {"kind": "synthetic", "channel": "awgn", "num_layers": 30, "hidden_size": 576}
WIRELESS = {"preset": "wireless", "reward_model": REWARD_MODEL}
PAPER = {"preset": "paper", "reward_model": {**REWARD_MODEL, "channel": "erasure"}}
MULTI16 = {"env": "multi_user", "num_users": 16, "join_prob": 0.05, "leave_prob": 0.05, "reward_model": REWARD_MODEL}
CELL_USERS, CELLS_PER_RUNNER = 1024, 2
CELL = {"num_users": CELL_USERS, "leave_prob": 0.02, "queue": {"load": 0.8},
        "decode": {"reward_model": REWARD_MODEL, "candidate_ks": list(range(0, 31, 3))}}


def in_process(config: dict, seconds: float) -> float:
    """Random-action env steps and agent steps per second of one env in this process."""
    from splitlab.envs import make_env

    env = make_env(config)
    rng = np.random.default_rng(0)
    multi = config.get("env") == "multi_user"
    env_steps = agent_steps = 0
    obs, _ = env.reset(seed=0)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if multi:
            actions = {aid: int(rng.integers(len(env.candidate_ks))) for aid in env.users}
            obs, _, _, truncs, _ = env.step(actions)
            agent_steps += len(actions)
            done = truncs["__all__"]
        else:
            obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            agent_steps += 1
            done = term or trunc
        env_steps += 1
        if done:
            obs, _ = env.reset()
    wall = time.perf_counter() - start
    return env_steps / wall, agent_steps / wall


def in_process_cell(seconds: float) -> tuple[float, float]:
    """Cell steps and active-user steps per second of one 1,024-user cell with random actions."""
    from splitlab.envs.cell import Cell, CellConfig

    cell = Cell(CellConfig(**CELL, refill=True))  # refilled slots, as RLlib sees it
    rng = np.random.default_rng(0)
    n_act = len(cell.model.ks)
    cell.reset(0)
    steps = users = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, acted, *_ = cell.step(rng.integers(0, n_act, cell.n))
        cell.observations()
        steps += 1
        users += int(acted.sum())
    wall = time.perf_counter() - start
    return steps / wall, users / wall


def through_rllib(config: dict, steps_per_runner: int, rounds: int, logdir: str, env_id: str | None = None,
                  runner_options: dict | None = None, train_batch_size: int | None = None) -> dict:
    """Env steps per second sampled through RLlib env runners (PPO's default module), 1 runner vs 2.

    One algorithm with 2 remote runners; each round samples ``steps_per_runner`` on runner 1 alone,
    then on both at once. Interleaving the rounds in the same processes keeps drift in the load of a
    shared machine out of the ratio; the medians over rounds are reported.
    """
    from ray.rllib.algorithms.ppo import PPOConfig

    from splitlab.envs import SHARED_MODULE_ID, register_envs, shared_policy_mapping_fn

    ids = register_envs()
    name = config.get("env", "split")
    env_config = {k: v for k, v in config.items() if k != "env"}
    algo_config = (PPOConfig()
                   .environment(env_id or ids[name], env_config=env_config)
                   .env_runners(num_env_runners=2, num_cpus_per_env_runner=1,
                                **(runner_options or {"rollout_fragment_length": 200}))
                   .debugging(seed=0))
    if train_batch_size is not None:  # only sampled here, but the config must add up
        algo_config = algo_config.training(train_batch_size_per_learner=train_batch_size)
    if name == "multi_user":
        algo_config = algo_config.multi_agent(policies={SHARED_MODULE_ID}, policy_mapping_fn=shared_policy_mapping_fn)
    from splitlab.mbrl.agents import build_algorithm

    algo = build_algorithm(algo_config, logdir)
    group = algo.env_runner_group

    def sample(runner, n=steps_per_runner):
        return sum(len(e) for e in runner.sample(num_timesteps=n, explore=True))

    def timed(worker_ids: list[int]) -> float:
        start = time.perf_counter()
        counts = group.foreach_env_runner(sample, local_env_runner=False, remote_worker_ids=worker_ids)
        return sum(counts) / (time.perf_counter() - start)

    try:
        group.foreach_env_runner(lambda r: sample(r, 100), local_env_runner=False)  # warm-up
        one, two = [], []
        for _ in range(rounds):
            one.append(timed([1]))
            two.append(timed([1, 2]))
    finally:
        algo.stop()
    med1, med2 = float(np.median(one)), float(np.median(two))
    return {"steps_per_runner": steps_per_runner, "rounds": rounds,
            "runners_1": {"env_steps_per_s": med1, "rounds_env_steps_per_s": one},
            "runners_2": {"env_steps_per_s": med2, "rounds_env_steps_per_s": two},
            "ratio_2_to_1": med2 / med1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per in-process round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (the median is reported)")
    parser.add_argument("--rllib-steps", type=int, default=1500,
                        help="env steps per runner per RLlib round (the 16-user env samples a tenth)")
    parser.add_argument("--only", choices=["cell_1024"],
                        help="measure only this entry; the other entries of the JSON are kept")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # the driver only coordinates; the runners get one thread each from Ray
    out = RESULTS / "env_throughput.json"
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(),
               "processor": platform.processor() or platform.machine(), "load_avg_1m_at_start": os.getloadavg()[0]}
    if args.only:
        results = json.loads(out.read_text())
        results["cell_1024"] = measure_cell(args, machine)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
        return
    results: dict = {"machine": machine, "reward_model": REWARD_MODEL, "in_process": {}, "rllib": {}}
    for name, config in (("wireless", WIRELESS), ("paper", PAPER), ("multi_user_16", MULTI16)):
        rounds = [in_process(config, args.seconds) for _ in range(args.rounds)]
        env_rate, agent_rate = (float(np.median(x)) for x in zip(*rounds))
        results["in_process"][name] = {"env_steps_per_s": env_rate, "agent_steps_per_s": agent_rate,
                                       "rounds_env_steps_per_s": [r[0] for r in rounds]}
        print(f"in process  {name:14s} {env_rate:9.0f} env steps/s  {agent_rate:9.0f} agent steps/s")

    import ray

    from splitlab.platform.ray_runtime import ensure_ray

    scratch = tempfile.mkdtemp(prefix="env_throughput-")  # RLlib's result folders, not ~/ray_results
    ensure_ray(2, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, quiet=False)
    try:
        for name, config, steps in (("wireless", WIRELESS, args.rllib_steps),
                                    ("multi_user_16", MULTI16, max(10, args.rllib_steps // 10))):
            results["rllib"][name] = r = through_rllib(config, steps, args.rounds, scratch)
            print(f"rllib       {name:14s} 1 runner {r['runners_1']['env_steps_per_s']:7.0f}  2 runners "
                  f"{r['runners_2']['env_steps_per_s']:7.0f} env steps/s  ratio {r['ratio_2_to_1']:.2f}")
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    results["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    results["cell_1024"] = measure_cell(args, dict(machine, load_avg_1m_at_start=os.getloadavg()[0]))
    RESULTS.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


def local_runner_cell(n_envs: int, rounds: int, logdir: str) -> dict:
    """User steps per wall second and per CPU second of an env runner in this process (no actor hop):
    the CPU figure says what one runner does on a core of its own, whatever the machine's load."""
    from ray.rllib.algorithms.ppo import PPOConfig

    from splitlab.envs.cell import register_cell_env
    from splitlab.mbrl.agents import build_algorithm

    algo = build_algorithm(PPOConfig().environment(register_cell_env(), env_config=CELL)
                           .env_runners(num_env_runners=0, num_envs_per_env_runner=n_envs, rollout_fragment_length=10,
                                        gym_env_vectorize_mode="vector_entry_point")
                           .training(train_batch_size_per_learner=10 * n_envs), logdir)
    runner = algo.env_runner_group.local_env_runner
    wall, cpu = [], []
    try:
        runner.sample(num_timesteps=n_envs, explore=True)  # warm-up
        for _ in range(rounds):
            w, c = time.perf_counter(), time.process_time()
            steps = sum(len(e) for e in runner.sample(num_timesteps=20 * n_envs, explore=True))
            wall.append(steps / (time.perf_counter() - w))
            cpu.append(steps / (time.process_time() - c))
    finally:
        algo.stop()
    return {"user_steps_per_s": float(np.median(wall)), "user_steps_per_cpu_s": float(np.median(cpu)),
            "rounds_user_steps_per_s": wall, "rounds_user_steps_per_cpu_s": cpu}


def measure_cell(args, machine: dict) -> dict:
    """The ``cell_1024`` entry: in process, then through RLlib (its own Ray session), with the load average."""
    import ray

    from splitlab.envs.cell import register_cell_env
    from splitlab.platform.ray_runtime import ensure_ray

    rounds = [in_process_cell(args.seconds) for _ in range(args.rounds)]
    cell_rate, user_rate = (float(np.median(x)) for x in zip(*rounds))
    entry: dict = {"machine": machine, "config": CELL, "cells_per_runner": CELLS_PER_RUNNER,
                   "in_process": {"cell_steps_per_s": cell_rate, "user_steps_per_s": user_rate,
                                  "rounds_user_steps_per_s": [r[1] for r in rounds], "goal_user_steps_per_s": 200_000}}
    print(f"in process  cell_1024      {cell_rate:9.0f} cell steps/s  {user_rate:9.0f} user steps/s")
    scratch = tempfile.mkdtemp(prefix="env_throughput-")
    ensure_ray(2, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, quiet=False)
    try:
        n_envs = CELLS_PER_RUNNER * CELL_USERS
        # Each sampled round: 10 vector steps of every sub-env of a runner.
        r = through_rllib(CELL, 10 * n_envs, args.rounds, scratch, env_id=register_cell_env(),
                          runner_options={"num_envs_per_env_runner": n_envs, "rollout_fragment_length": 10,
                                          "gym_env_vectorize_mode": "vector_entry_point"},
                          train_batch_size=2 * 10 * n_envs)
        local = local_runner_cell(n_envs, args.rounds, scratch)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    rllib = {"runners_1": {"user_steps_per_s": r["runners_1"]["env_steps_per_s"],
                           "rounds_user_steps_per_s": r["runners_1"]["rounds_env_steps_per_s"]},
             "runners_2": {"user_steps_per_s": r["runners_2"]["env_steps_per_s"],
                           "rounds_user_steps_per_s": r["runners_2"]["rounds_env_steps_per_s"]},
             "ratio_2_to_1": r["ratio_2_to_1"], "user_steps_per_runner_round": r["steps_per_runner"],
             "goal_runners_1_user_steps_per_s": 20_000, "goal_ratio_2_to_1": 1.6, "local_runner": local}
    entry["rllib"] = rllib
    entry["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    print(f"rllib       cell_1024      1 runner {rllib['runners_1']['user_steps_per_s']:7.0f}  2 runners "
          f"{rllib['runners_2']['user_steps_per_s']:7.0f} user steps/s  ratio {r['ratio_2_to_1']:.2f}; local runner "
          f"{local['user_steps_per_s']:7.0f} per s, {local['user_steps_per_cpu_s']:7.0f} per CPU s")
    return entry


if __name__ == "__main__":
    main()
