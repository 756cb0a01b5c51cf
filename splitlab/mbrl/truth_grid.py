"""Measured quality tables for benchmarking agents: the held-out truth and the agents' own table.

A benchmark needs two measurements of the real split model through the channel:

- the **truth** it scores with, measured apart from anything an agent sees: another text (e.g.
  ``lambada``, >= 2,048 tokens), several channel-noise seeds averaged per point, on a few channel
  values (every 3-4 dB) that :class:`~splitlab.envs.quality_grid.QualityGrid` interpolates;
- the **training table**: the agents' own evaluation settings (training text, one noise seed) at
  every value a cached live reward model would measure (the SNR rounded to 1 dB). Every method reads
  its "real evaluations" from it through a ``counted`` reward model, so one measured cache serves
  them all and each method's count is its own distinct points. A point's value equals what a live
  model would have returned (``LiveLLMRewardModel.quality_grid`` == ``quality``, same seed).

:func:`measure_grid_settings` measures a :class:`GridSettings` in worker processes (one task per seed and
value chunk, each sharing one clean pass per batch among its points: only the tails rerun);
:func:`cached_grid` reuses a JSON measured earlier with equal settings.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitlab.platform.statistics import ci95


@dataclass(frozen=True)
class GridSettings:
    """What a measured quality table is: the model, text, channel, splits, channel values and seeds."""

    model: str
    corpus: str
    n_tokens: int
    window: int
    ks: tuple[int, ...]
    values: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    channel: dict[str, Any] = field(default_factory=lambda: {"kind": "awgn"})
    batch_size: int = 8

    def live_spec(self, seed: int) -> dict[str, Any]:
        """The live reward-model spec of one noise seed (no measurement store: this table is the cache)."""
        return {"kind": "live", "model": self.model, "corpus": self.corpus, "n_tokens": self.n_tokens,
                "window": self.window, "channel": dict(self.channel), "decimals": 2, "seed": int(seed),
                "batch_size": self.batch_size, "store": None}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ks"], d["values"], d["seeds"] = list(self.ks), [float(v) for v in self.values], list(self.seeds)
        return d


def _measure_chunk(settings: GridSettings, seed: int, values: list[float]) -> dict[str, Any]:
    """One worker's share: every split at ``values`` for noise seed ``seed`` (one clean pass per batch)."""
    import torch

    from splitlab.envs.reward_models import make_reward_model

    torch.set_num_threads(1)
    start = time.perf_counter()
    model = make_reward_model(settings.live_spec(seed))
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    ppl_clean = float(model.ppl_clean)
    table = model.quality_grid(list(settings.ks), values)
    return {"seed": seed, "values": values, "table": table, "seconds": time.perf_counter() - start,
            "load_s": load_s, "ppl_clean": ppl_clean, "num_layers": model.num_layers,
            "hidden_size": model.hidden_size, "channel": model.channel, "param": model.param}


def measure_grid_settings(settings: GridSettings, workers: int = 3,
                          chunks_per_seed: int = 2) -> tuple[dict[str, Any], dict[str, float]]:
    """Measure ``settings`` in ``workers`` processes (each seed's values cut into ``chunks_per_seed``
    chunks) -> (grid in ``grid.json`` format with ``ppl_mean`` the mean over seeds, ``ppl_ci95`` across
    them and ``ppl_per_seed``; cost). Plain processes, not Ray workers: Ray runs its workers niced, and
    on a shared machine a long measurement should not wait behind everything else."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if not settings.seeds or not settings.ks or not settings.values or workers < 1 or chunks_per_seed < 1:
        raise ValueError(f"a grid needs seeds, ks, values, workers >= 1 and chunks_per_seed >= 1, got "
                         f"{settings}, workers={workers}, chunks_per_seed={chunks_per_seed}")
    start = time.perf_counter()
    tasks = [(seed, list(settings.values[i::chunks_per_seed])) for seed in settings.seeds
             for i in range(chunks_per_seed) if settings.values[i::chunks_per_seed]]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_measure_chunk, [settings] * len(tasks), *zip(*tasks)))
    table: dict[tuple[int, float], dict[int, float]] = {}
    for chunk in done:
        for i, k in enumerate(settings.ks):
            for j, v in enumerate(chunk["values"]):
                table.setdefault((int(k), float(v)), {})[chunk["seed"]] = float(chunk["table"][i][j])
    ref = done[0]
    rows = []
    for (k, v), by_seed in sorted(table.items()):
        ppl = [by_seed[s] for s in settings.seeds]
        rows.append({"k": k, "channel": ref["channel"], "param": ref["param"], "value": v,
                     "ppl_mean": float(np.mean(ppl)), "ppl_ci95": ci95(ppl), "seeds": len(ppl),
                     "ppl_per_seed": ppl})
    grid = {"model": settings.model, "num_layers": ref["num_layers"], "hidden_size": ref["hidden_size"],
            "corpus": settings.corpus, "tokens": settings.n_tokens, "ppl_clean": ref["ppl_clean"], "rows": rows}
    points = len(rows) * len(settings.seeds)
    seconds = float(sum(c["seconds"] for c in done))
    cost = {"points": float(points), "worker_s": seconds, "wall_s": time.perf_counter() - start,
            "worker_s_per_point": seconds / points, "model_load_s": float(ref["load_s"]), "workers": workers,
            "note": "each chunk shares one clean pass per batch among its points; only the tails rerun"}
    return grid, cost


def cached_grid(path: str | Path, settings: GridSettings,
                measure: Callable[[GridSettings], tuple[dict, dict]] = measure_grid_settings,
                remeasure: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The grid saved at ``path`` if it was measured with equal ``settings``, else measured now and saved
    there -> (grid, cost; cost["reused"] names the file when it was read back)."""
    path = Path(path)
    if path.exists() and not remeasure:
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings.to_dict():
            return saved["grid"], {**saved["cost"], "reused": path.name}
    grid, cost = measure(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings.to_dict(), "cost": cost, "grid": grid}) + "\n")
    return grid, cost


def time_single_points(spec: dict[str, Any], points: Sequence[tuple[int, float]]) -> list[float]:
    """Seconds of one uncached live evaluation at each point (the cost a cached live reward model pays per
    distinct point; a full forward pass with the channel at k), measured in one actor."""
    import ray

    from splitlab.mbrl.evaluators import LLMEvaluator

    actor = ray.remote(LLMEvaluator).options(num_cpus=0).remote(spec, 1)
    try:
        ray.get(actor.reference.remote())
        return [float(s) for _, s in ray.get(actor.evaluate.remote(list(points)))]
    finally:
        ray.kill(actor)
