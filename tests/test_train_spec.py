"""Experiment specs: the shipped ones load; bad ones fail before Ray starts, naming field, value, accepted."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from splitlab.platform.spec import ExperimentSpec, load_spec

CONFIGS = Path(__file__).resolve().parents[1] / "tune_configs"
GOOD = {
    "name": "t",
    "mode": "dyna",
    "quality": {"kind": "synthetic", "channel": "awgn"},
    "env": {"preset": "wireless", "candidate_ks": [3, 6, 9]},
    "algorithm": {"iterations": 2},
}


@pytest.mark.parametrize("name", ["paper", "dyna", "multi_user"])
def test_shipped_specs_validate(name):
    spec = load_spec(CONFIGS / f"{name}.yaml")
    assert spec.name == name
    assert spec.quality.kind == "live" and spec.quality.model == "smollm2"
    assert spec.run_dir == Path("runs/train") / name
    assert ExperimentSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()  # round trip


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in GOOD.items() if k != "name"}))
    spec = load_spec(path, {"algorithm.lr": 0.01, "dyna.budget": 40, "env.w_l": 0.0})
    assert spec.name == "x" and spec.algorithm.lr == 0.01 and spec.dyna.budget == 40 and spec.env.w_l == 0.0
    assert spec.algorithm.name == "ppo" and spec.surrogate.hidden == (128, 128) and spec.param == "snr_db"


def _with(path: str, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return raw


@pytest.mark.parametrize("raw, message", [
    (_with("mode", "mbpo"), "mode must be one of 'paper', 'dyna' or 'model_free', got 'mbpo'"),
    (_with("algorithm.name", "sac"), "algorithm.name must be one of 'ppo' or 'dqn', got 'sac'"),
    (_with("algorithm.lr", -1), "algorithm.lr must be greater than 0, got -1"),
    (_with("algorithm.iterations", 2.5), "algorithm.iterations must be an integer"),
    (_with("algorithm.minibatch_size", 5000), "algorithm.minibatch_size must be at most train_batch_size"),
    (_with("algorithm.hiden", [4]), r"unknown algorithm keys \['hiden'\]; accepted keys: \['name', 'iterations'"),
    (_with("dyna.budget", 4), "dyna.budget must be at least dyna.initial_evals=16, got 4"),
    (_with("dyna.value_range", [5, 1]), "dyna.value_range must have low < high"),
    (_with("surrogate.members", 0), "surrogate.members"),
    (_with("quality.kind", "oracle"), r"quality.kind must be one of .*'live'.*, got 'oracle'"),
    (_with("quality.model_name", "x"), r"unknown quality keys \['model_name'\]; accepted keys: \['kind', 'channel'"),
    (_with("env.preset", "paper"), "env.preset 'paper' needs a quality measured over 'rho'"),
    (_with("env.w_q", -1.0), "w_q"),
    (_with("env.reward_model", {"kind": "synthetic"}), "env.reward_model is set by the mode"),
    (_with("env.env", "cells"), "env.env must be one of 'split', 'multi_user', got 'cells'"),
    (_with("evaluation.truth", {"kind": "grid"}), "evaluation.truth: a grid reward model needs exactly one of 'path'"),
    (_with("paper.grid", {"kind": "live"}), "paper.grid.kind must be one of 'grid', 'synthetic', got 'live'"),
    (_with("name", "a/b"), "name must be a non-empty run name without '/'"),
    ({**GOOD, "sweep": {}}, r"unknown spec sections \['sweep'\] \(a sweep section is run by `splitlab sweep`\)"),
    ({k: v for k, v in GOOD.items() if k != "quality"}, "quality is required"),
    (_with("algorithm.name", "dqn") | {"env": {"env": "multi_user"}}, "dqn' is offered for env 'split' only"),
])
def test_bad_specs_fail_naming_the_field(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentSpec.from_dict(raw)


def test_load_spec_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("algorithm.gamma", 2.0)))
    with pytest.raises(ValueError, match="bad.yaml: algorithm.gamma must be less than or equal to 1, got 2.0"):
        load_spec(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "missing.yaml")
