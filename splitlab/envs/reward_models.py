"""Reward models: what the perplexity is when the split is at k and the channel parameter is v.

One typed swap point, :class:`RewardModel`; the environments only ever call ``quality(k, value)``
(and ``quality_table`` for the oracle). Implementations:

- :class:`GridRewardModel`: a measured :class:`~splitlab.envs.quality_grid.QualityGrid` from
  ``splitlab analyze`` (log-perplexity interpolated in the channel parameter). No LLM at run time.
- :class:`LiveLLMRewardModel`: runs the real split model with the channel corruption, cached by
  (k, rounded value); counts its evaluations and their wall time.
- :class:`SurrogateRewardModel`: the slot for a learned model (``splitlab.mbrl``) that predicts
  ``log(PPL_k / PPL_clean)`` from (channel features, k) with an uncertainty.

Configs name a kind: ``{"kind": "grid", "path": "runs/analysis/grid.json", "channel": "awgn"}``,
``{"kind": "synthetic", "channel": "awgn"}``, ``{"kind": "live", "model": "smollm2",
"channel": {"kind": "awgn"}}``; :func:`register_reward_model` adds kinds (e.g. ``surrogate``).
"""
from __future__ import annotations

import math
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from splitlab.channel import Channel, ChannelConfig
from splitlab.channel.validation import check_choice, check_int, check_range
from splitlab.envs.quality_grid import QualityGrid


class RewardModel(ABC):
    """Perplexity of split inference at split ``k`` and channel parameter ``value``.

    Attributes every implementation sets:
        num_layers: L, decoder layers of the model.
        hidden_size: width of the transmitted hidden state.
        ppl_clean: perplexity without split corruption (the unsplit model).
        channel: the channel (sweep) name the quality belongs to, e.g. ``awgn`` or ``erasure``.
        param: the channel parameter ``value`` stands for: ``snr_db`` or ``rho``.
        ks: split points it can score, ascending.
        real_evals: real LLM perplexity evaluations made so far (0 for a grid).
        real_eval_time_s: wall time those evaluations took.
    """

    num_layers: int
    hidden_size: int
    ppl_clean: float
    channel: str
    param: str
    ks: tuple[int, ...]
    real_evals: int = 0
    real_eval_time_s: float = 0.0

    @abstractmethod
    def quality(self, k: int, value: float) -> float:
        """Perplexity at split ``k`` with the channel parameter at ``value``."""

    def quality_table(self, ks: Sequence[int], value: float) -> np.ndarray:
        """Perplexity of each split in ``ks`` at one channel value -> [len(ks)]."""
        return np.array([self.quality(int(k), value) for k in ks])

    def stats(self) -> dict[str, float]:
        """Namespaced counters for logging: ``mbrl/real_evals``, ``mbrl/real_eval_time_s``."""
        return {"mbrl/real_evals": float(self.real_evals), "mbrl/real_eval_time_s": float(self.real_eval_time_s)}

    def describe(self) -> dict[str, Any]:
        """A plain dict for run parameters."""
        return {"kind": type(self).__name__, "channel": self.channel, "param": self.param,
                "num_layers": self.num_layers, "hidden_size": self.hidden_size}


class GridRewardModel(RewardModel):
    """Quality from a measured grid; ``k`` must be one of the grid's split points."""

    def __init__(self, grid: QualityGrid) -> None:
        self.grid = grid
        self.num_layers = int(grid.num_layers)
        self.hidden_size = int(grid.hidden_size)
        self.ppl_clean = float(grid.ppl_clean)
        self.channel = grid.channel
        self.param = grid.param
        self.ks = tuple(int(k) for k in grid.ks)
        self._row = {k: i for i, k in enumerate(self.ks)}
        self._values = grid.values  # [V]
        self._log_ppl = np.log(grid.ppl)  # [K, V]

    def quality(self, k: int, value: float) -> float:
        row = self._row.get(int(k))
        if row is None:
            raise ValueError(f"k={k} is not in the measured grid; measured k: {list(self.ks)}")
        return math.exp(np.interp(value, self._values, self._log_ppl[row]))

    def quality_table(self, ks: Sequence[int], value: float) -> np.ndarray:
        return np.array([self.quality(int(k), value) for k in ks])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.grid.model}


class LiveLLMRewardModel(RewardModel):
    """Quality from the real split model: perplexity over token windows with the channel applied.

    Each distinct ``(k, round(value, decimals))`` is evaluated once, at the rounded value, with a
    generator seeded from ``(seed, k, value)`` so a point's result does not depend on the order
    of queries. ``ppl_clean`` is computed on first use and counts as one evaluation.

    With a ``store`` (a :class:`~splitlab.llm.measurement_store.MeasurementStore` root) every point is
    looked up there first, keyed by content (:meth:`store_key`); a miss is measured and written back, so
    trials and nodes that share the store measure each point once. ``real_evals`` still counts a hit (it
    is the run's budget of real measurements, whoever paid for them); ``real_eval_time_s`` counts only
    the seconds measured here, and ``store.hits`` says how many were read.
    """

    def __init__(self, model: Any = "smollm2", channel: ChannelConfig | Mapping | None = None,
                 corpus: str = "wiki", n_tokens: int = 256, window: int = 64, decimals: int = 1,
                 seed: int = 0, batch_size: int = 8, ks: Sequence[int] | None = None,
                 store: str | None = None) -> None:
        """
        Args:
            model: a model spec for ``SplitModel.load`` (``smollm2``, ``tiny-llama``, ...) or a SplitModel.
            channel: the corrupting channel; its ``rho`` (erasure) or ``snr_db`` (awgn, digital) is
                replaced by each query's value. None: ``{"kind": "awgn"}``.
            corpus, n_tokens, window: the evaluation text (``token_windows``).
            decimals: the cache key rounds the value to this many decimals.
            ks: split points allowed; None: 0..L.
            store: a measurement store root (folder or pyarrow URI), ``auto`` or None (no store); see
                :func:`~splitlab.llm.measurement_store.resolve_store`.
        """
        from splitlab.llm import SplitModel
        from splitlab.llm.corpora import token_windows

        cfg = channel if isinstance(channel, ChannelConfig) else ChannelConfig.from_dict(channel or {"kind": "awgn"})
        check_choice("reward_model.channel.kind", cfg.kind, ("erasure", "awgn", "digital"))
        check_int("reward_model.decimals", decimals, 0, 6)
        check_int("reward_model.seed", seed, 0)
        self.channel_config = cfg
        self.channel = cfg.kind
        self.param = "rho" if cfg.kind == "erasure" else "snr_db"
        self.model = SplitModel.load(model) if isinstance(model, str) else model
        self.num_layers = int(self.model.num_layers)
        self.hidden_size = int(self.model.hidden_size)
        self.windows = token_windows(self.model.tokenizer, corpus, n_tokens, window)  # [N, W]
        self.ks = tuple(range(self.num_layers + 1)) if ks is None else tuple(int(k) for k in ks)
        bad = [k for k in self.ks if not 0 <= k <= self.num_layers]
        if bad or not self.ks:
            raise ValueError(f"reward_model.ks must be a non-empty list in 0..{self.num_layers}, got {list(self.ks)}")
        self.decimals, self.seed, self.batch_size = decimals, seed, batch_size
        from splitlab.llm.measurement_store import MeasurementStore, resolve_store

        root = resolve_store(store)
        self.store = MeasurementStore(root) if root is not None else None
        self._content: dict[str, str] | None = None
        self.cache_hits = 0
        self._cache: dict[tuple[int, float], float] = {}
        self._ppl_clean: float | None = None
        self.real_evals = 0
        self.real_eval_time_s = 0.0

    @property
    def ppl_clean(self) -> float:
        if self._ppl_clean is None:
            self._ppl_clean = self._stored(self.store_key(None), lambda: self._timed(lambda: self._perplexity(0, None)))
        return self._ppl_clean

    @property
    def seen(self) -> set[tuple[int, float]]:
        """The distinct (k, rounded value) points this instance measured or read from the store (what
        one shared cache counts), as :class:`~splitlab.mbrl.rllib_env.CountedRewardModel` names them."""
        return set(self._cache)

    def point(self, k: int, value: float) -> tuple[int, float]:
        """The cache key of a query: ``(k, value rounded to decimals)``; fails for a k not in ``ks``."""
        if int(k) not in self.ks:
            raise ValueError(f"k={k} is not an allowed split point; allowed: {list(self.ks)}")
        return int(k), round(float(value), self.decimals)

    def corruption(self, point: tuple[int, float]) -> Any:
        """The channel corruption of one point, seeded from ``(seed, k, value)`` alone."""
        cfg = self.channel_config.replace(**{self.param: point[1]})
        rng = np.random.default_rng([self.seed, point[0], zlib.crc32(repr(point[1]).encode())])
        return Channel(cfg).as_corruption(rng)

    def quality(self, k: int, value: float) -> float:
        key = self.point(k, value)
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        ppl = self._stored(self.store_key(key),
                           lambda: self._timed(lambda: self._perplexity(key[0], self.corruption(key))))
        self._cache[key] = ppl
        return ppl

    def quality_grid(self, ks: Sequence[int], values: Sequence[float]) -> list[list[float]]:
        """Perplexity at every (k, value) [K][V], each equal to what :meth:`quality` returns (and cached
        there). Points missing from the cache and the store share one clean pass per batch
        (``perplexity_grid``: only the tails rerun); each counts as one evaluation."""
        from splitlab.llm.evaluation import perplexity_grid

        todo = {}
        for k in ks:
            for v in values:
                key = self.point(k, v)
                if key in self._cache or key in todo:
                    continue
                stored = self.store.get(self.store_key(key)) if self.store is not None else None
                if stored is not None:
                    self._cache[key] = stored
                    self.real_evals += 1
                else:
                    todo[key] = (key[0], self.corruption(key))
        if todo:
            start = time.perf_counter()
            measured = perplexity_grid(self.model, self.windows, todo, batch_size=self.batch_size)
            self.real_eval_time_s += time.perf_counter() - start
            self.real_evals += len(measured)
            for key, ppl in measured.items():
                self._cache[key] = float(ppl)
                if self.store is not None:
                    self.store.put(self.store_key(key), float(ppl))
        return [[self._cache[self.point(k, v)] for v in values] for k in ks]

    def store_key(self, point: tuple[int, float] | None) -> dict[str, Any]:
        """The content key of a measurement (None: the clean reference): model and text digests, the
        channel with its value, k, the noise seed and the metric."""
        from splitlab.llm.measurement_store import measurement_key

        if self._content is None:
            self._content = {"model": model_digest(self.model), "text": text_digest(self.windows)}
        if point is None:
            return measurement_key(**self._content, metric="ppl_clean", k=None, channel=None, seed=None)
        channel = self.channel_config.replace(**{self.param: point[1]}).to_dict()
        return measurement_key(**self._content, metric="ppl", k=point[0], channel=channel, value=point[1],
                               seed=self.seed, batch_size=self.batch_size)  # noise is drawn once per batch

    def _stored(self, key: dict[str, Any], measure: Callable[[], float]) -> float:
        """The store's value for ``key``, else ``measure()`` written back (no store: just ``measure()``)."""
        if self.store is None:
            return measure()
        value = self.store.get(key)
        if value is None:
            value = float(measure())
            self.store.put(key, value)
        else:
            self.real_evals += 1  # measured by an earlier run: still one of this run's real measurements
        return value

    def _perplexity(self, k: int, corrupt) -> float:
        from splitlab.llm.evaluation import perplexity

        return perplexity(self.model, self.windows, k, corrupt, batch_size=self.batch_size)

    def _timed(self, fn: Callable[[], float]) -> float:
        start = time.perf_counter()
        out = fn()
        self.real_eval_time_s += time.perf_counter() - start
        self.real_evals += 1
        return out

    def stats(self) -> dict[str, float]:
        store = self.store.stats() if self.store is not None else {}
        return {**super().stats(), "mbrl/cache_hits": float(self.cache_hits), **store}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model.name, "tokens": int(self.windows.numel())}


def model_digest(model: Any) -> str:
    """A digest of a SplitModel's content: its name, config and every parameter's bytes (about a second for
    SmolLM2), so a store never mixes two checkpoints that share a name."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(repr(model.name).encode())
    h.update(model.model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.model.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def text_digest(windows: Any) -> str:
    """A digest of the evaluation token windows [N, W] (corpus, tokenizer and token range in one)."""
    import hashlib

    ids = np.ascontiguousarray(windows.cpu().numpy().astype(np.int64))
    return hashlib.blake2b(f"{ids.shape}".encode() + ids.tobytes(), digest_size=16).hexdigest()


class SurrogateRewardModel(RewardModel):
    """The slot for a learned reward model (implemented in ``splitlab.mbrl``).

    A surrogate predicts the quality term ``y = log(PPL_k / PPL_clean)`` from a feature row built
    from (channel value, k); ``quality`` turns the mean back into a perplexity. Subclasses set the
    :class:`RewardModel` attributes and implement :meth:`predict`; they may override
    :meth:`features` (the default is ``[value, k / L]``). Its own ``real_evals`` stay 0: the real
    evaluations that trained it are counted by whoever made them.
    """

    @abstractmethod
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``x`` [N, F] -> (mean [N], std [N]) of ``log(PPL_k / PPL_clean)``."""

    def features(self, ks: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Split points [N] and channel values [N] -> features [N, F]."""
        return np.stack([np.asarray(values, float), np.asarray(ks, float) / self.num_layers], axis=-1)

    def quality(self, k: int, value: float) -> float:
        return float(self.quality_table([k], value)[0])

    def quality_table(self, ks: Sequence[int], value: float) -> np.ndarray:
        ks = np.asarray(ks)
        mean, _ = self.predict(self.features(ks, np.full(ks.shape, float(value))))
        return self.ppl_clean * np.exp(mean)

    def uncertainty(self, k: int, value: float) -> float:
        """Predicted standard deviation of ``log(PPL_k / PPL_clean)`` at one point."""
        _, std = self.predict(self.features(np.array([k]), np.array([float(value)])))
        return float(std[0])


RewardModelFactory = Callable[..., RewardModel]


REWARD_MODEL_KINDS: dict[str, RewardModelFactory] = {}
"""Reward-model kinds added by plugins (:func:`register_reward_model`); the built-in kinds are the typed
specs of :mod:`splitlab.envs.reward_specs`."""


def register_reward_model(kind: str, factory: RewardModelFactory) -> None:
    """Make ``{"kind": kind, ...}`` build ``factory(**rest)``: a plugin's reward model (its keys unchecked here).

    Ray workers build envs from configs, so register at import time of a module they import.
    """
    from splitlab.envs.reward_specs import REWARD_KINDS

    if not isinstance(kind, str) or not kind or kind in REWARD_KINDS:
        raise ValueError(f"reward model kind must be a new non-empty name (not one of {list(REWARD_KINDS)}), "
                         f"got {kind!r}")
    REWARD_MODEL_KINDS[kind] = factory


def make_reward_model(spec: Any) -> RewardModel:
    """Build a reward model from its spec (``{"kind": ..., ...}`` or a typed spec), or pass an instance through."""
    from splitlab.envs.reward_specs import parse_reward_spec

    if isinstance(spec, RewardModel):
        return spec
    if isinstance(spec, Mapping) and spec.get("kind") in REWARD_MODEL_KINDS:
        return REWARD_MODEL_KINDS[spec["kind"]](**{k: v for k, v in spec.items() if k != "kind"})
    return parse_reward_spec(spec).build()


def check_reward_model(model: RewardModel, param: str, ks: Sequence[int], what: str) -> None:
    """Fail unless ``model`` scores channel parameter ``param`` at every split in ``ks``."""
    if model.param != param:
        raise ValueError(f"{what} needs a reward model over {param!r}, but reward_model.channel "
                         f"{model.channel!r} is over {model.param!r}")
    missing = sorted(set(int(k) for k in ks) - set(model.ks))
    if missing:
        raise ValueError(f"{what} needs split points {missing} that the reward model cannot score; "
                         f"it scores k in {list(model.ks)}")
    check_range("reward_model.ppl_clean", model.ppl_clean, 0.0, low_open=True)
