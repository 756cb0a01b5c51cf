"""The wireless env's privacy and energy terms: a measured leakage table sets the feasible splits."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from splitlab.envs import SplitEnv
from splitlab.envs.split_tables import SplitTable

# A hand-made quality grid: perplexity per k at two SNRs, clean perplexity 20.
GRID = {"model": "hand", "num_layers": 4, "hidden_size": 64, "ppl_clean": 20.0,
        "rows": [{"k": k, "channel": "awgn", "param": "snr_db", "value": v, "ppl_mean": p}
                 for k, ps in {0: [21.0, 20.0], 2: [22.0, 20.5], 4: [23.0, 21.0]}.items()
                 for v, p in zip([0.0, 30.0], ps)]}
BASE = {"preset": "wireless", "episode_len": 3, "reward_model": {"kind": "grid", "grid": GRID},
        "dynamics": {"kind": "gauss_markov", "mean_db": 20.0, "std_db": 0.0}, "snr_estimation_std_db": 0.0,
        "ue_budget_range": [1.0, 1.0], "candidate_ks": [0, 2, 4]}
# What benchmarks/privacy_cost.py writes: a row per k with the measured leakage and per-profile energy.
ROWS = [{"k": 0, "leakage_learned_top1": 0.99, "energy_mj_per_token": {"phone": 0.3}},
        {"k": 2, "leakage_learned_top1": 0.55, "energy_mj_per_token": {"phone": 1.0}},
        {"k": 4, "leakage_learned_top1": 0.20, "energy_mj_per_token": {"phone": 2.0}}]


@pytest.fixture()
def results(tmp_path):
    path = tmp_path / "privacy_cost.json"
    path.write_text(json.dumps({"rows": ROWS}))
    return str(path)


@pytest.mark.parametrize("budget, feasible", [(1.0, (0, 2, 4)), (0.6, (2, 4)), (0.5, (4,))])
def test_the_measured_leakage_table_sets_the_feasible_splits(results, budget, feasible):
    env = SplitEnv({**BASE, "privacy_table": {"path": results, "key": "leakage_learned_top1"},
                    "privacy_budget": budget})
    assert env.candidate_ks == feasible and env.action_space.n == len(feasible)
    env.reset(seed=0)
    for action in range(len(feasible)):
        _, _, _, _, info = env.step(action)
        assert info["privacy/leakage"] <= budget and info["reward/privacy"] == 0.0


def test_penalty_mode_keeps_every_split_and_charges_the_excess(results):
    plain = SplitEnv(BASE)
    priced = SplitEnv({**BASE, "privacy_table": {"path": results, "key": "leakage_learned_top1"},
                       "privacy_budget": 0.5, "privacy_mode": "penalty", "w_p": 4.0})
    assert priced.candidate_ks == (0, 2, 4)
    plain.reset(seed=0)
    priced.reset(seed=0)
    excess = [4.0 * max(0.0, v - 0.5) for v in (0.99, 0.55, 0.20)]
    assert priced.action_rewards() == pytest.approx(plain.action_rewards() - excess)
    _, r, _, _, info = priced.step(0)
    assert info["reward/privacy"] == pytest.approx(-4.0 * 0.49) and r == pytest.approx(priced_total(info))


def priced_total(info: dict) -> float:
    return sum(info[f"reward/{t}"] for t in ("quality", "compute", "latency", "privacy", "energy"))


def test_energy_term_is_normalised_by_the_largest_entry(results):
    plain = SplitEnv(BASE)
    env = SplitEnv({**BASE, "energy_table": {"path": results, "key": "energy_mj_per_token", "profile": "phone"},
                    "w_e": 0.5})
    plain.reset(seed=0)
    env.reset(seed=0)
    assert env.action_rewards() == pytest.approx(plain.action_rewards() - 0.5 * np.array([0.3 / 2.0, 1.0 / 2.0, 1.0]))
    _, _, _, _, info = env.step(1)
    assert info["cost/ue_energy"] == 1.0 and math.isclose(info["reward/energy"], -0.25)


def test_bad_privacy_settings_are_named(results):
    with pytest.raises(ValueError, match="no candidate split meets privacy_budget=0.1"):
        SplitEnv({**BASE, "privacy_table": {0: 0.9, 2: 0.5, 4: 0.3}, "privacy_budget": 0.1})
    with pytest.raises(ValueError, match="needs a privacy_table"):
        SplitEnv({**BASE, "privacy_budget": 0.5})
    with pytest.raises(ValueError, match=r"has no value for split points \[4\]"):
        SplitEnv({**BASE, "privacy_table": {0: 0.9, 2: 0.5}, "privacy_mode": "penalty"})
    with pytest.raises(ValueError, match="set profile to one of \\['phone'\\]"):
        SplitTable.from_spec({"path": results, "key": "energy_mj_per_token"}, "energy_table")
    with pytest.raises(ValueError, match="privacy_mode must be one of"):
        SplitEnv({**BASE, "privacy_mode": "mask"})
    with pytest.raises(ValueError, match="needs an energy_table"):
        SplitEnv({**BASE, "w_e": 1.0})


def test_the_privacy_preset_takes_its_feasible_splits_from_the_measured_table():
    """tune_configs/privacy.yaml allows k = 0; the committed SmolLM2 leakage table and the budget decide."""
    from pathlib import Path

    from splitlab.platform.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "tune_configs" / "privacy.yaml")
    assert 0 in spec.env.candidate_ks
    measured = {r["k"]: r["leakage_learned_top1"]
                for r in json.loads((root / "benchmarks/results/privacy_cost.json").read_text())["rows"]}
    from splitlab.platform.run_env import env_config

    env = SplitEnv(env_config(spec, {"kind": "synthetic", "channel": "awgn", "num_layers": 30, "hidden_size": 576}))
    budget = spec.env.privacy_budget
    assert env.candidate_ks == tuple(k for k in spec.env.candidate_ks if measured[k] <= budget)
    assert 0 < len(env.candidate_ks) < len(spec.env.candidate_ks)
