"""Typed configs: one `--set` on every command, `--print-config`, the shipped YAMLs, the schema and its reference."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from splitlab.cli import main
from splitlab.config import ConfigError, apply_settings, yaml_value
from splitlab.config_docs import configs, markdown
from splitlab.platform.spec import ExperimentSpec, SweepFile, load_spec, read_spec_file
from splitlab.serve.config import ServeConfig, read_serve_file

ROOT = Path(__file__).resolve().parents[1]
TUNE_CONFIGS = sorted((ROOT / "tune_configs").glob("*.yaml"))


def _printed(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=[p.stem for p in TUNE_CONFIGS])
def test_every_shipped_spec_validates(path):
    raw = read_spec_file(path)
    raw.setdefault("name", path.stem)
    model = SweepFile if "sweep" in raw else ExperimentSpec
    spec = model.from_dict(raw)
    assert spec.name == raw["name"] and spec.quality.kind == raw["quality"]["kind"]
    assert model.from_dict(spec.to_dict()).to_dict() == spec.to_dict()  # the resolved spec round-trips


def test_shipped_serve_config_validates_with_its_deployments():
    config, deployments = read_serve_file(ROOT / "serve_config.yaml")
    assert config.max_split == 15 and config.default_split == 10
    assert set(deployments) == {"SplitIngress", "SplitPolicy", "UEHalf", "EdgeHalf"}
    assert deployments["EdgeHalf"]["autoscaling_config"]["max_replicas"] == 4


def test_serve_builds_the_app_with_the_files_deployment_options():
    from splitlab.serve.app import build_app

    config, deployments = read_serve_file(ROOT / "serve_config.yaml")
    app = build_app(config.replace(model="tiny-llama", max_split=2, default_split=1), deployments)
    ingress = app._bound_deployment
    ue = ingress.init_args[1]._bound_deployment
    edge = ue.init_args[1]._bound_deployment
    assert ingress.ray_actor_options["num_cpus"] == 0.1
    assert edge._deployment_config.autoscaling_config.max_replicas == 4  # the file's, not ServeConfig's 2
    plain = build_app(config.replace(model="tiny-llama", max_split=2, default_split=1))
    plain_edge = plain._bound_deployment.init_args[1]._bound_deployment.init_args[1]._bound_deployment
    assert plain_edge._deployment_config.autoscaling_config.max_replicas == config.edge_max_replicas == 2


def test_train_set_types_values_by_the_field(capsys):
    out = _printed(capsys, ["train", str(ROOT / "tune_configs/dyna.yaml"), "--set", "env.candidate_ks=[0,3,6]",
                            "--set", "algorithm.lr=1e-3", "--set", "quality.model=0010", "--set", "dyna.value_range=null",
                            "--set", "evaluation.every=2"])
    assert out["env"]["candidate_ks"] == [0, 3, 6] and out["algorithm"]["lr"] == 0.001
    assert out["quality"]["model"] == "0010"  # a string field keeps the text, not YAML's octal 8
    assert out["dyna"]["value_range"] is None and out["evaluation"]["every"] == 2
    assert out["algorithm"]["iterations"] == 15 and out["surrogate"]["members"] == 5  # the whole resolved spec


@pytest.mark.parametrize("setting, message", [
    ("algorithm.iterations=ten", "algorithm.iterations must be an integer, got 'ten'"),
    ("algorithm.lrr=1", r"unknown algorithm keys \['lrr'\]; accepted keys: \['name', 'iterations'"),
    ("env.candidate_ks=[0,0]", "env.candidate_ks must not repeat a split point"),
    ("mode=mbpo", "mode must be one of 'paper', 'dyna' or 'model_free', got 'mbpo'"),
])
def test_train_bad_set_exits_2_naming_the_key(capsys, setting, message):
    import re

    with pytest.raises(SystemExit) as exc:
        main(["train", str(ROOT / "tune_configs/dyna.yaml"), "--set", setting, "--print-config"])
    assert exc.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_sweep_set_reaches_the_base_spec_and_the_sweep_section(capsys):
    out = _printed(capsys, ["sweep", str(ROOT / "tune_configs/network_sweep.yaml"), "--set", "sweep.num_samples=3",
                            "--set", "algorithm.iterations=2"])
    assert out["sweep"]["num_samples"] == 3 and out["algorithm"]["iterations"] == 2
    assert out["sweep"]["name"] == "network-sweep"


def test_serve_set_and_config_file(capsys):
    out = _printed(capsys, ["serve", "--config", str(ROOT / "serve_config.yaml"), "--set", "max_split=12",
                            "--set", "policy_grid=null", "--set", "model=0010"])
    assert out["args"]["max_split"] == 12 and out["args"]["policy_grid"] is None
    assert out["args"]["model"] == "0010" and out["args"]["default_split"] == 10  # the file's args kept
    assert {d["name"] for d in out["deployments"]} == {"SplitIngress", "SplitPolicy", "UEHalf", "EdgeHalf"}
    with pytest.raises(SystemExit):
        main(["serve", "--set", "max_split=ten", "--print-config"])
    assert "max_split must be an integer, got 'ten'" in capsys.readouterr().err


def test_analyze_and_demo_set(capsys):
    out = _printed(capsys, ["analyze", "--tokens", "64", "--set", "channel_settings.fading=rayleigh",
                            "--set", "splits=[0,2]", "--set", "snr_db=[5,10]"])
    assert out["tokens"] == 64 and out["channel_settings"] == {"fading": "rayleigh"}
    assert out["splits"] == [0, 2] and out["snr_db"] == [5.0, 10.0] and out["window"] == 128
    assert _printed(capsys, ["demo", "--set", "quick=true", "--model", "tiny-llama"]) == {
        "model": "tiny-llama", "quick": True, "out": "runs/demo", "tracking_uri": None}
    with pytest.raises(SystemExit):
        main(["analyze", "--set", "channel_settings.fading=sometimes", "--print-config"])
    assert "fading must be one of 'none', 'rayleigh' or 'nakagami', got 'sometimes'" in capsys.readouterr().err


def test_set_values_are_yaml_and_strings_stay_text():
    assert yaml_value("1e-3") == 0.001 and yaml_value("[1, 2]") == [1, 2] and yaml_value("null") is None
    assert yaml_value("none") is None and yaml_value("true") is True and yaml_value("abc") == "abc"
    cfg = apply_settings(ServeConfig, {}, [("model", "123"), ("max_split", "7"), ("wait_link", "true")])
    assert (cfg.model, cfg.max_split, cfg.wait_link) == ("123", 7, True)
    with pytest.raises(ConfigError, match="wait_link must be true or false, got 'maybe'"):
        apply_settings(ServeConfig, {}, [("wait_link", "maybe")])


def test_load_spec_takes_typed_overrides_too(tmp_path):
    spec = load_spec(ROOT / "tune_configs/dyna.yaml", {"algorithm.iterations": 3, "env.w_l": 0.0})
    assert spec.algorithm.iterations == 3 and spec.env.w_l == 0.0


@pytest.mark.parametrize("name", list(configs()))
def test_schema_lists_every_field_with_its_description(capsys, name):
    assert main(["config", "schema", name]) == 0
    schema = json.loads(capsys.readouterr().out)
    model = configs()[name][0]
    assert set(model.model_fields) <= set(schema["properties"])
    described = [k for k, v in schema["properties"].items() if v.get("description")]
    assert len(described) >= len(model.model_fields) - 1  # every field documented (``kind`` tags may not be)


def test_config_reference_is_current():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == markdown(), "docs/config.md is stale: run `splitlab config docs` and commit it"
    for name, (model, _) in configs().items():
        assert f"## `{name}`" in committed
        for key in model.model_fields:
            assert f"`{key}`" in committed or f".{key}`" in committed
