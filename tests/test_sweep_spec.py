"""The sweep section: validation (good and bad specs) and its mapping to Ray Tune. No Ray cluster starts."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from splitlab.dotted import flatten
from splitlab.platform.search_space import Domain, SweepSpec, apply_overrides, parse_domain
from splitlab.platform.sweep import load_plan

ROOT = Path(__file__).resolve().parents[1]


def _sweep(**extra) -> dict:
    return {"name": "s", "params": {"env.w_l": {"grid_search": [0.1, 0.5]}}, **extra}


def test_domains_map_to_tune_objects():
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    spec = SweepSpec.from_dict({"name": "n", "params": {
        "env.dynamics.mean_db": {"grid_search": [0, 10, 20]},
        "algorithm.lr": {"loguniform": [1.0e-5, 1.0e-3]},
        "env.w_q": {"uniform": [0.5, 2.0]},
        "env.channel.fading": {"choice": ["none", "rayleigh"]},
        "algorithm.seed": {"randint": [0, 100]},
        "env.episode_len": 7,
    }})
    space = spec.param_space()
    assert space["env"]["dynamics"]["mean_db"] == tune.grid_search([0, 10, 20])
    lr = space["algorithm"]["lr"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-5, 1e-3)
    assert isinstance(lr.sampler, Float._LogUniform)
    w_q = space["env"]["w_q"]
    assert isinstance(w_q, Float) and (w_q.lower, w_q.upper) == (0.5, 2.0)
    assert isinstance(space["env"]["channel"]["fading"], Categorical)
    assert space["env"]["channel"]["fading"].categories == ["none", "rayleigh"]
    seed = space["algorithm"]["seed"]
    assert isinstance(seed, Integer) and (seed.lower, seed.upper) == (0, 100)
    assert space["env"]["episode_len"] == 7  # a plain value is a fixed override
    assert spec.grid_points() == 3 and spec.trial_count() == 3
    assert set(spec.swept) == {"env.dynamics.mean_db", "algorithm.lr", "env.w_q", "env.channel.fading",
                               "algorithm.seed"}


def test_tune_expands_grid_times_samples():
    from ray.tune.search.variant_generator import generate_variants

    spec = SweepSpec.from_dict({"name": "n", "num_samples": 2, "params": {
        "env.users": {"grid_search": [1, 4]}, "env.bandwidth_hz": {"grid_search": [5e6, 2e7]},
        "algorithm.lr": {"loguniform": [1e-4, 1e-2]}}})
    configs = [config for _ in range(spec.num_samples) for _, config in generate_variants(spec.param_space())]
    assert len(configs) == spec.trial_count() == 8
    assert {(c["env"]["users"], c["env"]["bandwidth_hz"]) for c in configs} == {(1, 5e6), (1, 2e7), (4, 5e6), (4, 2e7)}
    assert all(1e-4 <= c["algorithm"]["lr"] <= 1e-2 for c in configs)


def test_representatives_cover_values_and_range_ends():
    spec = SweepSpec.from_dict({"name": "n", "params": {
        "a.x": {"grid_search": [1, 2]}, "a.y": {"uniform": [0.0, 1.0]}, "b": {"randint": [3, 6]}}})
    reps = spec.representative_overrides()
    assert len(reps) == 2 * 2 * 2
    assert {(r["a"]["x"], r["a"]["y"], r["b"]) for r in reps} == {
        (x, y, b) for x in (1, 2) for y in (0.0, 1.0) for b in (3, 5)}
    many = SweepSpec.from_dict({"name": "n", "params": {f"p{i}": {"choice": [1, 2, 3]} for i in range(6)}})
    reps = many.representative_overrides(limit=64)  # 3^6 > 64: each value once instead of the product
    assert len(reps) == 1 + 6 * 2
    rng = random.Random(0)
    d = parse_domain("x", {"loguniform": [1e-3, 1.0]})
    assert all(1e-3 <= d.sample(rng) <= 1.0 for _ in range(100))


def test_overrides_merge_deep_and_flatten_for_mlflow():
    base = {"env": {"w_q": 1.0, "dynamics": {"kind": "gauss_markov", "mean_db": 15}}, "algorithm": {"lr": 1e-3}}
    merged = apply_overrides(base, {"env": {"dynamics": {"mean_db": 0}}})
    assert merged["env"]["dynamics"] == {"kind": "gauss_markov", "mean_db": 0}
    assert merged["env"]["w_q"] == 1.0 and base["env"]["dynamics"]["mean_db"] == 15
    assert flatten({"env": {"dynamics": {"mean_db": 0}}, "a": 1}, sep="/") == {"env/dynamics/mean_db": 0, "a": 1}


@pytest.mark.parametrize("raw, message", [
    ([1, 2], "sweep must be a mapping"),
    ({"name": "s", "params": {"x": 1}, "sheduler": "asha"}, "unknown sweep keys ['sheduler']"),
    ({"name": "bad name!", "params": {"x": 1}}, "sweep.name"),
    ({"name": "s", "mode": "maximise", "params": {"x": 1}}, "sweep.mode must be one of 'max' or 'min', got 'maximise'"),
    ({"name": "s", "searcher": "grid", "params": {"x": 1}}, "sweep.searcher must be one of"),
    ({"name": "s", "searcher": "optuna", "params": {"x": 1}}, "needs the 'optuna' package"),
    ({"name": "s", "scheduler": "pbt", "params": {"x": 1}}, "sweep.scheduler must be one of"),
    ({"name": "s", "num_samples": 0, "params": {"x": 1}}, "sweep.num_samples must be greater than or equal to 1, got 0"),
    ({"name": "s", "cpus_per_trial": 0, "params": {"x": 1}}, "sweep.cpus_per_trial"),
    ({"name": "s", "max_concurrent_trials": 1.5, "params": {"x": 1}}, "sweep.max_concurrent_trials"),
    ({"name": "s"}, "sweep.params is required"),
    ({"name": "s", "params": {}}, "sweep.params must map dotted spec paths"),
    ({"name": "s", "params": {"x": {"grid_search": []}}}, "sweep.params.x.grid_search must be a non-empty list"),
    ({"name": "s", "params": {"x": {"grid_search": 3}}}, "sweep.params.x.grid_search must be a non-empty list"),
    ({"name": "s", "params": {"x": {"uniform": [1.0]}}}, "sweep.params.x.uniform must be [low, high]"),
    ({"name": "s", "params": {"x": {"uniform": [2.0, 1.0]}}}, "needs low < high"),
    ({"name": "s", "params": {"x": {"uniform": ["a", 1.0]}}}, "sweep.params.x.uniform[0] must be a number"),
    ({"name": "s", "params": {"x": {"loguniform": [0.0, 1.0]}}}, "needs 0 < low < high"),
    ({"name": "s", "params": {"x": {"randint": [0.5, 3]}}}, "sweep.params.x.randint[0] must be an integer"),
    ({"name": "s", "params": {"x": {"gridsearch": [1, 2]}}}, "unknown search domain 'gridsearch'"),
    ({"name": "s", "params": {"env": 1, "env.w_l": 2}}, "overlap"),
    ({"name": "s", "params": {"env..w": 1}}, "must be a dotted path"),
    ({"name": "s", "params": {"sweep.name": 1}}, "cannot sweep the sweep section"),
])
def test_bad_sweep_sections_name_the_field(raw, message):
    with pytest.raises(ValueError, match=None) as err:
        SweepSpec.from_dict(raw)
    assert message in str(err.value), str(err.value)


def test_model_based_searcher_rejects_grid(monkeypatch):
    import splitlab.platform.search_space as ss

    monkeypatch.setattr(ss.importlib.util, "find_spec", lambda name: object())  # pretend optuna is installed
    with pytest.raises(ValueError, match="cannot expand grid_search"):
        SweepSpec.from_dict({"name": "s", "searcher": "optuna", "params": {"x": {"grid_search": [1, 2]}}})
    ok = SweepSpec.from_dict({"name": "s", "searcher": "optuna", "params": {"x": {"choice": [1, 2]}}})
    assert ok.searcher == "optuna"


def test_load_plan_validates_every_value_with_the_experiment_validator(tmp_path):
    seen = []

    def validate(spec):
        seen.append(spec["env"]["w_l"])
        if spec["env"]["w_l"] < 0:
            raise ValueError(f"w_l must be in [0.0, inf], got {spec['env']['w_l']}")

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"env": {"w_l": 0.5}, "sweep": {"params": {"env.w_l": {"grid_search": [0.0, 1.0]}}}}))
    plan = load_plan(path, validate=validate)
    assert plan.sweep.name == "s" and plan.base == {"env": {"w_l": 0.5}} and sorted(seen) == [0.0, 1.0]
    path.write_text(yaml.safe_dump({"env": {"w_l": 0.5}, "sweep": {"params": {"env.w_l": {"uniform": [-1.0, 1.0]}}}}))
    with pytest.raises(ValueError, match=r"invalid with sweep values env\.w_l=-1\.0: w_l must be in"):
        load_plan(path, validate=validate)
    path.write_text(yaml.safe_dump({"env": {"w_l": 0.5}}))
    with pytest.raises(ValueError, match="no 'sweep' section"):
        load_plan(path, validate=validate)
    with pytest.raises(FileNotFoundError):
        load_plan(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["network_sweep.yaml", "hparam_sweep.yaml"])
def test_shipped_sweep_specs_validate(name):
    plan = load_plan(ROOT / "tune_configs" / name)
    assert plan.sweep.trial_count() >= 2
    assert all(isinstance(d, Domain) for d in plan.sweep.swept.values())


def test_cli_dry_run_and_bad_spec_exit_before_ray(tmp_path, capsys):
    from splitlab.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"env": {}, "sweep": {"params": {"env.w_l": {"uniform": [1, 0]}}}}))
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(bad)])
    assert exit_.value.code == 2
    assert "sweep.params.env.w_l.uniform needs low < high" in capsys.readouterr().err
    assert main(["sweep", str(ROOT / "tune_configs" / "network_sweep.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "grid_search" in out and "trials" in out
