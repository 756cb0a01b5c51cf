"""The run core: the run-folder guard (changed spec refused, --restart, same spec resumes), a moved run
folder, the multi-user env through TrainingRun, ``evaluation.every``, and model-free resume counters.

The guard tests need no Ray; the training ones share one embedded Ray (127.0.0.1, 2 CPUs) and train on
synthetic rewards with tiny batches, one or two iterations each.
"""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import yaml

from splitlab.platform.run_state import STATE_FILE, RunState, SpecChanged, open_run_folder
from splitlab.platform.spec import ExperimentSpec

KS = [0, 6, 12, 18, 24, 30]
TINY_ALGO = {"iterations": 2, "num_env_runners": 0,  # sampling in this process: no actor start-up
             "envs_per_env_runner": 2, "train_batch_size": 200, "minibatch_size": 100, "num_epochs": 1,
             "hidden": [16, 16], "env_runner_cpus": 0.25}
PAPER_GRID = {"grid": {"kind": "synthetic", "channel": "awgn"}}


def raw_spec(tmp_path, **sections) -> dict:
    raw = {"name": "r", "mode": "paper", "paper": PAPER_GRID, "quality": {"kind": "synthetic", "channel": "awgn"},
           "env": {"preset": "wireless", "candidate_ks": KS, "episode_len": 10,
                   "dynamics": {"kind": "gauss_markov", "mean_db": 12.0, "std_db": 8.0}},
           "algorithm": copy.deepcopy(TINY_ALGO), "surrogate": {"epochs": 60, "members": 2, "hidden": [16, 16]},
           "evaluation": {"episodes": 2, "baselines": False}, "tracking": {"enabled": False}, "out": str(tmp_path)}
    for key, value in sections.items():
        merge = key in ("algorithm", "env", "evaluation", "surrogate", "tracking") and isinstance(value, dict)
        raw[key] = {**raw[key], **value} if merge else value
    return raw


def spec(tmp_path, **sections) -> ExperimentSpec:
    return ExperimentSpec.from_dict(raw_spec(tmp_path, **sections))


# -- the guard, without training -------------------------------------------------------------------------
def test_a_changed_spec_is_refused_naming_the_changed_keys(tmp_path):
    s = spec(tmp_path)
    assert open_run_folder(s.run_dir, s) is None  # a new folder: start
    RunState.fresh(s).save(s.run_dir)
    (s.run_dir / "results.json").write_text("{}")
    changed = spec(tmp_path, algorithm={"iterations": 5}, env={"w_l": 0.2})
    with pytest.raises(SpecChanged) as err:
        open_run_folder(changed.run_dir, changed)
    message = str(err.value)
    assert "algorithm.iterations: 2 -> 5" in message and "env.w_l: 0.5 -> 0.2" in message
    assert "--restart" in message and "--name" in message
    # where the run lives and logs is not part of the spec's identity: a rerun without MLflow resumes
    elsewhere = spec(tmp_path, tracking={"enabled": True, "uri": "sqlite:///x.db"}, checkpoint={"every": 5})
    assert RunState.fresh(elsewhere).spec_hash == RunState.fresh(s).spec_hash
    # --restart (resume=False) deletes the outputs and starts over
    assert open_run_folder(changed.run_dir, changed, resume=False) is None
    assert not (s.run_dir / STATE_FILE).exists() and not (s.run_dir / "results.json").exists()


def test_same_spec_resumes_from_a_relative_checkpoint_wherever_the_folder_is(tmp_path):
    s = spec(tmp_path / "a")
    state = RunState.fresh(s)
    state.iteration, state.checkpoint = 1, "checkpoints/iter_000001"
    (s.run_dir / state.checkpoint).mkdir(parents=True)
    state.save(s.run_dir)
    moved = spec(tmp_path / "b")
    moved.run_dir.parent.mkdir()
    shutil.move(str(s.run_dir), str(moved.run_dir.parent))
    resumed = open_run_folder(moved.run_dir, moved)
    assert resumed.iteration == 1 and resumed.checkpoint_dir(moved.run_dir) == moved.run_dir / state.checkpoint
    # without its checkpoint the same spec starts over (nothing to resume from)
    shutil.rmtree(moved.run_dir / "checkpoints")
    assert open_run_folder(moved.run_dir, moved) is None and not (moved.run_dir / STATE_FILE).exists()


def test_a_state_file_of_an_older_splitlab_is_refused(tmp_path):
    s = spec(tmp_path)
    s.run_dir.mkdir(parents=True)
    (s.run_dir / STATE_FILE).write_text(json.dumps({"iteration": 2, "checkpoint": "/abs/ckpt", "history": []}))
    with pytest.raises(SpecChanged, match="older splitlab"):
        open_run_folder(s.run_dir, s)


def test_the_cli_exits_2_naming_the_changed_key(tmp_path, capsys):
    from splitlab.cli import main

    s = spec(tmp_path)
    RunState.fresh(s).save(s.run_dir)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw_spec(tmp_path)))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(path), "--set", "algorithm.lr=0.01", "--no-mlflow"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "algorithm.lr: 0.0003 -> 0.01" in err and "--restart" in err


# -- training runs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    import ray

    from splitlab.platform.ray_runtime import ensure_ray

    ensure_ray(2)
    yield ray
    ray.shutdown()


class Interrupt(Exception):
    pass


def stop_after(n: int):
    def report(metrics):
        if metrics["train/iteration"] == n:
            raise Interrupt

    return report


def test_multi_user_run_with_evaluation_every_iteration(ray_local, tmp_path):
    from splitlab.mbrl.agents import algorithm_config
    from splitlab.platform.training import TrainingRun

    s = spec(tmp_path, mode="dyna",
             env={"env": "multi_user", "num_users": 3, "join_prob": 0.1, "leave_prob": 0.1},
             algorithm={"envs_per_env_runner": 1}, dyna={"initial_evals": 8, "evals_per_iter": 2, "budget": 12},
             evaluation={"every": 1})
    from splitlab.platform.run_env import env_config

    assert algorithm_config(s.algorithm, env_config(s, s.quality.to_dict()), "multi_user").is_multi_agent
    result = TrainingRun(s, log=None).run()
    assert [h["train/iteration"] for h in result.history] == [1, 2]
    for h in result.history:  # evaluation.every: 1 scores the policy on held-out traces each iteration
        assert {"policy/return", "policy/return_vs_oracle", "oracle/return"} <= set(h)
        assert {"losses/policy", "mbrl/real_evals"} <= set(h)  # the shared module's losses, the loop's counters
    assert [h["mbrl/real_evals"] for h in result.history] == [10, 12]  # 8 initial, +2 per iteration, budget 12
    assert result.metrics["mbrl/real_evals"] == 12
    info = json.loads((s.run_dir / "policy.json").read_text())
    assert info["env"] == "multi_user" and info["candidate_ks"] == KS and info["observer"] is None
    assert json.loads((s.run_dir / STATE_FILE).read_text())["finished"]


def test_model_free_resume_carries_the_real_evaluation_counters(ray_local, tmp_path):
    from splitlab.platform.training import run_training

    counted = {"kind": "counted", "inner": {"kind": "synthetic", "channel": "awgn"}, "decimals": 0}
    # one remote runner: its process (and the counts in it) ends with the interrupted run, as a killed one's would
    s = spec(tmp_path, mode="model_free", quality=counted, algorithm={"num_env_runners": 1})
    with pytest.raises(Interrupt):
        run_training(s, report=stop_after(1), log=None)
    state = json.loads((s.run_dir / STATE_FILE).read_text())
    assert state["iteration"] == 1 and state["mode"]["real_evals"] == state["history"][0]["mbrl/real_evals"] > 0
    seen = []
    result = run_training(s, report=lambda m: seen.append(m["train/iteration"]), log=None)
    assert seen == [2]
    assert result.history[0] == state["history"][0]  # the finished iteration is kept, not rerun
    second = result.history[1]
    # distinct points over every runner and process: the earlier ones are carried over, never recounted
    assert len(state["mode"]["points"]) == state["mode"]["real_evals"]
    assert second["mbrl/real_evals"] >= state["mode"]["real_evals"]
    # the new runner's own cache measures its points again: the per-runner sum grows
    assert second["mbrl/real_evals_runner_sum"] > state["mode"]["real_evals_runner_sum"]
    assert second["mbrl/reward_queries"] == second["train/env_steps"] > state["history"][0]["train/env_steps"]


def test_a_moved_run_folder_resumes_and_a_changed_spec_is_refused_then_restarted(ray_local, tmp_path):
    from splitlab.platform.training import run_training

    s = spec(tmp_path / "a")
    with pytest.raises(Interrupt):
        run_training(s, report=stop_after(1), log=None)
    first = json.loads((s.run_dir / STATE_FILE).read_text())
    assert first["checkpoint"] == "checkpoints/iter_000001"  # relative to the run folder
    moved = spec(tmp_path / "b")
    moved.run_dir.parent.mkdir()
    shutil.move(str(s.run_dir), str(moved.run_dir.parent))
    seen = []
    result = run_training(moved, report=lambda m: seen.append(m["train/iteration"]), log=None)
    assert seen == [2] and [h["train/iteration"] for h in result.history] == [1, 2]
    assert result.history[0] == first["history"][0]
    assert result.history[1]["train/env_steps"] > first["history"][0]["train/env_steps"]  # RLlib's counters restored
    # finished: the same spec returns its results; another spec is refused naming the key
    again = run_training(moved, log=None)
    assert again.metrics["policy/return"] == pytest.approx(result.metrics["policy/return"])
    longer = spec(tmp_path / "b", algorithm={"iterations": 3})
    with pytest.raises(SpecChanged, match=r"finished run .*algorithm\.iterations: 2 -> 3"):
        run_training(longer, log=None)
    seen.clear()
    restarted = run_training(longer, resume=False, report=lambda m: seen.append(m["train/iteration"]), log=None)
    assert seen == [1, 2, 3] and len(restarted.history) == 3
