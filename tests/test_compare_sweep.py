"""The methods x seeds sweep: ``sweep.methods`` bundles, tune_configs/compare.yaml, the report's curves over seeds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from splitlab.platform.report import SweepReport, TrialRow, format_tables, log_to_parent, write_outputs
from splitlab.platform.search_space import SweepSpec, resolve_method
from splitlab.platform.sweep import load_plan

ROOT = Path(__file__).resolve().parents[1]


def test_compare_sweep_expands_to_every_method_times_every_seed():
    from ray.tune.search.variant_generator import generate_variants

    plan = load_plan(ROOT / "tune_configs" / "compare.yaml")  # validates every method x seed spec
    sweep = plan.sweep
    methods, seeds = list(sweep.methods), sweep.params["algorithm.seed"].args
    assert len(methods) >= 4 and len(seeds) >= 5
    assert sweep.trial_count() == len(methods) * len(seeds)
    configs = [config for _, config in generate_variants(sweep.param_space())]
    pairs = [(c["method"], c["algorithm"]["seed"]) for c in configs]
    assert sorted(pairs) == sorted((m, s) for m in methods for s in seeds)
    specs = {(c["method"], c["algorithm"]["seed"]): plan.trial_spec(c) for c in configs}
    assert {m: specs[m, 0]["mode"] for m in methods} == {"dyna": "dyna", "paper": "paper", "model_free_ppo": "model_free",
                                                         "model_free_dqn": "model_free"}
    dqn = specs["model_free_dqn", 3]["algorithm"]
    assert dqn["name"] == "dqn" and dqn["seed"] == 3 and dqn["lr"] == 0.0005 and dqn["iterations"] == 15
    assert specs["dyna", 4]["algorithm"]["name"] == "ppo" and "method" not in specs["dyna", 4]


def test_cli_dry_run_lists_the_methods(capsys):
    from splitlab.cli import main

    assert main(["sweep", str(ROOT / "tune_configs" / "compare.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep compare: 20 trials (20 grid points x 1 samples)" in out
    assert "method model_free_dqn: mode='model_free', algorithm.name='dqn'" in out


@pytest.mark.parametrize("extra, message", [
    ({"methods": {"a": {"algorithm.seed": 1}}}, "method 'a' sets 'algorithm.seed', which sweep.params also sets"),
    ({"methods": {"a": {"algorithm": {"lr": 1}}}}, "method 'a' sets 'algorithm', which sweep.params also sets"),
    ({"methods": {"a": {"mode": {"grid_search": ["dyna", "paper"]}}}}, "sets 'mode' to a search domain"),
    ({"methods": {"bad name": {"mode": "dyna"}}}, "method name 'bad name'"),
    ({"methods": {"a": {}}}, "method 'a' must map dotted spec paths"),
    ({"methods": {}}, "sweep.methods must map method names"),
    ({"methods": {"a": {"mode": "dyna"}}, "params": {"method": {"grid_search": [1, 2]}}}, "cannot set 'method'"),
])
def test_bad_methods_name_the_problem(extra, message):
    raw = {"name": "s", "params": {"algorithm.seed": {"grid_search": [0, 1]}}, **extra}
    with pytest.raises(ValueError) as err:
        SweepSpec.from_dict(raw)
    assert message in str(err.value), str(err.value)


def test_resolve_method_merges_the_bundle_and_refuses_unknown_names():
    methods = SweepSpec.from_dict({"name": "s", "params": {"algorithm.seed": {"grid_search": [0, 1]}},
                                   "methods": {"dqn": {"mode": "model_free", "algorithm.name": "dqn"}}}).method_overrides()
    assert resolve_method({"algorithm": {"seed": 1}, "method": "dqn"}, methods) == {
        "algorithm": {"seed": 1, "name": "dqn"}, "mode": "model_free"}
    assert resolve_method({"x": 1}, None) == {"x": 1}
    with pytest.raises(ValueError, match=r"names method 'ppo'; the sweep's methods are \['dqn'\]"):
        resolve_method({"method": "ppo"}, methods)


def _method_report() -> SweepReport:
    """Two methods x three seeds, each trial with a 3-iteration history of its score and real evaluations."""
    trials = []
    for method, level in (("dyna", 0.9), ("model_free_ppo", 0.6)):
        for seed in (0, 1, 2):
            curve = [(it, level * it / 3 + 0.01 * seed) for it in (1, 2, 3)]
            evals = [(it, 10.0 * it * (1 if method == "dyna" else 20)) for it in (1, 2, 3)]
            trials.append(TrialRow(f"{method}{seed}", "t", "FINISHED", {}, {
                "policy/return": curve[-1][1] - 1.0, "policy/return_vs_oracle": curve[-1][1],
                "mbrl/real_evals": evals[-1][1]}, condition=(), method=(method, seed),
                history={"policy/return_vs_oracle": curve, "mbrl/real_evals": evals}))
    return SweepReport("compare", "abc", [], ["method", "algorithm/seed"], trials)


def test_report_aggregates_methods_over_seeds_with_curves(tmp_path):
    report = _method_report()
    assert report.seed_keys == ["algorithm/seed"]
    rows = report.aggregate_by_seed()
    assert [r["method"] for r in rows] == [("dyna",), ("model_free_ppo",)] and all(r["n"] == 3 for r in rows)
    text = format_tables(report)
    assert "mean over seeds" in text and "best split policy" not in text and "model_free_ppo" in text
    curves = report.aggregate_curves()
    assert [c["method"] for c in curves] == [("dyna",), ("model_free_ppo",)]
    dyna = curves[0]
    assert dyna["metric"] == "policy/return_vs_oracle" and dyna["step"] == [1, 2, 3] and dyna["n"] == [3, 3, 3]
    at2 = np.array([0.9 * 2 / 3 + 0.01 * s for s in (0, 1, 2)])
    assert dyna["mean"][1] == pytest.approx(at2.mean())
    assert dyna["ci95"][1] == pytest.approx(stats.t.ppf(0.975, 2) * at2.std(ddof=1) / np.sqrt(3))
    assert dyna["real_evals_mean"] == [10.0, 20.0, 30.0] and curves[1]["real_evals_mean"][-1] == 600.0
    files = write_outputs(report, tmp_path)
    names = {f.name for f in files}
    assert {"seed_aggregate.csv", "seed_curves.csv", "seed_aggregate.png", "seed_curves.png"} <= names
    assert (tmp_path / "seed_curves.csv").read_text().count("\n") == 1 + 2 * 3


def test_report_reads_histories_from_mlflow_and_logs_the_curves_to_the_parent_run(tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from splitlab.platform.report import build_report
    from splitlab.platform.tracking import TAG_PARENT, TAG_SWEEP, TAG_SWEEP_ID, TAG_SWEEP_PARENT, ensure_experiment, \
        parent_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, "e")
    parent = parent_run(uri, exp, "sweep", {TAG_SWEEP_PARENT: "abc"}, "compare")
    client = MlflowClient(tracking_uri=uri)
    for t in _method_report().trials:  # the trials as a sweep logs them: params, one metric row per iteration
        run = client.create_run(exp, tags={TAG_SWEEP: "compare", TAG_SWEEP_ID: "abc", TAG_PARENT: parent}).info.run_id
        metrics = [Metric(k, v, 0, step) for k, h in t.history.items() for step, v in h]
        metrics += [Metric(k, v, 0, 3) for k, v in t.metrics.items() if k not in t.history]
        client.log_batch(run, metrics=metrics, params=[Param("method", t.method[0]),
                                                       Param("algorithm/seed", str(t.method[1]))])
        client.set_terminated(run, "FINISHED")
    report = build_report("compare", uri)
    assert report.method_keys == ["algorithm/seed", "method"] and report.seed_keys == ["algorithm/seed"]
    curves = report.aggregate_curves()
    assert [c["method"] for c in curves] == [("dyna",), ("model_free_ppo",)] and curves[0]["n"] == [3, 3, 3]
    files = write_outputs(report, tmp_path / "out")
    assert log_to_parent(report, files, uri) == parent
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/seed_aggregate.json", "report/seed_curves.json", "report/seed_curves.png",
            "report/seed_aggregate.png"} <= logged


def method_trial(spec, ctx):
    """A stand-in trial: its score climbs to the level its method sets, a little higher per seed."""
    level, seed = spec["test"]["level"], spec["algorithm"]["seed"]
    for i in range(3):
        ctx.report({"policy/return_vs_oracle": level * (i + 1) / 3 + 0.01 * seed, "mbrl/real_evals": 10 * (i + 1)})
    return {"policy/return": level + 0.01 * seed - 1.0, "policy/return_vs_oracle": level + 0.01 * seed,
            "mbrl/real_evals": 30}


@pytest.mark.slow
def test_methods_times_seeds_sweep_runs_and_reports_per_method(tmp_path):
    import sys

    import ray
    from ray import cloudpickle

    from splitlab.platform.ray_runtime import LOCAL, ensure_ray
    from splitlab.platform.report import build_report
    from splitlab.platform.sweep import run_sweep

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw = {"test": {"level": 0.0}, "algorithm": {"seed": 0}, "sweep": {
        "name": "tiny-compare", "metric": "policy/return_vs_oracle", "cpus_per_trial": 0.5,
        "storage_path": str(tmp_path / "tune"), "params": {"algorithm.seed": {"grid_search": [0, 1]}},
        "methods": {"good": {"test.level": 0.9}, "weak": {"test.level": 0.3}}}}
    plan = load_plan(raw, validate=None)
    ensure_ray(2, address=LOCAL, runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}})
    try:
        outcome = run_sweep(plan, trial_fn=method_trial, tracking_uri=uri, verbose=0)
    finally:
        ray.shutdown()
    assert len(outcome.trials) == 4 and not outcome.errored, outcome.trials
    report = build_report("tiny-compare", uri)
    rows = report.aggregate_by_seed()
    assert [(r["method"], r["n"]) for r in rows] == [(("good",), 2), (("weak",), 2)]
    assert rows[0]["score_mean"] == pytest.approx(0.905) and rows[1]["score_mean"] == pytest.approx(0.305)
    curves = report.aggregate_curves()
    assert all(len(c["step"]) >= 3 and set(c["n"]) == {2} for c in curves)
    assert curves[0]["mean"][0] == pytest.approx(0.305)  # (0.3 + 0.31) / 2 at the first iteration
