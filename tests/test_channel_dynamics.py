"""SNR traces for episodes: Gauss-Markov statistics and path loss with mobility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitlab.channel import GaussMarkovSNR, PathLossMobility
from splitlab.channel.dynamics import reflect_into


def test_gauss_markov_stationary_mean_std_and_lag1_correlation():
    model = GaussMarkovSNR(mean_db=12.0, std_db=4.0, corr=0.8)
    x = model.trace(200_000, np.random.default_rng(0))
    # AR(1) inflates the standard error of the mean by sqrt((1 + a) / (1 - a)) = 3.
    se_mean = 4.0 / math.sqrt(x.size) * 3.0
    assert abs(x.mean() - 12.0) < 4 * se_mean
    assert abs(x.std() / 4.0 - 1.0) < 0.02
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert abs(lag1 - 0.8) < 0.01
    lag3 = np.corrcoef(x[:-3], x[3:])[0, 1]
    assert abs(lag3 - 0.8**3) < 0.02


def test_gauss_markov_start_and_extremes():
    rng = np.random.default_rng(1)
    frozen = GaussMarkovSNR(corr=1.0, initial_db=7.0).trace(50, rng)
    assert np.all(frozen == 7.0)
    white = GaussMarkovSNR(mean_db=0.0, std_db=1.0, corr=0.0).trace(50_000, rng)
    assert abs(np.corrcoef(white[:-1], white[1:])[0, 1]) < 0.02
    # Starting far from the mean, the trace decays towards it at rate corr per step.
    starts = np.array([GaussMarkovSNR(mean_db=0.0, std_db=1.0, corr=0.5, initial_db=40.0).trace(3, rng) for _ in range(2000)])
    assert np.all(starts[:, 0] == 40.0)
    assert abs(starts[:, 1].mean() - 20.0) < 0.1 and abs(starts[:, 2].mean() - 10.0) < 0.1


def test_gauss_markov_fading_on_top_lowers_the_db_mean():
    x = GaussMarkovSNR(mean_db=10.0, std_db=0.0, fading="rayleigh").trace(100_000, np.random.default_rng(2))
    # E[10 log10 g] for exponential g is -10 * euler_gamma / ln 10 = -2.51 dB.
    assert abs(x.mean() - (10.0 - 2.5068)) < 0.05


def test_path_loss_monotone_in_distance_and_documented_range():
    model = PathLossMobility()
    d = np.linspace(model.d_min_m, model.d_max_m, 200)
    loss = model.path_loss_db(d)
    assert np.all(np.diff(loss) > 0)
    assert np.all(np.diff(model.mean_snr_db(d)) < 0)
    # Exponent n: 10 n dB per decade of distance.
    assert model.path_loss_db(100.0) - model.path_loss_db(10.0) == pytest.approx(30.0)
    assert 40 < float(model.mean_snr_db(10.0)) < 48 and -4 < float(model.mean_snr_db(300.0)) < 4


def test_mobility_trace_stays_in_bounds_and_shadowing_has_its_std():
    model = PathLossMobility(step_std_m=40.0, shadowing_decorrelation_m=1.0)
    snr, distance = model.trace_with_distance(50_000, np.random.default_rng(3))
    assert distance.min() >= model.d_min_m and distance.max() <= model.d_max_m
    assert distance.max() - distance.min() > 0.9 * (model.d_max_m - model.d_min_m)
    shadowing = model.mean_snr_db(distance) - snr
    assert abs(shadowing.mean()) < 0.1 and abs(shadowing.std() / model.shadowing_std_db - 1) < 0.03


def test_standing_still_keeps_distance_and_shadowing():
    snr, distance = PathLossMobility(step_std_m=0.0, initial_distance_m=50.0).trace_with_distance(20, np.random.default_rng(4))
    assert np.all(distance == 50.0)
    assert np.all(snr == snr[0])


def test_reflect_into_folds_at_both_walls():
    assert np.allclose(reflect_into(np.array([5.0, 12.0, -3.0, 25.0, 31.0]), 0.0, 10.0), [5.0, 8.0, 3.0, 5.0, 9.0])


@pytest.mark.parametrize("model", [GaussMarkovSNR(fading="nakagami", nakagami_m=2.0), PathLossMobility(fading="rayleigh")])
def test_traces_are_deterministic_under_a_seed(model):
    a = model.trace(100, np.random.default_rng(5))
    b = model.trace(100, np.random.default_rng(5))
    c = model.trace(100, np.random.default_rng(6))
    assert a.shape == (100,) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert model.trace(0, np.random.default_rng(5)).shape == (0,)
