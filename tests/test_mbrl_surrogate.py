"""The reward surrogate: fitting, uncertainty, save/load, grid fitting, Dyna's point selection (no Ray)."""
from __future__ import annotations

import numpy as np
import pytest

from splitlab.envs import GridRewardModel, QualityGrid, synthetic_grid
from splitlab.envs.synthetic import sensitivity
from splitlab.mbrl.dyna import OPTIMISM, channel_lattice, select_decisive, select_uncertain
from splitlab.mbrl.surrogate import FitReport, SurrogateConfig, SurrogateEnsemble, fit_on_grid, regression_errors

L = 30
FAST = {"members": 5, "epochs": 400, "seed": 0}


def truth(k: np.ndarray, snr_db: np.ndarray) -> np.ndarray:
    """log(PPL_k / PPL_clean) of the synthetic grid: sensitivity(k) x noise-to-signal ratio."""
    return 4.0 * sensitivity(k, L) / (1.0 + 10.0 ** (snr_db / 10.0))


def make(config=None) -> SurrogateEnsemble:
    return SurrogateEnsemble(L, 576, 20.0, "awgn", "snr_db", config=config or FAST)


@pytest.fixture(scope="module")
def fitted() -> tuple[SurrogateEnsemble, object]:
    rng = np.random.default_rng(0)
    k = rng.integers(0, L + 1, 300)
    v = rng.uniform(-5.0, 30.0, 300)
    ens = make()
    report = ens.fit(ens.features(k, v), truth(k, v))
    return ens, report


def test_fit_recovers_a_synthetic_function_on_held_out_points(fitted):
    ens, report = fitted
    assert report.n_test == 60 and report.n_train == 240
    assert report.r2 > 0.95, report
    # and on fresh points drawn from the same box
    rng = np.random.default_rng(1)
    k, v = rng.integers(0, L + 1, 200), rng.uniform(-5.0, 30.0, 200)
    mae, r2 = regression_errors(truth(k, v), ens.predict(ens.features(k, v))[0])
    assert r2 > 0.95 and mae < 0.15


def test_describe_prints_r2_only_when_enough_points_were_held_out(fitted):
    _, report = fitted
    assert report.describe() == f"MAE {report.mae:.3f} on 60 held-out points, R^2 {report.r2:.3f}"
    few = FitReport(n_train=10, n_test=2, mae=0.36, r2=-119.8, train_mae=0.1, train_r2=0.9, seconds=1.0)
    assert few.describe() == "MAE 0.360 on 2 held-out points"
    none_held = FitReport(n_train=4, n_test=0, mae=0.2, r2=0.5, train_mae=0.2, train_r2=0.5, seconds=1.0)
    assert none_held.describe() == "MAE 0.200 on 4 training points"


def test_the_reward_model_is_refitted_on_the_held_out_points_too():
    rng = np.random.default_rng(3)
    k, v = rng.integers(0, L + 1, 40), rng.uniform(-5.0, 30.0, 40)
    y = truth(k, v)
    fits = {}
    for refit_all in (False, True):
        ens = make({**FAST, "holdout": 0.5, "refit_all": refit_all})
        fits[refit_all] = (ens.fit(ens.features(k, v), y), ens)
    (held_out, only_train), (report, everything) = fits[False], fits[True]
    assert report.mae == held_out.mae and report.n_test == 20  # one held-out report either way
    errors = {name: np.abs(ens.predict(ens.features(k, v))[0] - y).mean()
              for name, ens in (("train", only_train), ("all", everything))}
    assert errors["all"] < 0.5 * errors["train"], errors  # the held-out half now informs the reward


def test_spread_grows_away_from_the_data():
    rng = np.random.default_rng(2)
    k, v = rng.integers(0, L + 1, 200), rng.uniform(0.0, 10.0, 200)  # data only at low SNR
    ens = make()
    ens.fit(ens.features(k, v), truth(k, v))
    ks = np.arange(0, L + 1, 3)
    spread = [float(ens.predict(ens.features(ks, np.full(ks.shape, s)))[1].mean()) for s in (5.0, 20.0, 40.0)]
    assert spread[0] < spread[1] < spread[2], spread
    assert spread[2] > 5 * spread[0]


def test_quality_is_ppl_clean_times_exp_mean_and_records_visits(fitted):
    ens, _ = fitted
    mean, std = ens.predict(ens.features(np.array([6]), np.array([10.0])))
    assert ens.quality(6, 10.0) == pytest.approx(20.0 * np.exp(mean[0]))
    assert ens.uncertainty(6, 10.0) == pytest.approx(std[0])
    ens.visited()
    ens.quality(3, 1.5)
    ens.quality(9, 7.0)
    assert ens.visited() == [(3, 1.5), (9, 7.0)]
    assert ens.visited() == []


def test_save_load_keeps_weights_normalisation_and_report(fitted, tmp_path):
    ens, report = fitted
    path = ens.save(tmp_path / "s.npz")
    back = SurrogateEnsemble.load(path)
    x = ens.features(np.array([0, 12, 30]), np.array([-3.0, 8.0, 25.0]))
    np.testing.assert_allclose(back.predict(x)[0], ens.predict(x)[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(back.x_mean, ens.x_mean)
    assert back.fingerprint() == ens.fingerprint()
    assert back.report.r2 == pytest.approx(report.r2)
    assert (back.num_layers, back.ppl_clean, back.param, back.config.members) == (L, 20.0, "snr_db", 5)


def test_set_state_changes_the_fingerprint_and_rejects_other_shapes(fitted):
    ens, _ = fitted
    fresh = make()
    assert fresh.fingerprint() != ens.fingerprint()
    fresh.set_state(ens.get_state())
    assert fresh.fingerprint() == ens.fingerprint()
    small = make({"members": 2, "hidden": [8]})
    with pytest.raises(ValueError, match="weight shapes"):
        small.set_state(ens.get_state())


def test_fit_on_grid_uses_every_grid_point():
    grid = GridRewardModel(QualityGrid.from_dict(synthetic_grid("awgn", num_layers=L), "awgn"))
    ens, report, n = fit_on_grid(grid, FAST, ks=range(0, L + 1, 3))
    assert n == 11 * len(grid.grid.values)
    assert report.r2 > 0.95
    assert ens.quality(9, 10.0) == pytest.approx(grid.quality(9, 10.0), rel=0.15)


@pytest.mark.parametrize("change, message", [
    ({"members": 0}, "surrogate.members"),
    ({"hidden": "128"}, "surrogate.hidden"),
    ({"holdout": 0.95}, "surrogate.holdout"),
    ({"width": 3}, r"unknown surrogate keys \['width'\]"),
    ({"split_encoding": "binary"}, "surrogate.split_encoding must be one of"),
    ({"refit_all": "yes"}, "surrogate.refit_all must be true or false"),
])
def test_bad_surrogate_config_names_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        SurrogateConfig.from_dict(change)


class _FakePool:
    """What select_uncertain needs of an EvaluationPool: its rounding and its cache."""

    def __init__(self, cached=()):
        self.cache = {self.key(k, v): (1.0, 0.0) for k, v in cached}

    def key(self, k, v):
        return int(k), round(float(v), 0)


def test_select_uncertain_prefers_disagreement_and_skips_measured_points():
    rng = np.random.default_rng(3)
    k, v = rng.integers(0, L + 1, 200), rng.uniform(0.0, 10.0, 200)
    ens = make()
    ens.fit(ens.features(k, v), truth(k, v))
    visited = [(6, 5.2), (6, 5.4), (6, 35.0), (12, 30.0), (12, 2.0)]
    chosen, std = select_uncertain(ens, visited, 2, _FakePool(cached=[(6, 35.0)]))
    assert chosen == [(12, 30.0), (12, 2.0)] or chosen[0] == (12, 30.0)
    assert (6, 35.0) not in chosen and len(chosen) == 2 and std[0] >= std[1]
    assert select_uncertain(ens, [(6, 5.1), (6, 4.9)], 5, _FakePool())[0] == [(6, 5.0)]
    # rare channels outside the design range are never measured, however uncertain
    assert select_uncertain(ens, [(6, 35.0), (6, 5.2)], 2, _FakePool(), value_range=(0.0, 30.0))[0] == [(6, 5.0)]


def test_select_decisive_measures_what_could_change_the_best_split(fitted):
    ens, _ = fitted
    ks = np.array([0, 15, 30])

    def decision(value, quality):  # one user; k = 30 costs 10 more than k = 0, far beyond any quality gap
        return (-quality - 10.0 * ks / L)[None]

    visited = [(30, 5.0), (15, 5.0), (0, 5.0), (0, 20.0)]
    chosen, gains = select_decisive(ens, visited, 4, _FakePool(), ks, decision)
    assert len(chosen) == 4 and chosen[-1] == (30, 5.0) and list(gains) == sorted(gains, reverse=True)
    # the score: the reward with optimistic quality minus the best mean reward at that channel
    members = ens.predict_members(ens.features(ks, np.full(3, 5.0)))
    mean, std = members.mean(0), members.std(0)
    best = (-mean - 10.0 * ks / L).max()
    assert gains[chosen.index((15, 5.0))] == pytest.approx(-(mean[1] - OPTIMISM * std[1]) - 5.0 - best)
    # measured and already chosen points are left out
    rest, _ = select_decisive(ens, visited, 4, _FakePool(cached=[(0, 20.0)]), ks, decision, skip=[(15, 5.0)])
    assert sorted(rest) == [(0, 5.0), (30, 5.0)]


def test_channel_lattice_gives_every_split_the_channels_quantiles():
    sample = np.random.default_rng(0).normal(12.0, 8.0, 20_000)
    points = channel_lattice([3, 9, 30], lambda q: np.quantile(sample, q), 13, np.random.default_rng(1))
    ks = [k for k, _ in points]
    assert (ks.count(3), ks.count(9), ks.count(30)) == (5, 4, 4)  # shares as even as 13 allows
    for k in (3, 9, 30):
        q = np.sort([np.mean(sample < v) for kk, v in points if kk == k])
        m = len(q)
        # one point per 1/m-quantile band, all at the same offset within its band
        assert np.allclose(np.floor(q * m), np.arange(m)) and np.ptp(q * m - np.arange(m)) < 0.05
    offsets = {k: round(min(np.mean(sample < v) for kk, v in points if kk == k), 2) for k in (3, 9, 30)}
    assert len(set(offsets.values())) == 3  # rotated per split: the splits sample different channels
