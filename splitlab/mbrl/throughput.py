"""Sampling throughput of an algorithm's env runners: one runner alone against all of them at once."""
from __future__ import annotations

import time
from typing import Any

import numpy as np


def sampling_throughput(algo: Any, steps: int, repeats: int = 3) -> dict[str, Any]:
    """Env steps per second of ``algo``'s first remote env runner sampling alone vs all its remote runners
    at once (each ``steps // 2`` steps), alternated ``repeats`` times; the medians are compared, so load
    from other processes hits both alike."""
    group = algo.env_runner_group
    ids = group.healthy_worker_ids()
    if len(ids) < 2 or steps < 2 or repeats < 1:
        raise ValueError(f"need >= 2 remote env runners, steps >= 2 and repeats >= 1, got {len(ids)} runners, "
                         f"steps={steps}, repeats={repeats}")
    half = steps // 2
    group.foreach_env_runner(lambda r: len(r.sample(num_timesteps=200)), local_env_runner=False)  # warm up
    one, many = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        group.foreach_env_runner(lambda r: len(r.sample(num_timesteps=half)), local_env_runner=False,
                                 remote_worker_ids=ids[:1])
        one.append(half / (time.perf_counter() - start))
        start = time.perf_counter()
        group.foreach_env_runner(lambda r: len(r.sample(num_timesteps=half)), local_env_runner=False)
        many.append(len(ids) * half / (time.perf_counter() - start))
    return {"env_runners": len(ids), "one_runner_steps_per_s": float(np.median(one)),
            "all_runners_steps_per_s": float(np.median(many)), "speedup": float(np.median(many) / np.median(one)),
            "samples_one": one, "samples_all": many}
