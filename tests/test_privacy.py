"""Inversion attacks: exact at k = 0 on distinct embeddings, learned attack scored only on held-out text, CIs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from splitlab.channel import Channel, ChannelConfig
from splitlab.llm import SplitModel
from splitlab.privacy import (Hits, NearestNeighbourInverter, RidgeInverter, input_embeddings, mean_ci,
                              leakage_grid, pooled, split_windows)


def _windows(model: SplitModel, n: int, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, model.model.config.vocab_size, (n, width), generator=torch.Generator().manual_seed(seed))


def test_nearest_neighbour_at_k0_recovers_the_tokens(tiny_llama: SplitModel):
    emb = input_embeddings(tiny_llama)
    sample = emb[:: 97]  # rows are distinct, so the embedding output names its token
    assert torch.cdist(sample, sample).fill_diagonal_(1.0).min() > 0
    windows = _windows(tiny_llama, 4)
    hits = leakage_grid(tiny_llama, windows, None, {"k0": (0, None, None)}, attacks=["nn"])["k0"]["nn"]
    assert hits.top1.shape == (4, 32)
    assert hits.top1.mean() >= 0.99 and hits.top5.mean() >= hits.top1.mean()


def test_noise_is_a_defence_at_k0(tiny_llama: SplitModel):
    windows = _windows(tiny_llama, 4, seed=1)
    noisy = Channel(ChannelConfig(kind="awgn", snr_db=-10.0)).as_corruption(np.random.default_rng(0))
    res = leakage_grid(tiny_llama, windows, None, {"clean": (0, None, None), "noisy": (0, noisy, None)},
                       attacks=["nn"])
    assert res["noisy"]["nn"].top1.mean() < res["clean"]["nn"].top1.mean() - 0.2


def test_learned_attack_fits_on_fit_text_and_is_scored_on_eval_text(tiny_llama: SplitModel, monkeypatch):
    windows = _windows(tiny_llama, 10, seed=2)
    eval_w, fit_w = split_windows(windows, 3)
    assert not set(map(tuple, eval_w.tolist())) & set(map(tuple, fit_w.tolist()))
    seen: dict[str, torch.Tensor] = {}
    fit, top = RidgeInverter.fit, RidgeInverter.top
    monkeypatch.setattr(RidgeInverter, "fit", lambda self, v, ids: (seen.__setitem__("fit", ids), fit(self, v, ids))[1])
    monkeypatch.setattr(RidgeInverter, "top", lambda self, v, n=5: (seen.__setitem__("scored", v), top(self, v, n))[1])
    res = leakage_grid(tiny_llama, eval_w, fit_w, {"k2": (2, None, None)})
    assert torch.equal(seen["fit"], fit_w.flatten())
    assert seen["scored"].shape[0] == eval_w.numel()
    assert res["k2"]["learned"].top1.shape == eval_w.shape
    # After 2 random layers the residual stream still carries the embedding: both attacks recover most tokens.
    assert res["k2"]["learned"].top1.mean() > 0.9


def test_ridge_inverts_a_hidden_linear_map_on_unseen_rows():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(200, 16, generator=g)
    mix = torch.randn(16, 16, generator=g)
    ids_fit, ids_eval = torch.randint(0, 200, (2000,), generator=g), torch.randint(0, 200, (300,), generator=g)
    ridge = RidgeInverter(emb).fit(emb[ids_fit] @ mix + 5.0, ids_fit)
    assert ridge.alpha in (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    guesses = ridge.top(emb[ids_eval] @ mix + 5.0)
    assert (guesses[:, 0] == ids_eval).float().mean() > 0.99
    # The nearest neighbour on the mixed vectors is lost without the learned map.
    assert (NearestNeighbourInverter(emb).top(emb[ids_eval] @ mix)[:, 0] == ids_eval).float().mean() < 0.5


def test_bootstrap_interval_and_pooling_over_seeds():
    per_seq = np.r_[np.ones(50), np.zeros(50)]
    lo, hi = mean_ci(per_seq, seed=0)
    assert lo < 0.5 < hi and 0.05 < hi - lo < 0.3  # binomial: +-1.96 * sqrt(.25 / 100) = +-0.098
    assert mean_ci(np.full(10, 0.7)) == (pytest.approx(0.7), pytest.approx(0.7))
    a = Hits(np.array([[1, 1], [0, 0]], bool), np.ones((2, 2), bool))
    b = Hits(np.array([[1, 0], [0, 0]], bool), np.ones((2, 2), bool))
    leak = pooled([a, b])
    assert (leak.top1, leak.top5, leak.tokens, leak.sequences, leak.seeds) == (0.375, 1.0, 4, 2, 2)
    assert set(leak.as_row("leak_nn")) >= {"leak_nn_top1", "leak_nn_top1_lo", "leak_nn_top5_hi"}


def test_bad_inputs_are_named(tiny_llama: SplitModel):
    w = _windows(tiny_llama, 2)
    with pytest.raises(ValueError, match="attacks must be"):
        leakage_grid(tiny_llama, w, None, {"x": (0, None, None)}, attacks=["gradient"])
    with pytest.raises(ValueError, match="needs fit_windows"):
        leakage_grid(tiny_llama, w, None, {"x": (0, None, None)})
    with pytest.raises(ValueError, match="n_eval must leave"):
        split_windows(w, 2)
    with pytest.raises(ValueError, match=r"vectors must be \[N, 64\]"):
        NearestNeighbourInverter(input_embeddings(tiny_llama)).top(torch.zeros(3, 5))
    with pytest.raises(RuntimeError, match="needs fit"):
        RidgeInverter(torch.zeros(4, 2)).top(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="non-empty 1-D sample"):
        mean_ci(np.zeros((0,)))


def test_analyze_privacy_adds_leakage_rows_plots_and_metrics(tmp_path, monkeypatch, capsys):
    import json

    import mlflow

    from splitlab.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["analyze", "--model", "tiny-llama", "--tokens", "128", "--window", "64", "--seeds", "2",
                 "--splits", "0,4", "--channels", "awgn", "--snr=-10,30", "--privacy", "--privacy-fit-tokens", "256",
                 "--out", "out"])
    assert code == 0
    grid = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert (grid["privacy"]["tokens_eval"], grid["privacy"]["tokens_fit"]) == (128, 256)
    for row in grid["rows"]:
        assert row["leak_nn_top1_lo"] <= row["leak_nn_top1"] <= row["leak_nn_top1_hi"]
        assert 0 <= row["leak_learned_top5"] <= 1
    by = {(r["k"], r["value"]): r for r in grid["rows"]}
    assert by[0, -10.0]["leak_nn_top1"] < by[0, 30.0]["leak_nn_top1"]  # noise hides the tokens
    assert grid["privacy"]["clean"][0]["leak_nn_top1"] >= 0.99  # k = 0 sends the embeddings
    for name in ("privacy.csv", "privacy_awgn.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    assert "token leakage, clean channel (128 held-out tokens" in capsys.readouterr().out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["splitlab-analysis"]).iloc[0]
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "privacy/leak_nn_top1_clean")
    assert sorted(m.step for m in history) == [0, 4]
