"""Reward models: the grid, the live LLM (counts and cache), the surrogate slot, and config errors."""
from __future__ import annotations

import math

import numpy as np
import pytest

from splitlab.envs import (
    GridRewardModel,
    LiveLLMRewardModel,
    QualityGrid,
    RewardModel,
    SplitEnv,
    SurrogateRewardModel,
    evaluate_policy,
    make_reward_model,
    register_reward_model,
    synthetic_grid,
)
from splitlab.envs.reward_models import REWARD_MODEL_KINDS


def test_grid_model_interpolates_log_perplexity():
    grid = QualityGrid.from_dict(synthetic_grid("awgn", num_layers=6, hidden_size=32))
    model = GridRewardModel(grid)
    assert model.param == "snr_db" and model.ks == tuple(range(7)) and model.real_evals == 0
    for k in (0, 3, 6):
        for v in (-5.0, 1.3, 12.5, 40.0):  # on, between and beyond the grid's values
            assert model.quality(k, v) == pytest.approx(grid.ppl_at(k, v))
    assert model.quality_table([0, 6], 1.3) == pytest.approx([grid.ppl_at(0, 1.3), grid.ppl_at(6, 1.3)])
    with pytest.raises(ValueError, match="k=9 is not in the measured grid"):
        model.quality(9, 0.0)


def test_grid_model_reads_grid_json(tmp_path):
    import json

    data = synthetic_grid("erasure", num_layers=4, hidden_size=16)
    (tmp_path / "grid.json").write_text(json.dumps(data))
    model = make_reward_model({"kind": "grid", "path": str(tmp_path), "channel": "erasure"})
    assert model.param == "rho" and model.num_layers == 4
    with pytest.raises(FileNotFoundError, match="run `splitlab analyze` first"):
        make_reward_model({"kind": "grid", "path": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="reward_model: .*exactly one of .path."):
        make_reward_model({"kind": "grid"})


def test_live_model_counts_evaluations_and_caches(tiny_llama):
    model = LiveLLMRewardModel(tiny_llama, channel={"kind": "awgn"}, n_tokens=128, window=32, decimals=1)
    assert model.real_evals == 0
    clean = model.ppl_clean
    assert model.real_evals == 1 and math.isfinite(clean)
    noisy = model.quality(2, 0.04)
    assert model.real_evals == 2 and noisy > 0
    assert model.quality(2, 0.01) == noisy  # same cache key (k=2, 0.0)
    assert model.real_evals == 2 and model.cache_hits == 1
    model.quality(2, 30.0)
    assert model.real_evals == 3 and model.real_eval_time_s > 0
    assert model.stats()["mbrl/real_evals"] == 3.0
    assert model.seen == {(2, 0.0), (2, 30.0)}  # the distinct points a shared cache counts (clean apart)
    # the same point from a fresh model gives the same value: seeding does not depend on query order
    again = LiveLLMRewardModel(tiny_llama, channel={"kind": "awgn"}, n_tokens=128, window=32, decimals=1)
    assert again.quality(2, 0.0) == noisy


def test_live_model_drives_an_env(tiny_llama):
    model = LiveLLMRewardModel(tiny_llama, channel={"kind": "awgn"}, n_tokens=64, window=32, decimals=0)
    env = SplitEnv({"preset": "wireless", "episode_len": 4, "candidate_ks": [0, 2, 4], "reward_model": model})
    evaluate_policy(env, lambda obs: 1, seeds=[0, 1])
    evals = model.real_evals
    assert 1 < evals <= 1 + 8  # clean + at most one per distinct (k, rounded SNR) visited
    evaluate_policy(env, lambda obs: 1, seeds=[0, 1])
    assert model.real_evals == evals  # the replay is served from the cache
    assert env.step(0)[4]["mbrl/real_evals"] >= evals


class ToySurrogate(SurrogateRewardModel):
    """log(PPL / PPL_clean) = 0.1 * (30 - snr) / (1 + k), a known function."""

    def __init__(self):
        self.num_layers, self.hidden_size, self.ppl_clean = 10, 32, 15.0
        self.channel, self.param, self.ks = "awgn", "snr_db", tuple(range(11))

    def predict(self, x):
        snr, frac = x[:, 0], x[:, 1]
        return 0.1 * (30 - snr) / (1 + frac * self.num_layers), np.full(len(x), 0.2)


def test_surrogate_slot_plugs_into_the_env():
    model = ToySurrogate()
    assert isinstance(model, RewardModel)
    assert model.quality(4, 10.0) == pytest.approx(15.0 * math.exp(0.1 * 20 / 5))
    assert model.uncertainty(4, 10.0) == 0.2
    register_reward_model("toy-surrogate", lambda: ToySurrogate())
    try:
        env = SplitEnv({"preset": "wireless", "episode_len": 3, "reward_model": {"kind": "toy-surrogate"}})
        env.reset(seed=0)
        assert env.step(2)[4]["quality/ppl"] > 15.0
    finally:
        REWARD_MODEL_KINDS.pop("toy-surrogate")


def test_live_model_rejects_a_clean_channel(tiny_llama):
    with pytest.raises(ValueError, match="reward_model.channel.kind must be one of"):
        LiveLLMRewardModel(tiny_llama, channel={"kind": "clean"})
