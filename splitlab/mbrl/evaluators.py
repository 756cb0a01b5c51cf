"""Real LLM evaluations on a pool of Ray actors: each actor loads the model once, results are cached.

An evaluation is one perplexity measurement of the split model at a point ``(k, channel value)``
through the corrupting channel (``splitlab.envs.reward_models.LiveLLMRewardModel``). The pool
rounds values the way the live model does, so a point is only ever measured once per run; it counts
every measurement (``real_evals``), the seconds the actors spent (``eval_time_s``) and the seconds
the caller waited (``wall_s``). The clean reference perplexity counts as one evaluation.

Actors sit outside any trial's placement group: they ask for ``num_cpus`` (default 0) and run torch
with one thread, so on a 2-core machine they share the cores with the env runners instead of
waiting for a free one.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from splitlab.channel.validation import check_int, check_range
from splitlab.envs.reward_models import RewardModel


class LLMEvaluator:
    """Holds one reward model (normally ``{"kind": "live", ...}``: the real LLM) and measures points.

    Used as a Ray actor (see :class:`EvaluationPool`) or directly in-process.
    """

    def __init__(self, reward_spec: Mapping[str, Any], threads: int | None = 1) -> None:
        from splitlab.envs.reward_models import make_reward_model

        if threads is not None:  # None: in the caller's process, whose torch threads are its own
            import torch

            torch.set_num_threads(threads)
        start = time.perf_counter()
        self.model = make_reward_model(dict(reward_spec))
        self.load_s = time.perf_counter() - start

    def reference(self) -> dict[str, Any]:
        """The RewardModel attributes (ppl_clean measured now, once) and the load and reference time."""
        start = time.perf_counter()
        ppl_clean = float(self.model.ppl_clean)
        m = self.model
        return {"num_layers": m.num_layers, "hidden_size": m.hidden_size, "ppl_clean": ppl_clean,
                "channel": m.channel, "param": m.param, "ks": list(m.ks), "load_s": self.load_s,
                "seconds": time.perf_counter() - start, "describe": m.describe()}

    def evaluate(self, points: Sequence[tuple[int, float]]) -> list[tuple[float, float]]:
        """Points [(k, value)] -> [(perplexity, seconds)], measured one after the other."""
        out = []
        for k, value in points:
            start = time.perf_counter()
            ppl = float(self.model.quality(int(k), float(value)))
            out.append((ppl, time.perf_counter() - start))
        return out


    def evaluate_grid(self, ks: Sequence[int], values: Sequence[float]) -> tuple[list[list[float]], float]:
        """Perplexity at every (k, value) [K][V] and the seconds it took, sharing the heads' work.

        For a live LLM model, one clean pass per batch gives the hidden state after every layer and
        each point reruns only its tail (:meth:`LiveLLMRewardModel.quality_grid`, through the measurement
        store when it has one), so each value equals what ``quality`` returns. Other models are queried
        point by point.
        """
        from splitlab.envs.reward_models import LiveLLMRewardModel

        start = time.perf_counter()
        m = self.model
        if not isinstance(m, LiveLLMRewardModel):
            return [[float(m.quality(int(k), float(v))) for v in values] for k in ks], time.perf_counter() - start
        return m.quality_grid(ks, values), time.perf_counter() - start

    def store_stats(self) -> dict[str, float]:
        """The measurement store's counters (``store/...``; empty without a store)."""
        store = getattr(self.model, "store", None)
        return store.stats() if store is not None else {}


IN_PROCESS_KINDS = ("grid", "synthetic", "counted")
"""Reward kinds a pool evaluates in its own process: tables and formulas, no model to hold apart (starting
an actor process cost minutes on a loaded machine and bought nothing)."""


def _submit(actor: Any, method: str, *args: Any) -> Any:
    """Start ``method(*args)`` on a Ray actor (an object ref), or run it on an in-process evaluator (the result)."""
    if isinstance(actor, LLMEvaluator):
        return getattr(actor, method)(*args)
    return getattr(actor, method).remote(*args)


def _results(submitted: list) -> list:
    """The results of :func:`_submit` calls, waiting on the Ray ones together."""
    import ray

    refs = [s for s in submitted if isinstance(s, ray.ObjectRef)]
    done = iter(ray.get(refs)) if refs else iter(())
    return [next(done) if isinstance(s, ray.ObjectRef) else s for s in submitted]


class EvaluationPool:
    """``n_actors`` Ray actors, each holding the real LLM once; a cache in front of them.

    Args:
        reward_spec: the measured quality, e.g. ``{"kind": "live", "model": "smollm2", "channel":
            {"kind": "awgn"}, "n_tokens": 256, "window": 64, "decimals": 0}``. Any reward-model
            spec works (a ``synthetic`` grid stands in for the LLM in tests of the bookkeeping).
        n_actors: evaluator actors (each loads the model; SmolLM2 takes about 14 s). A table or formula
            (``IN_PROCESS_KINDS``) is evaluated in this process instead, by one evaluator.
        num_cpus: CPUs each actor reserves (fractional; 0 keeps them out of the scheduler's way).
        threads: torch threads per actor.

    Call :meth:`shutdown` (or use it as a context manager) to end the actors.
    """

    def __init__(self, reward_spec: Mapping[str, Any], n_actors: int = 1, num_cpus: float = 0.0,
                 threads: int = 1, actors: list | None = None) -> None:
        import ray

        check_int("evaluators", n_actors, 1, 64)
        check_range("evaluator_cpus", num_cpus, 0.0, 64.0)
        check_int("evaluator_threads", threads, 1, 64)
        self.reward_spec = reward_spec.to_dict() if hasattr(reward_spec, "to_dict") else dict(reward_spec)
        if self.reward_spec.get("kind") == "live":
            from splitlab.llm.measurement_store import resolve_store

            # resolved here, in the trial, so actors (another working directory, maybe another node) agree
            self.reward_spec["store"] = resolve_store(self.reward_spec.get("store"))
        # The pool rounds as the model it fronts does: a live LLM (default 1 decimal) or a counted table (0).
        kind = self.reward_spec.get("kind")
        self.decimals = (int(self.reward_spec.get("decimals", 1 if kind == "live" else 0))
                         if kind in ("live", "counted") else None)
        self.owns_actors = actors is None
        if actors is None and kind in IN_PROCESS_KINDS:
            actors = [LLMEvaluator(self.reward_spec, threads=None)]  # called directly (see _submit)
            self.owns_actors = False
        elif actors is None:
            actor_cls = ray.remote(LLMEvaluator)
            actors = [actor_cls.options(num_cpus=num_cpus, max_concurrency=1).remote(self.reward_spec, threads)
                      for _ in range(n_actors)]
        self.actors = list(actors)
        self.cache: dict[tuple[int, float], tuple[float, float]] = {}
        """(k, rounded value) -> (perplexity, seconds it took)."""
        self.real_evals = 0
        self.eval_time_s = 0.0
        self.wall_s = 0.0
        self.cache_hits = 0
        self._reference: dict[str, Any] | None = None

    def __enter__(self) -> EvaluationPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def key(self, k: int, value: float) -> tuple[int, float]:
        """The cache key of a point: the live model measures at the rounded value, so the pool rounds too."""
        return int(k), (round(float(value), self.decimals) if self.decimals is not None else float(value))

    def reference(self) -> dict[str, Any]:
        """Attributes of the measured quality: num_layers, hidden_size, ppl_clean (one evaluation), channel,
        param, ks. Measured on the first call only."""
        if self._reference is None:
            start = time.perf_counter()
            self._reference = _results([_submit(self.actors[0], "reference")])[0]
            self.real_evals += 1
            self.eval_time_s += self._reference["seconds"]
            self.wall_s += time.perf_counter() - start
        return self._reference

    def is_cached(self, k: int, value: float) -> bool:
        return self.key(k, value) in self.cache

    def evaluate(self, points: Sequence[tuple[int, float]]) -> np.ndarray:
        """Perplexity at each (k, value) -> [N]; uncached points are spread over the actors in parallel."""
        start = time.perf_counter()
        keys = [self.key(k, v) for k, v in points]
        todo = list(dict.fromkeys(key for key in keys if key not in self.cache))
        self.cache_hits += len(keys) - len(todo)
        if todo:
            n = len(self.actors)
            chunks = [todo[i::n] for i in range(n)]
            chunks = [chunk for chunk in chunks if chunk]
            replies = _results([_submit(actor, "evaluate", chunk) for actor, chunk in zip(self.actors, chunks)])
            for chunk, reply in zip(chunks, replies):
                for key, (ppl, seconds) in zip(chunk, reply):
                    if not (math.isfinite(ppl) and ppl > 0):
                        raise RuntimeError(f"real evaluation at k={key[0]}, value={key[1]} returned perplexity {ppl}")
                    self.cache[key] = (ppl, seconds)
                    self.real_evals += 1
                    self.eval_time_s += seconds
        self.wall_s += time.perf_counter() - start
        return np.array([self.cache[key][0] for key in keys])

    def evaluate_grid(self, ks: Sequence[int], values: Sequence[float]) -> np.ndarray:
        """Perplexity on the grid ``ks`` x ``values`` -> [K, V]; the values are split over the actors and each
        actor shares one clean pass per batch among its points. Every uncached point counts as one
        evaluation; actor seconds are spread evenly over an actor's points."""
        start = time.perf_counter()
        keyed = [self.key(0, v)[1] for v in values]
        todo_values = [v for v in dict.fromkeys(keyed) if any((int(k), v) not in self.cache for k in ks)]
        n = len(self.actors)
        chunks = [todo_values[i::n] for i in range(n)]
        chunks = [chunk for chunk in chunks if chunk]
        replies = _results([_submit(actor, "evaluate_grid", list(ks), chunk)
                            for actor, chunk in zip(self.actors, chunks)])
        for chunk, (table, seconds) in zip(chunks, replies):
            per_point = seconds / (len(ks) * len(chunk))
            for i, k in enumerate(ks):
                for j, v in enumerate(chunk):
                    key = (int(k), v)
                    if key not in self.cache:
                        self.cache[key] = (float(table[i][j]), per_point)
                        self.real_evals += 1
                        self.eval_time_s += per_point
        self.wall_s += time.perf_counter() - start
        return np.array([[self.cache[(int(k), v)][0] for v in keyed] for k in ks])

    def stats(self) -> dict[str, float]:
        """``mbrl/real_evals``, ``mbrl/real_eval_time_s`` (actor seconds), ``mbrl/real_eval_wall_s``, cache hits,
        and the measurement store's counters summed over the actors (``store/hits``, ``store/hit_rate``, ...)."""
        return {"mbrl/real_evals": float(self.real_evals), "mbrl/real_eval_time_s": self.eval_time_s,
                "mbrl/real_eval_wall_s": self.wall_s, "mbrl/cache_hits": float(self.cache_hits),
                **self.store_stats()}

    def store_stats(self) -> dict[str, float]:
        """The measurement store's counters summed over the actors (empty when the quality has no store)."""
        from splitlab.llm.measurement_store import merge_stats

        if not self.actors or not self.reward_spec.get("store"):
            return {}
        return merge_stats(_results([_submit(actor, "store_stats") for actor in self.actors]))

    def get_state(self) -> dict[str, Any]:
        """Cache and counters (for a checkpoint)."""
        return {"cache": [[k, v, p, s] for (k, v), (p, s) in self.cache.items()], "real_evals": self.real_evals,
                "eval_time_s": self.eval_time_s, "wall_s": self.wall_s, "cache_hits": self.cache_hits,
                "reference": self._reference}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.cache = {(int(k), float(v)): (float(p), float(s)) for k, v, p, s in state["cache"]}
        self.real_evals = int(state["real_evals"])
        self.eval_time_s = float(state["eval_time_s"])
        self.wall_s = float(state["wall_s"])
        self.cache_hits = int(state["cache_hits"])
        self._reference = state.get("reference")

    def sibling(self) -> EvaluationPool:
        """A pool on the same actors (no second model load) with its own counters; it starts from this
        pool's cache, whose points it gets as cache hits, not as evaluations of its own."""
        other = EvaluationPool(self.reward_spec, actors=self.actors)
        other.cache = dict(self.cache)
        other._reference = self._reference
        return other

    def shutdown(self) -> None:
        """End the actors (a sibling leaves them to the pool that made them)."""
        import ray

        if self.owns_actors:
            for actor in self.actors:
                ray.kill(actor)  # owned actors are Ray actors; an in-process evaluator is never owned
        self.actors = []


class PoolRewardModel(RewardModel):
    """A reward model that measures through an :class:`EvaluationPool` (cached, counted by the pool).

    For evaluating policies against the real LLM in the driver without loading it there: the
    oracle's ``quality_table`` measures every candidate split of a step in parallel.
    """

    def __init__(self, pool: EvaluationPool) -> None:
        ref = pool.reference()
        self.pool = pool
        self.num_layers, self.hidden_size = int(ref["num_layers"]), int(ref["hidden_size"])
        self.ppl_clean = float(ref["ppl_clean"])
        self.channel, self.param, self.ks = ref["channel"], ref["param"], tuple(ref["ks"])
        self._local: dict[tuple[int, float], float] = {}  # saves a round trip to the pool per repeated point

    @property
    def real_evals(self) -> int:  # type: ignore[override]
        return self.pool.real_evals

    @property
    def real_eval_time_s(self) -> float:  # type: ignore[override]
        return self.pool.eval_time_s

    def quality(self, k: int, value: float) -> float:
        return float(self.quality_table([k], value)[0])

    def quality_table(self, ks: Sequence[int], value: float) -> np.ndarray:
        keys = [self.pool.key(int(k), value) for k in ks]
        missing = [key for key in keys if key not in self._local]
        if missing:
            for key, ppl in zip(missing, self.pool.evaluate(missing)):
                self._local[key] = float(ppl)
        return np.array([self._local[key] for key in keys])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **(self.pool.reference().get("describe") or {})}


def measure_grid(pool: EvaluationPool, ks: Sequence[int], values: Sequence[float]) -> dict[str, Any]:
    """Measure ``ks`` x ``values`` with ``pool`` (values rounded as the pool rounds them) -> a grid in
    ``splitlab analyze``'s ``grid.json`` format, which ``QualityGrid`` and the grid reward model read."""
    ref = pool.reference()
    table = pool.evaluate_grid(ks, values)  # [K, V]
    rows = [{"k": int(k), "channel": ref["channel"], "param": ref["param"], "value": float(pool.key(k, v)[1]),
             "ppl_mean": float(table[i, j]), "ppl_ci95": 0.0, "seeds": 1}
            for i, k in enumerate(ks) for j, v in enumerate(values)]
    rows = list({(r["k"], r["value"]): r for r in rows}.values())  # values that round alike, once
    spec = pool.reward_spec
    return {"model": str(spec.get("model", spec["kind"])), "num_layers": ref["num_layers"],
            "hidden_size": ref["hidden_size"], "corpus": spec.get("corpus", "wiki"),
            "tokens": spec.get("n_tokens", 0), "ppl_clean": ref["ppl_clean"], "rows": rows}
