"""Score-versus-real-evaluations curves of several seeds: bands, and evaluations needed to reach a score.

A curve is a list of ``(real evaluations so far, held-out score)`` points of one seed's run, in the order
measured. Between points the score holds (a step function): the policy only changes when it is scored.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from splitlab.platform.statistics import bootstrap_ci, ci95

Curve = Sequence[tuple[float, float]]


def evals_to_score(curve: Curve, threshold: float) -> float:
    """Real evaluations at the first point whose score reaches ``threshold`` (``inf`` if none does)."""
    for evals, score in curve:
        if score >= threshold:
            return float(evals)
    return math.inf


def evals_to_score_summary(curves: Sequence[Curve], thresholds: Sequence[float]) -> dict[str, dict]:
    """Per threshold: the median over seeds of :func:`evals_to_score`, its bootstrap 95% interval, the
    per-seed values and how many seeds reached it (None where the median or a bound is "never")."""
    out = {}
    for thr in thresholds:
        per_seed = [evals_to_score(c, thr) for c in curves]
        med = float(np.median(per_seed))
        lo, hi = bootstrap_ci(per_seed)
        finite = lambda v: None if math.isinf(v) else v  # noqa: E731 - JSON has no infinity
        out[f"{thr:.2f}"] = {"median": finite(med), "ci95": [finite(lo), finite(hi)],
                             "per_seed": [finite(v) for v in per_seed],
                             "reached": int(sum(not math.isinf(v) for v in per_seed)), "seeds": len(per_seed)}
    return out


def score_at(curve: Curve, evals: float) -> float:
    """The score of the last point measured with at most ``evals`` evaluations (nan before the first)."""
    value = math.nan
    for e, s in curve:
        if e <= evals:
            value = s
        else:
            break
    return value


def band(curves: Sequence[Curve], grid: Sequence[float]) -> dict[str, list]:
    """Mean and 95% CI half-width over seeds of the score at each evaluation count in ``grid`` (seeds without
    a point yet are left out; n says how many count)."""
    mean, half, n = [], [], []
    for g in grid:
        values = [v for v in (score_at(c, g) for c in curves) if not math.isnan(v)]
        mean.append(float(np.mean(values)) if values else None)
        half.append(ci95(values) if values else None)
        n.append(len(values))
    return {"evals": [float(g) for g in grid], "mean": mean, "ci95": half, "n": n}
