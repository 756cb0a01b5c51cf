"""Sweeps end to end on an embedded Ray: MLflow runs per trial, resume after a killed sweep, reports.

One local Ray (2 CPUs, 127.0.0.1) serves the whole module. The resume test kills a sweep running in a
subprocess (its own Ray) with SIGKILL mid-trial, then resumes it here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from ray import cloudpickle  # Ray pickles with its own copy of cloudpickle
import pytest
import yaml

from splitlab.platform.sweep import TAG_SWEEP, TAG_SWEEP_ID, load_plan, run_sweep

ROOT = Path(__file__).resolve().parents[1]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


def counting_trial(spec, ctx):
    """A stand-in trial: reports a few iterations, writes files like a training run, counts its calls.

    While ``spec["test"]["hang_file"]`` exists the trial with w_l == 0.5 blocks (to be killed there).
    """
    w_l, test = spec["env"]["w_l"], spec["test"]
    with open(Path(test["calls_dir"]) / f"calls_{w_l}", "a") as f:
        f.write("call\n")
    for i in range(3):
        ctx.report({"policy/return": w_l * (i + 1), "mbrl/real_evals": 4 * (i + 1)})
    while w_l == 0.5 and Path(test["hang_file"]).exists():
        time.sleep(0.2)
    (ctx.out_dir / "plots").mkdir(exist_ok=True)
    (ctx.out_dir / "plots" / "k_vs_snr.png").write_bytes(b"\x89PNG fake")
    (ctx.out_dir / "policy").mkdir(exist_ok=True)
    (ctx.out_dir / "policy" / "weights.json").write_text("{}")
    return {"policy/return": 3 * w_l, "oracle/return": 2.0, "mbrl/real_evals": 12, "policy/mean_k": 10 * w_l}


def _spec(tmp: Path, name: str) -> dict:
    return {"env": {"w_l": 0.1}, "test": {"calls_dir": str(tmp), "hang_file": str(tmp / "hang")},
            "sweep": {"name": name, "metric": "policy/return", "cpus_per_trial": 0.5, "max_concurrent_trials": 2,
                      "storage_path": str(tmp / "tune"), "params": {"env.w_l": {"grid_search": [0.1, 0.5]}}}}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from splitlab.platform.ray_runtime import LOCAL, ensure_ray

    ensure_ray(2, address=LOCAL, runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    yield
    ray.shutdown()


def _runs(uri: str, sweep: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps, filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}'") if exps else []


TINY = {  # a Dyna run of the real training code on a tiny random GPT-2, as small as it goes
    "name": "tiny", "mode": "dyna",
    "quality": {"kind": "live", "model": "tiny-gpt2", "n_tokens": 64, "window": 32, "decimals": 0},
    "env": {"preset": "wireless", "candidate_ks": [0, 1, 2, 3, 4], "episode_len": 10,
            "dynamics": {"kind": "gauss_markov", "mean_db": 10.0, "std_db": 6.0}},
    "algorithm": {"iterations": 2, "num_env_runners": 1, "envs_per_env_runner": 4, "train_batch_size": 200,
                  "minibatch_size": 100, "num_epochs": 2, "hidden": [16, 16], "env_runner_cpus": 0.25},
    "surrogate": {"epochs": 100, "members": 2},
    "dyna": {"initial_evals": 4, "evals_per_iter": 2, "budget": 8},
    "evaluation": {"episodes": 2, "baselines": False},
}


def test_two_trial_sweep_of_real_training_lands_two_runs(tmp_path, local_ray):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {**TINY, "sweep": {"name": "tiny-sweep", "cpus_per_trial": 0.5, "storage_path": str(tmp_path / "tune"),
                             "params": {"env.dynamics.mean_db": {"grid_search": [0.0, 20.0]}}}}
    plan = load_plan(raw)  # validated with the training spec's own loader
    outcome = run_sweep(plan, tracking_uri=uri, verbose=0)  # the shipped trial: splitlab.platform.training
    assert len(outcome.trials) == 2 and not outcome.errored, outcome.trials
    client, runs = _runs(uri, "tiny-sweep")
    assert len(runs) == 2
    assert {r.data.params["env/dynamics/mean_db"] for r in runs} == {"0.0", "20.0"}
    assert len({r.data.tags[TAG_SWEEP_ID] for r in runs}) == 1
    # one parent run per sweep, every trial its child, every run with its provenance
    parent = outcome.parent_run_id
    assert parent and {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent}
    assert client.get_run(parent).info.status == "FINISHED"
    assert all({"git.commit", "git.dirty", "versions.ray"} <= set(r.data.tags) for r in runs)
    for r in runs:
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        assert m["mbrl/real_evals"] == 8 and {"policy/return", "policy/return_vs_oracle", "oracle/return",
                                              "policy/train_return", "mbrl/surrogate_mae"} <= set(m)
        steps = [h.step for h in client.get_metric_history(r.info.run_id, "policy/train_return")]
        assert steps == [1, 2, 3]  # two iterations, then the final summary
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"k_vs_channel.png", "learning_curve.png", "surrogate.npz", "policy", "spec.yaml"} <= artifacts
        assert not artifacts & {"checkpoints", "rllib", "state.json"}  # resume state stays out of MLflow
        assert client.list_artifacts(r.info.run_id, "policy")
        spec = yaml.safe_load(Path(client.download_artifacts(r.info.run_id, "spec.yaml", str(tmp_path))).read_text())
        assert spec["env"]["dynamics"]["mean_db"] == float(r.data.params["env/dynamics/mean_db"])
    with pytest.raises(ValueError, match="pass --resume"):
        run_sweep(plan, tracking_uri=uri, verbose=0)

    from splitlab.platform.report import build_report, format_tables, write_outputs

    report = build_report("tiny-sweep", tracking_uri=uri)
    assert report.condition_keys == ["env/dynamics/mean_db"] and len(report.best_per_condition()) == 2
    text = format_tables(report)
    assert "best split policy per network condition" in text and "FINISHED" in text
    files = write_outputs(report, tmp_path / "report")
    assert {f.name for f in files} >= {"trials.csv", "best_per_condition.csv", "return_vs_oracle.png",
                                       "vs_mean_db.png", "evals_vs_return.png"}


_KILLED_SWEEP = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from ray import cloudpickle
    import test_sweep_run
    cloudpickle.register_pickle_by_value(test_sweep_run)
    import ray
    from splitlab.platform.sweep import load_plan, run_sweep
    from splitlab.platform.ray_runtime import LOCAL, ensure_ray
    ensure_ray(2, address=LOCAL, runtime_env={{"env_vars": {{"RAY_CHDIR_TO_TRIAL_DIR": "0"}}}}, quiet=False)
    Path({session_file!r}).write_text(ray._private.worker.global_worker.node.session_name)
    plan = load_plan({spec!r}, validate=None)
    run_sweep(plan, trial_fn=test_sweep_run.counting_trial, tracking_uri={uri!r}, num_cpus=2, verbose=0)
""")


def _kill_session(session_name: str) -> None:
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if session_name.encode() in cmdline:
            try:
                os.kill(int(proc_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_resume_after_killed_sweep_keeps_finished_trials(tmp_path, local_ray):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path, "killed")
    (tmp_path / "hang").write_text("")
    _runs(uri, "killed")  # create the store's tables now: two processes creating them at once collide
    script = _KILLED_SWEEP.format(tests=str(ROOT / "tests"), spec=spec, uri=uri, session_file=str(tmp_path / "session"))
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "0", "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:  # until the 0.1 trial is done and 0.5 hangs in its loop
            _, runs = _runs(uri, "killed")
            status = {r.data.params.get("env/w_l"): r.info.status for r in runs}
            if status.get("0.1") == "FINISHED" and (tmp_path / "calls_0.5").exists():
                break
            assert proc.poll() is None, "the sweep ended on its own: " + (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(1.0)
        else:
            pytest.fail(f"sweep did not reach the kill point; runs: {status}")
        time.sleep(3.0)  # let Tune snapshot its experiment state after the finished trial
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        # Ray workers run in process groups of their own and outlive the group for a while (the
        # hanging trial would wake up later): kill every process of that Ray session, as a crash would.
        if (tmp_path / "session").exists():
            _kill_session((tmp_path / "session").read_text())
    _, runs = _runs(uri, "killed")
    before = {r.data.params["env/w_l"]: r for r in runs}
    assert before["0.5"].info.status == "RUNNING"

    (tmp_path / "hang").unlink()
    plan = load_plan(spec, validate=None)
    outcome = run_sweep(plan, trial_fn=counting_trial, tracking_uri=uri, resume=True, verbose=0)
    assert len(outcome.trials) == 2 and not outcome.errored
    assert (tmp_path / "calls_0.1").read_text().count("call") == 1  # the finished trial did not run again
    assert (tmp_path / "calls_0.5").read_text().count("call") == 2  # the killed one ran again
    client, runs = _runs(uri, "killed")
    after = {r.data.params["env/w_l"]: r for r in runs}
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert after["0.5"].info.run_id == before["0.5"].info.run_id  # the trial kept its MLflow run
    assert after["0.1"].info.end_time == before["0.1"].info.end_time
    assert {a.path for a in client.list_artifacts(after["0.5"].info.run_id)} == {"plots", "policy", "spec.yaml"}


def crashing_trial(spec, ctx):
    """A stand-in trial that checkpoints like training (``state.json`` + a checkpoint folder) every
    iteration and, on its first attempt, crashes after iteration 2 the way a lost node would."""
    import shutil

    from splitlab.platform.run_state import RunState

    calls = Path(spec["test"]["calls_dir"]) / "attempts"
    if ctx.restore_dir is not None:
        shutil.copytree(ctx.restore_dir, ctx.out_dir, dirs_exist_ok=True)
    state = RunState.load(ctx.out_dir) or RunState(spec_hash="test", spec={})
    first = not calls.exists()
    with calls.open("a") as f:
        f.write(f"start {state.iteration + 1}\n")
    for it in range(state.iteration + 1, 5):
        (ctx.out_dir / f"checkpoints/iter_{it}").mkdir(parents=True)
        state.iteration, state.checkpoint = it, f"checkpoints/iter_{it}"
        state.save(ctx.out_dir)
        ctx.report({"policy/return": float(it)})
        if first and it == 2:
            raise RuntimeError("node lost")
    return {"policy/return": 4.0}

