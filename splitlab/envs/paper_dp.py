"""The paper preset's optimum: exact dynamic programming over its short, deterministic episodes.

In the ``paper`` preset the state is (rho, k) and both evolve deterministically: an action sets the
next k (a clipped relative move, or k itself), and rho drifts by a fixed factor per move up or down.
So the best return from any state is a finite maximisation over action sequences, which
:class:`PaperDP` computes by backward induction with memoisation:

    V(t, rho, k) = max_a [ r(rho', k') + V(t + 1, rho', k') ],   (rho', k') = env.transition(rho, k, a)
    V(T, ., .)   = 0                                             (T = episode_len)

with r the environment's own reward (``SplitEnv.paper_terms``: the reward model's perplexity at
(rho', k')). rho after t steps depends only on how many moves went up and how many down, so there
are about K_max x t^2 states per step, not |A|^t paths. Nothing is random, so there is no expectation
to take; the value is the optimum of the true reward model, and the policy sees the same (rho, k), so
this oracle is at once clairvoyant and information-matched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from splitlab.envs.split_env import SplitEnv


@dataclass(frozen=True)
class PaperPlan:
    """An optimal episode from one state: its return and the path that reaches it."""

    value: float
    """Best return from the start state to the end of the episode."""
    actions: tuple[int, ...]
    """Optimal action at each remaining step."""
    ks: tuple[int, ...]
    """k after each step."""
    rhos: tuple[float, ...]
    """rho after each step."""


class PaperDP:
    """Backward induction over ``env``'s (t, rho, k) states with its reward model (see the module docstring).

    The memo belongs to this env's reward model and settings; build a new one for another env.
    Ties go to the lowest action index; actions whose clipped move lands on the same k are one action.
    """

    def __init__(self, env: SplitEnv) -> None:
        if env.config.preset != "paper":
            raise ValueError(f"PaperDP needs the paper preset, got preset={env.config.preset!r}")
        self.env = env
        self._values: dict[tuple[int, int, float], tuple[float, int]] = {}

    def best(self, t: int, rho: float, k: int) -> tuple[float, int]:
        """(best return from step ``t`` on, the first action of an optimal path) at state (rho, k)."""
        env = self.env
        if t >= env.episode_len:
            return 0.0, 0
        key = (t, int(k), round(float(rho), 12))  # rounding merges paths that differ only in float error
        hit = self._values.get(key)
        if hit is not None:
            return hit
        best = (-np.inf, 0)
        seen: set[int] = set()
        for a in range(env.action_space.n):
            rho2, k2 = env.transition(rho, k, a)
            if k2 in seen:  # clipped moves that land on the same k are the same action
                continue
            seen.add(k2)
            value = env.paper_terms(rho2, k2)[0].total + self.best(t + 1, rho2, k2)[0]
            if value > best[0]:
                best = (value, a)
        self._values[key] = best
        return best

    def plan(self, rho: float, k: int, t: int = 0) -> PaperPlan:
        """The optimal path from (rho, k) at step ``t`` to the end of the episode."""
        value = self.best(t, rho, k)[0]
        actions, ks, rhos = [], [], []
        for step in range(t, self.env.episode_len):
            a = self.best(step, rho, k)[1]
            rho, k = self.env.transition(rho, k, a)
            actions.append(a)
            ks.append(k)
            rhos.append(rho)
        return PaperPlan(float(value), tuple(actions), tuple(ks), tuple(rhos))
