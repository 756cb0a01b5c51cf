"""The reward surrogate: an ensemble of small MLPs predicting the quality term from (channel, k).

Each member maps features ``x = [channel value, k / L]`` (the paper's 2 inputs: rho or SNR, and the
split; by default also a one-hot of k, see ``SurrogateConfig.split_encoding``) through ``128-128``
ReLU layers to ``y = log(PPL_k / PPL_clean)``. Members differ in their
initialisation (and, optionally, a bootstrap resample of the training set), so where the data is dense
they agree and away from it they disagree: the ensemble mean is the reward's quality term, the spread
(standard deviation over members) its uncertainty, which the Dyna loop spends real evaluations on.

Inputs and targets are standardised with statistics of the training set; the statistics travel with
the weights (:meth:`SurrogateEnsemble.get_state`), so a loaded or broadcast surrogate predicts the
same numbers. Prediction runs in numpy (a batched matmul over members), so env runners need no torch
calls per step; fitting runs in torch, all members at once.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from pydantic import Field

from splitlab.channel.validation import check_int, check_range
from splitlab.config import Bool, ConfigModel, Float, Int, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from splitlab.envs.reward_models import RewardModel, SurrogateRewardModel


SPLIT_ENCODINGS = ("scalar", "onehot")
"""Accepted values of ``surrogate.split_encoding``."""


class SurrogateConfig(ConfigModel):
    """How the ensemble is built and fitted (the ``surrogate:`` section of a spec)."""

    members: Annotated[Int, Field(ge=1, le=64)] = 5
    """MLPs in the ensemble."""
    hidden: Annotated[tuple[Annotated[Int, Field(ge=1, le=4096)], ...], Field(min_length=1)] = (128, 128)
    """Hidden layer widths (the paper: 128, 128)."""
    epochs: PositiveInt = 800
    """Full-batch Adam steps per fit (about 1-3 s on one core for a few hundred points)."""
    lr: Annotated[Float, Field(gt=0.0, le=1.0)] = 3e-3
    """Adam learning rate (decayed by cosine to 5% over the epochs)."""
    weight_decay: NonNegativeFloat = 1e-5
    """L2 penalty on the weights."""
    bootstrap: Bool = False
    """Resample the training set per member (with replacement). Off by default: with tens of points a
    bootstrap drops a third of them per member and costs more accuracy than the extra spread is worth;
    members then differ by their initialisation only, which still makes them disagree away from the data."""
    holdout: Annotated[Float, Field(ge=0.0, le=0.9)] = 0.2
    """Fraction of the points held out to report MAE and R^2 (0: none held out)."""
    split_encoding: Literal[SPLIT_ENCODINGS] = "onehot"
    """How k enters the network: ``onehot`` (k / L and a one-hot of k over 0..L: each split gets its own
    curve over the channel, for models whose fragility jumps between neighbouring layers, as SmolLM2's
    does at k = 12-18) or ``scalar`` (k / L alone, the paper's 2 inputs: quality assumed smooth in k).
    On SmolLM2 one-hot scored 0.97 vs 0.96 (Dyna) and 0.98 vs 0.96 (paper grid) of the way from random
    to the oracle (benchmarks/results/surrogate_selection.json). With one-hot, only measured splits
    are predicted sensibly."""
    refit_all: Bool = True
    """After the held-out report, refit on every point, so the reward uses every measurement paid for
    (benchmarks/results/surrogate_selection.json compares it with leaving the held-out points out)."""
    seed: NonNegativeInt = 0
    """Seed of the initialisation, the bootstrap and the held-out split."""
    target_scale: PositiveFloat | None = None
    """Fit ``asinh(y / target_scale)`` instead of y (None: y itself), compressing the large degradations
    at bad SNR. On SmolLM2 it did not help (see the README results), so it is off by default."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SurrogateConfig | None, name: str = "surrogate") -> SurrogateConfig:
        return super().from_dict(d, name)


MIN_R2_POINTS = 5
"""Fewest points :meth:`FitReport.describe` prints an R^2 for: on 2-4 points their spread is often tiny
and R^2 swings to large negative values that say nothing about the fit."""


@dataclass
class FitReport:
    """Error of one fit, on the held-out points and on the training points (in y units)."""

    n_train: int
    n_test: int
    mae: float
    """Held-out mean absolute error of log(PPL_k / PPL_clean) (train MAE when nothing is held out)."""
    r2: float
    """Held-out coefficient of determination (train R^2 when nothing is held out)."""
    train_mae: float
    train_r2: float
    seconds: float
    history: list[float] = field(default_factory=list)
    """Training loss (standardised MSE) every 100 steps."""

    def describe(self) -> str:
        """One log line: MAE and on how many points; R^2 only where enough points make it meaningful."""
        n, where = (self.n_test, "held-out") if self.n_test else (self.n_train, "training")
        r2 = f", R^2 {self.r2:.3f}" if n >= MIN_R2_POINTS and np.isfinite(self.r2) else ""
        return f"MAE {self.mae:.3f} on {n} {where} points{r2}"

    def as_metrics(self, prefix: str = "mbrl/surrogate_") -> dict[str, float]:
        return {f"{prefix}mae": self.mae, f"{prefix}r2": self.r2, f"{prefix}train_mae": self.train_mae,
                f"{prefix}train_r2": self.train_r2, f"{prefix}points": float(self.n_train + self.n_test),
                f"{prefix}fit_s": self.seconds}


def regression_errors(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(MAE, R^2) of predictions [N] against targets [N]; R^2 is 1 - SSE / SST (nan for N < 2)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if y_true.size == 0:
        return float("nan"), float("nan")
    mae = float(np.abs(y_true - y_pred).mean())
    sst = float(((y_true - y_true.mean()) ** 2).sum())
    r2 = 1.0 - float(((y_true - y_pred) ** 2).sum()) / sst if sst > 0 and y_true.size > 1 else float("nan")
    return mae, r2


class SurrogateEnsemble(SurrogateRewardModel):
    """Ensemble of MLPs ``x [N, F] -> y [N]`` with ``y = log(PPL_k / PPL_clean)``; a reward model.

    As a :class:`~splitlab.envs.reward_models.RewardModel` it scores (k, channel value) with
    ``PPL_clean * exp(mean)``. It records the (k, value) pairs its ``quality`` was asked for
    (``visited``), so the Dyna loop can read what the policy explored in this process.

    Args:
        num_layers, hidden_size, ppl_clean, channel, param, ks: the RewardModel attributes of the
            quality it stands for (copy them from the grid or live model it learns from).
        config: ensemble size and fitting settings.
        n_features: input width (None: what ``config.split_encoding`` builds, see :meth:`features`).
    """

    def __init__(self, num_layers: int, hidden_size: int, ppl_clean: float, channel: str, param: str,
                 ks: Sequence[int] | None = None, config: SurrogateConfig | Mapping | None = None,
                 n_features: int | None = None, visit_capacity: int = 50_000) -> None:
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.hidden_size = int(hidden_size)
        self.ppl_clean = float(check_range("ppl_clean", ppl_clean, 0.0, low_open=True))
        self.channel = str(channel)
        self.param = str(param)
        self.ks = tuple(range(num_layers + 1)) if ks is None else tuple(sorted(int(k) for k in ks))
        self.config = SurrogateConfig.from_dict(config)
        if n_features is None:
            n_features = 2 if self.config.split_encoding == "scalar" else 3 + self.num_layers
        self.n_features = check_int("n_features", n_features, 1)
        self.real_evals, self.real_eval_time_s = 0, 0.0
        self.fits = 0
        self.report: FitReport | None = None
        self.visit_capacity = visit_capacity
        self._visits: list[tuple[int, float]] = []
        self._init_weights(np.random.default_rng(self.config.seed))
        self.x_mean = np.zeros(n_features)
        self.x_std = np.ones(n_features)
        self.y_mean, self.y_std = 0.0, 1.0

    @classmethod
    def like(cls, model: RewardModel, config: SurrogateConfig | Mapping | None = None) -> SurrogateEnsemble:
        """An untrained ensemble standing for the same quality as ``model`` (grid or live); it scores every
        split 0..L, measured or not (k is an input like the channel)."""
        return cls(model.num_layers, model.hidden_size, model.ppl_clean, model.channel, model.param, None, config)

    def features(self, ks: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Split points [N] and channel values [N] -> features [N, F]: ``[value, k / L]``, and with the
        ``onehot`` encoding a one-hot of k over 0..L after them."""
        x = super().features(ks, values)
        if self.config.split_encoding == "scalar":
            return x
        ks = np.asarray(ks, dtype=int)
        if ks.size and (ks.min() < 0 or ks.max() > self.num_layers):
            raise ValueError(f"split points must lie in 0..{self.num_layers}, got {sorted(set(ks.tolist()))}")
        return np.concatenate([x, np.eye(self.num_layers + 1)[ks]], axis=-1)

    # -- the network ----------------------------------------------------------------------------
    def _init_weights(self, rng: np.random.Generator) -> None:
        """He-uniform init like torch.nn.Linear's default; weights [M, in, out], biases [M, out]."""
        widths = (self.n_features, *self.config.hidden, 1)
        m = self.config.members
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            bound = 1.0 / np.sqrt(fan_in)
            self.weights.append(rng.uniform(-bound, bound, (m, fan_in, fan_out)).astype(np.float32))
            self.biases.append(rng.uniform(-bound, bound, (m, fan_out)).astype(np.float32))

    def to_fit_space(self, y: np.ndarray) -> np.ndarray:
        """y -> the space the networks fit (``asinh(y / target_scale)``, or y)."""
        s = self.config.target_scale
        return np.arcsinh(np.asarray(y, float) / s) if s else np.asarray(y, float)

    def from_fit_space(self, t: np.ndarray) -> np.ndarray:
        s = self.config.target_scale
        return s * np.sinh(t) if s else t

    def predict_members(self, x: np.ndarray, fit_space: bool = False) -> np.ndarray:
        """Features [N, F] -> per-member predictions [M, N] of y (or of the fitted transform of y)."""
        t = self._forward(x)
        return t if fit_space else self.from_fit_space(t)

    def spread(self, x: np.ndarray) -> np.ndarray:
        """Disagreement of the members in the fitted space [N]: the uncertainty Dyna spends evaluations on
        (in y units it would always point at the worst channels, where y is large and the decision clear)."""
        return self.predict_members(x, fit_space=True).std(0)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Features [N, F] -> member outputs [M, N] in the fitted space."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"surrogate features must have shape [N, {self.n_features}], got {x.shape}")
        h = ((x - self.x_mean) / self.x_std).astype(np.float32)[None]  # [1, N, F]
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b[:, None, :]  # [M, N, out]
            if i < len(self.weights) - 1:
                np.maximum(h, 0.0, out=h)
        return h[..., 0].astype(np.float64) * self.y_std + self.y_mean  # [M, N]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features [N, F] -> (mean [N], std over members [N]) of ``log(PPL_k / PPL_clean)``."""
        members = self.predict_members(x)
        return members.mean(0), members.std(0)

    # -- reward-model interface -----------------------------------------------------------------
    def quality(self, k: int, value: float) -> float:
        if len(self._visits) < self.visit_capacity:
            self._visits.append((int(k), float(value)))
        return super().quality(k, value)

    def visited(self, clear: bool = True) -> list[tuple[int, float]]:
        """(k, value) pairs ``quality`` scored since the last clear (the policy's visits in this process)."""
        out = list(self._visits)
        if clear:
            self._visits.clear()
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "members": self.config.members, "hidden": list(self.config.hidden),
                "fits": self.fits}

    # -- fitting ----------------------------------------------------------------------------------
    def fit_points(self, ks: Sequence[int], values: Sequence[float], ppl: Sequence[float]) -> FitReport:
        """Fit on measured perplexities at (k, value) points; see :meth:`fit`."""
        ks, values, ppl = (np.asarray(a, float) for a in (ks, values, ppl))
        if not (ks.shape == values.shape == ppl.shape) or ks.ndim != 1:
            raise ValueError(f"ks, values and ppl must be 1-D of one length, got {ks.shape}, {values.shape}, "
                             f"{ppl.shape}")
        if (ppl <= 0).any() or not np.isfinite(ppl).all():
            raise ValueError("measured perplexities must be finite and positive")
        return self.fit(self.features(ks, values), np.log(ppl / self.ppl_clean))

    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int | None = None) -> FitReport:
        """Fit every member from scratch on features ``x`` [N, F] and targets ``y`` [N].

        A random ``holdout`` fraction (at least one point when N >= 5) is first kept out to report MAE
        and R^2; then, with ``refit_all``, the members are refitted on every point, so that the reward
        model uses all the measurements paid for (the report stays that of the held-out fit). Refits
        start from fresh weights so an early, sparse fit leaves no trace.
        """
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.ndim != 2 or x.shape[1] != self.n_features or y.shape != (x.shape[0],):
            raise ValueError(f"fit needs x [N, {self.n_features}] and y [N], got {x.shape} and {y.shape}")
        if x.shape[0] < 2:
            raise ValueError(f"fit needs at least 2 points, got {x.shape[0]}")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("fit needs finite features and targets")
        cfg = self.config
        start = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, self.fits])
        n = x.shape[0]
        n_test = int(round(cfg.holdout * n)) if n >= 5 else 0
        if cfg.holdout > 0 and n >= 5:
            n_test = max(1, n_test)
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test:]
        history = self._fit_members(x[train], y[train], epochs or cfg.epochs, rng)
        train_mae, train_r2 = regression_errors(y[train], self.predict(x[train])[0])
        if n_test:
            mae, r2 = regression_errors(y[test], self.predict(x[test])[0])
            if cfg.refit_all:
                history = self._fit_members(x, y, epochs or cfg.epochs, rng)
        else:
            mae, r2 = train_mae, train_r2
        self.fits += 1
        self.report = FitReport(len(train), n_test, mae, r2, train_mae, train_r2, time.perf_counter() - start,
                                history)
        return self.report

    def _fit_members(self, x: np.ndarray, y: np.ndarray, steps: int, rng: np.random.Generator) -> list[float]:
        """Standardise on ``x`` [n, F], ``y`` [n] and train fresh members on them; returns the loss history."""
        import torch

        cfg = self.config
        yt = self.to_fit_space(y)
        self.x_mean, self.x_std = x.mean(0), x.std(0)
        self.x_std = np.where(self.x_std > 1e-8, self.x_std, 1.0)
        self.y_mean, self.y_std = float(yt.mean()), float(yt.std()) if yt.std() > 1e-8 else 1.0
        m = cfg.members
        idx = (rng.integers(0, len(x), (m, len(x))) if cfg.bootstrap and len(x) > 1
               else np.tile(np.arange(len(x)), (m, 1)))  # [M, n]
        xs = torch.as_tensor(((x - self.x_mean) / self.x_std)[idx], dtype=torch.float32)  # [M, n, F]
        ys = torch.as_tensor(((yt - self.y_mean) / self.y_std)[idx], dtype=torch.float32)  # [M, n]
        self._init_weights(rng)
        params = [torch.nn.Parameter(torch.as_tensor(a)) for pair in zip(self.weights, self.biases) for a in pair]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.05 * cfg.lr)
        history: list[float] = []
        n_layers = len(self.weights)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matmuls: more threads only contend (2-core machines, env runners)
        try:
            self._train(torch, params, opt, sched, xs, ys, steps, history)
        finally:
            torch.set_num_threads(threads)
        self.weights = [params[2 * i].detach().numpy().copy() for i in range(n_layers)]
        self.biases = [params[2 * i + 1].detach().numpy().copy() for i in range(n_layers)]
        return history

    def _train(self, torch, params, opt, sched, xs, ys, steps: int, history: list[float]) -> None:
        """Full-batch Adam on standardised data; xs [M, n, F], ys [M, n] (one bootstrap per member)."""
        n_layers = len(self.weights)
        with torch.enable_grad():
            for step in range(steps):
                h = xs
                for i in range(n_layers):
                    h = torch.baddbmm(params[2 * i + 1][:, None, :], h, params[2 * i])  # [M, n, out]
                    if i < n_layers - 1:
                        h = torch.relu(h)
                loss = ((h[..., 0] - ys) ** 2).mean()
                decay = sum((params[2 * i] ** 2).sum() for i in range(n_layers))
                opt.zero_grad()
                (loss + self.config.weight_decay * decay).backward()
                opt.step()
                sched.step()
                if step % 100 == 0 or step == steps - 1:
                    history.append(float(loss.detach()))

    # -- state: weights + normalisation ------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to predict: weights, biases, normalisation, metadata (numpy + plain types)."""
        return {"weights": [w.copy() for w in self.weights], "biases": [b.copy() for b in self.biases],
                "x_mean": np.asarray(self.x_mean).copy(), "x_std": np.asarray(self.x_std).copy(),
                "y_mean": self.y_mean, "y_std": self.y_std, "fits": self.fits,
                "meta": {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "ppl_clean": self.ppl_clean,
                         "channel": self.channel, "param": self.param, "ks": list(self.ks),
                         "n_features": self.n_features, "config": self.config.to_dict()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Load weights and normalisation from :meth:`get_state` (the network shape must match)."""
        weights = [np.asarray(w, np.float32) for w in state["weights"]]
        if [w.shape for w in weights] != [w.shape for w in self.weights]:
            raise ValueError(f"surrogate weight shapes {[w.shape for w in weights]} do not match this ensemble's "
                             f"{[w.shape for w in self.weights]}")
        self.weights = weights
        self.biases = [np.asarray(b, np.float32) for b in state["biases"]]
        self.x_mean, self.x_std = np.asarray(state["x_mean"], float), np.asarray(state["x_std"], float)
        self.y_mean, self.y_std = float(state["y_mean"]), float(state["y_std"])
        self.fits = int(state.get("fits", self.fits))

    def fingerprint(self) -> str:
        """A short hash of the weights and normalisation (to check that a broadcast arrived)."""
        h = hashlib.sha1()
        for a in (*self.weights, *self.biases, np.asarray(self.x_mean), np.asarray(self.x_std),
                  np.array([self.y_mean, self.y_std])):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SurrogateEnsemble:
        meta = dict(state["meta"])
        ens = cls(meta["num_layers"], meta["hidden_size"], meta["ppl_clean"], meta["channel"], meta["param"],
                  meta["ks"], meta["config"], meta["n_features"])
        ens.set_state(state)
        return ens

    def save(self, path: str | Path) -> Path:
        """Write the ensemble (weights, normalisation, metadata, last fit report) to one ``.npz`` file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = self.get_state()
        arrays = {f"w{i}": w for i, w in enumerate(state["weights"])}
        arrays.update({f"b{i}": b for i, b in enumerate(state["biases"])})
        header = {"meta": state["meta"], "x_mean": state["x_mean"].tolist(), "x_std": state["x_std"].tolist(),
                  "y_mean": state["y_mean"], "y_std": state["y_std"], "fits": state["fits"],
                  "layers": len(state["weights"]), "report": asdict(self.report) if self.report else None}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, header=np.array(json.dumps(header)), **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SurrogateEnsemble:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no surrogate at {path}")
        with np.load(path) as data:
            header = json.loads(str(data["header"]))
            n = header["layers"]
            state = {"weights": [data[f"w{i}"] for i in range(n)], "biases": [data[f"b{i}"] for i in range(n)],
                     **{k: header[k] for k in ("meta", "x_mean", "x_std", "y_mean", "y_std", "fits")}}
        ens = cls.from_state(state)
        if header.get("report"):
            ens.report = FitReport(**header["report"])
        return ens


def fit_on_grid(model: RewardModel, config: SurrogateConfig | Mapping | None = None,
                ks: Sequence[int] | None = None) -> tuple[SurrogateEnsemble, FitReport, int]:
    """Paper mode's first step: fit an ensemble on every measured point of a grid reward model.

    Returns (ensemble, its fit report, number of measured points used). ``model`` must be a
    :class:`~splitlab.envs.reward_models.GridRewardModel` (its ``grid`` holds the points).
    """
    grid = getattr(model, "grid", None)
    if grid is None:
        raise ValueError(f"paper mode fits on a measured grid; got a {type(model).__name__} reward model")
    use = np.isin(grid.ks, list(ks)) if ks is not None else np.ones(len(grid.ks), bool)
    kk, vv = np.meshgrid(grid.ks[use], grid.values, indexing="ij")  # [K, V]
    ens = SurrogateEnsemble.like(model, config)
    report = ens.fit_points(kk.ravel(), vv.ravel(), grid.ppl[use].ravel())
    return ens, report, int(kk.size)
