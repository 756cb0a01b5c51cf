"""SNR traces for episodes: how the channel of one UE evolves from step to step.

Each model is a frozen dataclass of documented parameters with ``trace(n_steps, rng)`` returning
the SNR in dB at every step, ``[n_steps]`` float64. Optional block fading on top draws one gain
per step; leave it at ``"none"`` when :func:`splitlab.channel.transmit` already fades within a
transmission, or the two would be counted twice.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from splitlab.channel.fading import FADING_KINDS, NAKAGAMI_M_RANGE, fading_gains, instantaneous_snr_db
from splitlab.channel.validation import check_int, check_range, check_rng
from splitlab.config import ConfigModel, Float, NonNegativeFloat, PositiveFloat

SPEED_OF_LIGHT_M_S = 299_792_458.0
THERMAL_NOISE_DBM_PER_HZ = -174.0
"""kT at 290 K."""


def _add_step_fading(snr_db: np.ndarray, fading: str, m: float, rng: np.random.Generator) -> np.ndarray:
    if fading == "none":
        return snr_db
    return instantaneous_snr_db(snr_db, fading_gains(fading, snr_db.size, rng, m))


NakagamiM = Annotated[Float, Field(ge=NAKAGAMI_M_RANGE[0], le=NAKAGAMI_M_RANGE[1])]


def reflect_into(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fold values into ``[low, high]`` by reflecting at the walls (any number of times).

    Folding a free random walk gives a reflected random walk in distribution when the steps are
    symmetric, which lets a bounded walk be built from one cumulative sum.
    """
    width = high - low
    y = np.mod(np.asarray(x, dtype=np.float64) - low, 2.0 * width)
    return low + width - np.abs(y - width)


class GaussMarkovSNR(ConfigModel):
    """First-order Gauss-Markov (AR(1)) SNR in dB.

    ``x[t+1] = mean_db + corr * (x[t] - mean_db) + sqrt(1 - corr**2) * std_db * w[t]``,
    ``w ~ N(0, 1)``. The stationary law is ``N(mean_db, std_db**2)`` with lag-k autocorrelation
    ``corr**k``; starting from it (``initial_db=None``) keeps every step stationary.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["gauss_markov"] = "gauss_markov"
    """Selects this model in a ``dynamics:`` section."""
    mean_db: Float = 15.0
    """Long-run mean SNR in dB."""
    std_db: NonNegativeFloat = 5.0
    """Stationary standard deviation in dB (>= 0)."""
    corr: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.9
    """Lag-1 correlation in [0, 1]; 1 freezes the SNR, 0 draws it afresh every step."""
    initial_db: Float | None = None
    """First value; None draws it from the stationary law."""
    fading: Literal[FADING_KINDS] = "none"
    """Per-step block fading on top: ``none``, ``rayleigh`` or ``nakagami``."""
    nakagami_m: NakagamiM = 1.0
    """Nakagami shape for ``fading='nakagami'``."""

    def trace(self, n_steps: int, rng: np.random.Generator) -> np.ndarray:
        """``[n_steps]`` SNR in dB."""
        check_int("n_steps", n_steps, 0)
        check_rng("rng", rng)
        start = rng.normal(self.mean_db, self.std_db) if self.initial_db is None else self.initial_db
        innovations = rng.standard_normal(max(n_steps - 1, 0)) * self.std_db * math.sqrt(1 - self.corr**2)
        deviation = np.empty(n_steps)
        if n_steps:
            deviation[0] = start - self.mean_db
        for t, w in enumerate(innovations):  # a recursion over time steps, not over tokens
            deviation[t + 1] = self.corr * deviation[t] + w
        return _add_step_fading(self.mean_db + deviation, self.fading, self.nakagami_m, rng)


class PathLossMobility(ConfigModel):
    """A UE on a random walk in distance, with log-distance path loss and log-normal shadowing.

    ``snr_db = tx_power_dbm - path_loss_db(d) - shadowing - noise_dbm`` with
    ``path_loss_db(d) = 20 log10(4 pi d0 f / c) + 10 n log10(d / d0)`` (free space up to the
    reference distance d0, then exponent n) and ``noise_dbm = -174 + 10 log10(B) + NF``.
    Distance moves by ``N(0, step_std_m**2)`` per step, reflected into ``[d_min_m, d_max_m]``.
    Shadowing is Gaussian in dB with Gudmundson correlation ``exp(-|delta d| / decorrelation)``
    between steps, so a UE that stands still keeps its shadowing.

    With the defaults the mean SNR runs from about 44 dB at 10 m to about 0 dB at 300 m.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["path_loss"] = "path_loss"
    """Selects this model in a ``dynamics:`` section."""
    d_min_m: PositiveFloat = 10.0
    """Closest distance to the base station in metres."""
    d_max_m: PositiveFloat = 300.0
    """Farthest distance in metres."""
    initial_distance_m: PositiveFloat | None = None
    """Starting distance; None draws it uniformly in ``[d_min_m, d_max_m]``."""
    step_std_m: NonNegativeFloat = 5.0
    """Standard deviation of the distance change per step in metres."""
    path_loss_exponent: Annotated[Float, Field(gt=0.0, le=10.0)] = 3.0
    """Log-distance exponent n (2 free space, about 3 to 4 urban)."""
    reference_distance_m: PositiveFloat = 1.0
    """d0, where the free-space loss anchors the log-distance law; <= d_min_m."""
    carrier_hz: PositiveFloat = 3.5e9
    """Carrier frequency (3.5 GHz, NR band n78)."""
    shadowing_std_db: NonNegativeFloat = 4.0
    """Log-normal shadowing standard deviation in dB."""
    shadowing_decorrelation_m: PositiveFloat = 20.0
    """Distance over which shadowing correlation falls to 1/e."""
    tx_power_dbm: Float = 23.0
    """UE transmit power (23 dBm, a typical handset)."""
    noise_figure_db: NonNegativeFloat = 7.0
    """Receiver noise figure in dB."""
    bandwidth_hz: PositiveFloat = 20e6
    """Noise bandwidth in Hz; keep equal to the channel's ``bandwidth_hz``."""
    fading: Literal[FADING_KINDS] = "none"
    """Per-step block fading on top: ``none``, ``rayleigh`` or ``nakagami``."""
    nakagami_m: NakagamiM = 1.0
    """Nakagami shape for ``fading='nakagami'``."""

    @model_validator(mode="after")
    def _distances_ordered(self) -> PathLossMobility:
        if self.d_max_m < self.d_min_m:
            raise ValueError(f"d_max_m must be >= d_min_m={self.d_min_m}, got {self.d_max_m}")
        if self.initial_distance_m is not None and not self.d_min_m <= self.initial_distance_m <= self.d_max_m:
            raise ValueError(f"initial_distance_m must be in [{self.d_min_m}, {self.d_max_m}], "
                             f"got {self.initial_distance_m}")
        if self.reference_distance_m > self.d_min_m:
            raise ValueError(f"reference_distance_m must be <= d_min_m={self.d_min_m}, got {self.reference_distance_m}")
        return self

    @property
    def noise_power_dbm(self) -> float:
        """Thermal noise over the bandwidth plus the noise figure."""
        return THERMAL_NOISE_DBM_PER_HZ + 10.0 * math.log10(self.bandwidth_hz) + self.noise_figure_db

    def path_loss_db(self, distance_m: np.ndarray | float) -> np.ndarray:
        """Path loss in dB at ``distance_m`` (any shape, each >= reference distance)."""
        check_range("distance_m", distance_m, self.reference_distance_m)
        d0 = self.reference_distance_m
        free_space_d0 = 20.0 * math.log10(4.0 * math.pi * d0 * self.carrier_hz / SPEED_OF_LIGHT_M_S)
        return free_space_d0 + 10.0 * self.path_loss_exponent * np.log10(np.asarray(distance_m, float) / d0)

    def mean_snr_db(self, distance_m: np.ndarray | float) -> np.ndarray:
        """SNR in dB at ``distance_m`` without shadowing or fading."""
        return self.tx_power_dbm - self.path_loss_db(distance_m) - self.noise_power_dbm

    def trace_with_distance(self, n_steps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``([n_steps] SNR in dB, [n_steps] distance in metres)``."""
        check_int("n_steps", n_steps, 0)
        check_rng("rng", rng)
        start = (
            rng.uniform(self.d_min_m, self.d_max_m)
            if self.initial_distance_m is None
            else self.initial_distance_m
        )
        steps = rng.normal(0.0, self.step_std_m, size=max(n_steps - 1, 0))
        free_walk = start + np.concatenate([[0.0], np.cumsum(steps)])[:n_steps]
        distance = reflect_into(free_walk, self.d_min_m, self.d_max_m)  # [n_steps]

        moved = np.abs(np.diff(distance))
        corr = np.exp(-moved / self.shadowing_decorrelation_m)  # [n_steps - 1]
        innovations = rng.standard_normal(n_steps) * self.shadowing_std_db
        shadowing = np.empty(n_steps)
        if n_steps:
            shadowing[0] = innovations[0]
        for t in range(1, n_steps):  # a recursion over time steps, not over tokens
            shadowing[t] = corr[t - 1] * shadowing[t - 1] + math.sqrt(1.0 - corr[t - 1] ** 2) * innovations[t]

        snr_db = self.mean_snr_db(distance) - shadowing
        return _add_step_fading(snr_db, self.fading, self.nakagami_m, rng), distance

    def trace(self, n_steps: int, rng: np.random.Generator) -> np.ndarray:
        """``[n_steps]`` SNR in dB."""
        return self.trace_with_distance(n_steps, rng)[0]
