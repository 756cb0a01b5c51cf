"""Parameter checks: every bad input fails with a ValueError that names the parameter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from splitlab.channel import (
    ChannelConfig,
    GaussMarkovSNR,
    PathLossMobility,
    awgn,
    check_choice,
    check_finite,
    check_int,
    check_range,
    demodulate,
    erasure,
    fading_gains,
    flip_bits,
    link_cost,
    modulate,
    shannon_rate,
    theoretical_ber,
    transmit,
)
from splitlab.channel.validation import check_bool, check_hidden_states, check_rng


def test_check_range_accepts_bounds_and_returns_value():
    assert check_range("rho", 0.0, 0.0, 1.0) == 0.0
    assert check_range("rho", 1.0, 0.0, 1.0) == 1.0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [(1.5, "1.5"), (-0.1, "-0.1"), (math.nan, "finite"), (math.inf, "finite"), ("0.3", "number"), (True, "number")],
)
def test_check_range_message_names_parameter_value_and_range(value, fragment):
    with pytest.raises(ValueError) as err:
        check_range("rho", value, 0.0, 1.0)
    message = str(err.value)
    assert "rho" in message and fragment in message
    if isinstance(value, float) and math.isfinite(value):
        assert "[0.0, 1.0]" in message


def test_check_range_open_bounds_and_arrays():
    with pytest.raises(ValueError, match=r"bandwidth_hz must be in \(0.0"):
        check_range("bandwidth_hz", 0.0, 0.0, low_open=True)
    with pytest.raises(ValueError, match=r"at index \(2,\)"):
        check_range("ber", np.array([0.1, 0.2, 0.7]), 0.0, 0.5)


@pytest.mark.parametrize("value", [1.5, np.float32(1.5), np.int64(2), math.nan, -math.inf])
def test_check_range_says_the_same_of_a_scalar_and_a_0d_array(value):
    messages = []
    for form in (value, np.asarray(value)):  # scalars take a fast path
        with pytest.raises(ValueError) as err:
            check_range("snr_linear", form, 0.0, 1.0, high_open=True)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert check_range("snr_linear", np.float32(0.5), 0.0, 1.0) == np.float32(0.5)
    with pytest.raises(ValueError, match="must be a number"):
        check_range("snr_linear", np.bool_(True), 0.0, 1.0)


def test_check_finite_choice_int_bool():
    with pytest.raises(ValueError, match="snr_db must be finite"):
        check_finite("snr_db", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"modulation must be one of \('bpsk', 'qpsk', '16qam'\), got '8psk'"):
        check_choice("modulation", "8psk", ("bpsk", "qpsk", "16qam"))
    with pytest.raises(ValueError, match="max_retx must be an integer"):
        check_int("max_retx", 2.0)
    with pytest.raises(ValueError, match="max_retx must be an integer"):
        check_int("max_retx", True)
    with pytest.raises(ValueError, match=r"max_retx must be an integer in \[0, 100\], got 101"):
        check_int("max_retx", 101, 0, 100)
    with pytest.raises(ValueError, match="per_channel must be true or false"):
        check_bool("per_channel", "yes")


def test_tensor_and_rng_checks():
    with pytest.raises(ValueError, match="h must be a torch.Tensor"):
        check_hidden_states("h", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="floating-point"):
        check_hidden_states("h", torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"\[..., tokens, hidden\]"):
        check_hidden_states("h", torch.zeros(3))
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        check_rng("rng", np.random.RandomState(0))


H = torch.ones(1, 4, 8)
RNG = np.random.default_rng(0)

BAD_CALLS = [
    ("rho", lambda: erasure(H, 1.5, RNG)),
    ("rho", lambda: erasure(H, -0.01, RNG)),
    ("snr_db", lambda: awgn(H, math.nan, RNG)),
    ("snr_db", lambda: awgn(H, np.array([1.0, 2.0, 3.0]), RNG)),  # 3 does not broadcast to 4 tokens
    ("per_channel", lambda: awgn(H, 10.0, RNG, per_channel="no")),
    ("rng", lambda: awgn(H, 10.0, 0)),
    ("fading", lambda: fading_gains("rician", 4, RNG)),
    ("nakagami_m", lambda: fading_gains("nakagami", 4, RNG, m=0.3)),
    ("modulation", lambda: theoretical_ber(1.0, "8psk")),
    ("snr_linear", lambda: theoretical_ber(-1.0, "bpsk")),
    ("bits", lambda: modulate(np.array([0, 1, 2]), "bpsk")),
    ("bits", lambda: modulate(np.array([0, 1, 1]), "qpsk")),
    ("modulation", lambda: demodulate(np.zeros(2, complex), "64qam")),
    ("ber", lambda: flip_bits(np.zeros(4, np.uint8), -0.1, RNG)),
    ("bandwidth_hz", lambda: shannon_rate(-1.0, 1.0)),
    ("snr_db", lambda: transmit(H, ChannelConfig(kind="awgn"), RNG, snr_db=math.nan)),
    ("hidden", lambda: link_cost(4, 0, ChannelConfig())),
    ("n_tokens", lambda: link_cost(-1, 8, ChannelConfig())),
    ("std_db", lambda: GaussMarkovSNR(std_db=-1.0)),
    ("corr", lambda: GaussMarkovSNR(corr=1.2)),
    ("n_steps", lambda: GaussMarkovSNR().trace(-1, RNG)),
    ("d_max_m", lambda: PathLossMobility(d_min_m=50.0, d_max_m=20.0)),
    ("initial_distance_m", lambda: PathLossMobility(initial_distance_m=1000.0)),
    ("path_loss_exponent", lambda: PathLossMobility(path_loss_exponent=0.0)),
    ("reference_distance_m", lambda: PathLossMobility(reference_distance_m=20.0, d_min_m=10.0)),
    ("fading", lambda: PathLossMobility(fading="rice")),
]


@pytest.mark.parametrize(("name", "call"), BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_parameters_raise_value_error_naming_them(name, call):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value).startswith(name), str(err.value)
