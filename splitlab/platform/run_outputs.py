"""What a training run reports besides its state: the metrics it reads off each RLlib result, the
progress line it prints, and the files ``history.csv``, ``learning_curve.png`` and ``policy.json``."""
from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from splitlab.platform.run_env import candidate_ks
from splitlab.platform.spec import ExperimentSpec


def _get(result: Mapping[str, Any], *path: str, default: Any = None) -> Any:
    node: Any = result
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return default
        node = node[p]
    return node


def rllib_metrics(result: Mapping[str, Any], steps_before: float, seconds: float, module_id: str) -> dict[str, float]:
    """Namespaced metrics of one ``Algorithm.train()`` result: env steps and their rate (``steps_before``:
    the lifetime count one iteration earlier; ``seconds``: the iteration's time), the training return,
    sampling time and the losses of module ``module_id``."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

    steps = float(_get(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME, default=0.0) or 0.0)
    m: dict[str, float] = {"train/env_steps": steps, "time/iteration_s": seconds,
                           "perf/env_steps_per_s": (steps - steps_before) / seconds if seconds > 0 else 0.0}
    ret = _get(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
    if ret is not None and np.isfinite(ret):
        m["policy/train_return"] = float(ret)
    sampling = _get(result, ENV_RUNNER_RESULTS, "sample")
    if isinstance(sampling, (int, float)) and sampling > 0:
        m["perf/sample_s"] = float(sampling)
    for src, dst in (("policy_loss", "losses/policy"), ("vf_loss", "losses/value"), ("entropy", "losses/entropy"),
                     ("qf_loss", "losses/q")):
        v = _get(result, "learners", module_id, src)
        if isinstance(v, (int, float)) and np.isfinite(v):
            m[dst] = float(v)
    return m


def progress_line(it: int, total: int, m: Mapping[str, float]) -> str:
    """``iter 3/10, train return ..., real evals ..., ... steps/s`` for one iteration's metrics."""
    parts = [f"iter {it}/{total}"]
    if "policy/train_return" in m:
        parts.append(f"train return {m['policy/train_return']:.3f}")
    if "policy/return_vs_oracle" in m:
        parts.append(f"held-out vs oracle {m['policy/return_vs_oracle']:.3f}")
    parts.append(f"real evals {m.get('mbrl/real_evals', 0):.0f}")
    if "mbrl/surrogate_mae" in m:
        parts.append(f"surrogate MAE {m['mbrl/surrogate_mae']:.4f}")
    parts.append(f"{m['perf/env_steps_per_s']:.0f} steps/s")
    return ", ".join(parts)


def write_history(history: list[dict[str, float]], path: Path) -> Path:
    """One CSV row per iteration, one column per metric (sorted)."""
    keys = sorted({k for row in history for k in row})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    return path


def plot_learning_curve(history: list[dict[str, float]], path: Path, final: Mapping[str, float], name: str) -> Path:
    """Training return and held-out return against env steps, with the oracle's and random's lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps = [h.get("train/env_steps", i) for i, h in enumerate(history)]
    if any("policy/train_return" in h for h in history):
        ax.plot(steps, [h.get("policy/train_return", np.nan) for h in history],
                label="training return (agent's reward)")
    if any("policy/return" in h for h in history):
        ax.plot(steps, [h.get("policy/return", np.nan) for h in history], marker="o",
                label="held-out return (true reward)")
    for key, style in (("oracle/return", "--"), ("random/return", ":")):
        if key in final:
            ax.axhline(final[key], ls=style, color="k", lw=1, label=key.split("/")[0])
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return")
    ax.set_title(f"{name}: learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_policy_info(spec: ExperimentSpec, env: Any, path: Path) -> Path:
    """``policy.json``: what a server needs to act with the policy exactly as it was trained
    (``splitlab.serve.policy``): candidate splits, model depth, env, preset, the observer."""
    preset = spec.env.preset
    observer = env.model.observer.to_dict() if spec.env_kind == "split" and preset == "wireless" else None
    path.write_text(json.dumps({"candidate_ks": candidate_ks(spec, env), "num_layers": env.num_layers,
                                "env": spec.env_kind, "preset": preset, "observer": observer}, indent=1))
    return path
