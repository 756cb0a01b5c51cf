"""Measured quality of split inference: perplexity per split point k and channel parameter.

``splitlab analyze`` writes ``grid.json``; a :class:`QualityGrid` is one channel kind's slice of it,
interpolated in the channel parameter (log-perplexity linear in the parameter, clamped at the ends).

``grid.json`` format::

    {"model": "smollm2", "num_layers": 30, "hidden_size": 576, "corpus": "wiki", "tokens": 1024,
     "ppl_clean": 21.25,
     "rows": [{"k": 0, "channel": "awgn", "param": "snr_db", "value": 10.0,
               "ppl_mean": 35.2, "ppl_ci95": 0.4, "seeds": 3, ...}, ...]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class QualityGrid:
    """Perplexity on a grid of split points ``ks`` [K] x channel parameter ``values`` [V]."""

    model: str
    num_layers: int
    hidden_size: int
    ppl_clean: float
    channel: str  # channel kind, e.g. "awgn", "erasure", "digital"
    param: str  # the swept parameter, e.g. "snr_db" or "rho"
    ks: np.ndarray  # [K] int, ascending
    values: np.ndarray  # [V] float, ascending
    ppl: np.ndarray  # [K, V] mean perplexity over seeds
    ppl_ci95: np.ndarray  # [K, V] half-width of the 95% confidence interval

    def __post_init__(self):
        self.ks = np.asarray(self.ks, dtype=int)
        self.values = np.asarray(self.values, dtype=float)
        self.ppl = np.asarray(self.ppl, dtype=float)
        self.ppl_ci95 = np.asarray(self.ppl_ci95, dtype=float)
        if self.ppl.shape != (len(self.ks), len(self.values)):
            raise ValueError(f"ppl must have shape (len(ks), len(values)) = {(len(self.ks), len(self.values))}, "
                             f"got {self.ppl.shape}")
        if len(self.values) == 0 or len(self.ks) == 0:
            raise ValueError("a quality grid needs at least one k and one channel value")

    def ppl_at(self, k: int, value: float) -> float:
        """Perplexity at split ``k`` (one of ``ks``) and channel parameter ``value`` (clamped to the grid)."""
        idx = np.flatnonzero(self.ks == k)
        if idx.size == 0:
            raise ValueError(f"k={k} is not in the measured grid; measured k: {self.ks.tolist()}")
        return float(np.exp(np.interp(value, self.values, np.log(self.ppl[idx[0]]))))

    def ppl_table(self, value: float) -> np.ndarray:
        """Perplexity of every k at one channel value -> [K]."""
        return np.exp([np.interp(value, self.values, np.log(row)) for row in self.ppl])

    @classmethod
    def from_dict(cls, data: dict, channel: str | None = None) -> "QualityGrid":
        rows = data["rows"]
        kinds = sorted({r["channel"] for r in rows})
        if channel is None:
            if len(kinds) != 1:
                raise ValueError(f"grid holds several channels {kinds}: name one with channel=")
            channel = kinds[0]
        rows = [r for r in rows if r["channel"] == channel]
        if not rows:
            raise ValueError(f"channel {channel!r} is not in the grid; it holds {kinds}")
        ks = sorted({int(r["k"]) for r in rows})
        values = sorted({float(r["value"]) for r in rows})
        ppl = np.full((len(ks), len(values)), np.nan)
        ci = np.zeros_like(ppl)
        for r in rows:
            i, j = ks.index(int(r["k"])), values.index(float(r["value"]))
            ppl[i, j], ci[i, j] = r["ppl_mean"], r.get("ppl_ci95", 0.0)
        if np.isnan(ppl).any():
            raise ValueError(f"grid for channel {channel!r} is not rectangular in (k, value)")
        return cls(data["model"], int(data["num_layers"]), int(data["hidden_size"]), float(data["ppl_clean"]),
                   channel, rows[0]["param"], np.array(ks), np.array(values), ppl, ci)

    @classmethod
    def from_json(cls, path: str | Path, channel: str | None = None) -> "QualityGrid":
        path = Path(path)
        if path.is_dir():
            path = path / "grid.json"
        if not path.exists():
            raise FileNotFoundError(f"no quality grid at {path}: run `splitlab analyze` first")
        return cls.from_dict(json.loads(path.read_text()), channel)
