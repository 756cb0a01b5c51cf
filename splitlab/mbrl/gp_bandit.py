"""A contextual-bandit baseline with no RL: GP-UCB over the split given the observed SNR estimate.

The bandit knows the reward's form (as the Dyna agent does) and learns only the unknown part, the
quality ``log(PPL_k / PPL_clean)`` as a function of (k, SNR), with a Gaussian process
(:class:`GaussianProcess`: RBF kernel over (k / L, SNR / 10 dB), hyperparameters picked by marginal
likelihood on a small grid). Each step it observes the SNR estimate and its UE budget, plays the split
whose reward is highest with the quality at its optimistic bound (mean - ``beta`` x std) at the
estimate, and the env's real evaluation (the perplexity at the step's true SNR, rounded as the cached
evaluator rounds it) becomes a new GP point. It stops when the env's reward model has made ``budget``
distinct evaluations; its policy is then :class:`~splitlab.envs.belief_policies.PlugInGreedyPolicy` on
the posterior mean.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import product
from typing import Any

import numpy as np

from splitlab.envs.belief_policies import PlugInGreedyPolicy, observed_snr_budget

SNR_SCALE_DB = 10.0


class GaussianProcess:
    """GP regression with a constant mean and an RBF (ARD) kernel; hyperparameters from a grid by
    marginal likelihood (the data here are a few hundred points at most)."""

    def __init__(self, length_scales: Sequence[Sequence[float]] = ((0.1, 0.2, 0.4), (0.3, 0.6, 1.2)),
                 noise_ratios: Sequence[float] = (0.01, 0.1)) -> None:
        self.grid = [(np.array(ls), nr) for ls in product(*length_scales) for nr in noise_ratios]
        self.x = np.zeros((0, len(length_scales)))

    @staticmethod
    def _kernel(a: np.ndarray, b: np.ndarray, ls: np.ndarray) -> np.ndarray:
        d = (a[:, None, :] - b[None, :, :]) / ls
        return np.exp(-0.5 * (d ** 2).sum(-1))

    def fit(self, x: np.ndarray, y: np.ndarray) -> GaussianProcess:
        x, y = np.asarray(x, float), np.asarray(y, float)
        if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need x [N, D] and y [N] with N >= 1, got {x.shape} and {y.shape}")
        self.mean = float(y.mean())
        self.var = float(max(y.var(), 1e-6))
        r = y - self.mean
        best = None
        for ls, nr in self.grid:
            k = self.var * self._kernel(x, x, ls) + (nr * self.var + 1e-8) * np.eye(len(x))
            chol = np.linalg.cholesky(k)
            alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, r))
            nll = 0.5 * r @ alpha + np.log(np.diag(chol)).sum()
            if best is None or nll < best[0]:
                best = (nll, ls, chol, alpha)
        _, self.ls, self.chol, self.alpha = best
        self.x = x
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std at ``x`` [M, D] (the prior before any fit)."""
        x = np.asarray(x, float)
        if len(self.x) == 0:
            return np.zeros(len(x)), np.ones(len(x))
        ks = self.var * self._kernel(x, self.x, self.ls)
        mean = self.mean + ks @ self.alpha
        v = np.linalg.solve(self.chol, ks.T)
        var = np.maximum(self.var - (v ** 2).sum(0), 1e-12)
        return mean, np.sqrt(var)


class GPQualityModel:
    """The GP as a quality model (``quality_table`` in perplexity) at ``mean - optimism x std``."""

    def __init__(self, gp: GaussianProcess, num_layers: int, ppl_clean: float, optimism: float = 0.0) -> None:
        self.gp, self.num_layers, self.ppl_clean, self.optimism = gp, num_layers, float(ppl_clean), optimism

    def features(self, ks: Sequence[int], value: float) -> np.ndarray:
        ks = np.asarray(ks, float)
        return np.stack([ks / self.num_layers, np.full(ks.shape, value / SNR_SCALE_DB)], axis=1)

    def quality_table(self, ks: Sequence[int], value: float) -> np.ndarray:
        mean, std = self.gp.predict(self.features(ks, value))
        return self.ppl_clean * np.exp(mean - self.optimism * std)


def run_gp_ucb(env: Any, budget: int, seed: int, beta: float = 2.0, checkpoints: Sequence[int] = (),
               score: Callable[[PlugInGreedyPolicy], float] | None = None,
               max_steps: int = 200_000) -> dict[str, Any]:
    """Run GP-UCB on ``env`` (a wireless SplitEnv whose reward model counts distinct evaluations, e.g.
    ``counted``) until ``budget`` distinct evaluations -> {"policy", "curve": [(evals, score)],
    "reward_queries", "evals"}; ``score(policy)`` is called at each of ``checkpoints`` (evaluation counts)."""
    if env.config.preset != "wireless":
        raise ValueError(f"GP-UCB needs the wireless preset, got {env.config.preset!r}")
    model = env.reward_model
    decimals = getattr(model, "decimals", None)
    rng = np.random.default_rng(seed)
    gp = GaussianProcess()
    ucb = GPQualityModel(gp, env.num_layers, model.ppl_clean, optimism=beta)
    data: dict[tuple[int, float], float] = {}
    pending = sorted(c for c in checkpoints if c <= budget)
    curve: list[tuple[int, float]] = []
    steps, episode = 0, 0
    while model.real_evals < budget and steps < max_steps:
        obs, _ = env.reset(seed=int(seed) * 100_003 + episode)
        episode += 1
        done = False
        while not done and model.real_evals < budget:
            est, budget_ue = observed_snr_budget(env, obs)
            quality = np.log(ucb.quality_table(env.candidate_ks, est) / model.ppl_clean)
            rewards = env.model.decision_rewards(est, quality, np.array([budget_ue]))[0]
            action = int(rng.choice(np.flatnonzero(rewards >= rewards.max() - 1e-12)))
            obs, _, terminated, truncated, info = env.step(action)
            steps += 1
            done = terminated or truncated
            snr = float(info["channel/snr_db"])
            key = (int(info["cost/k"]), round(snr, decimals) if decimals is not None else snr)
            if key not in data:
                data[key] = float(np.log(info["quality/ppl"] / model.ppl_clean))
                x = np.array([[k / env.num_layers, v / SNR_SCALE_DB] for k, v in data])
                gp.fit(x, np.array(list(data.values())))
                while pending and model.real_evals >= pending[0]:
                    evals = pending.pop(0)
                    if score is not None:
                        curve.append((evals, score(PlugInGreedyPolicy(GPQualityModel(gp, env.num_layers,
                                                                                     model.ppl_clean)))))
    policy = PlugInGreedyPolicy(GPQualityModel(gp, env.num_layers, model.ppl_clean))
    return {"policy": policy, "curve": curve, "reward_queries": steps, "evals": int(model.real_evals)}
