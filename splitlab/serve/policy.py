"""The split policy: request features -> split point k.

A rule is any callable ``rule(features) -> k`` with a ``name``. Three are built in:

- :class:`RLlibRule`: a trained RLlib policy (an ``RLModule`` checkpoint, or an Algorithm checkpoint
  holding one), acting greedily on :func:`observation` of the features.
- :class:`GridRule`: the measured quality grid (``splitlab analyze``): the k maximising
  ``-w_q * log(ppl_k / ppl_clean) - w_c * k / L`` at the request's mean SNR.
- :class:`FixedRule`: one k for every request (``default_split``) when neither is configured.

Features (all built by the ingress): ``snr_db`` (mean SNR of the request's link), ``profile``,
``kind`` (channel kind), ``fading``, ``prompt_tokens``, ``max_tokens``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ray import serve

from splitlab.serve.config import ServeConfig, model_facts


class SplitRule(Protocol):
    name: str

    def __call__(self, features: Mapping[str, Any]) -> int: ...


class FixedRule:
    """The same k for every request."""

    name = "fixed"

    def __init__(self, k: int):
        self.k = k

    def __call__(self, features: Mapping[str, Any]) -> int:
        return self.k


class GridRule:
    """Best k on a measured perplexity grid at the request's SNR (see the module docstring)."""

    name = "grid"

    def __init__(self, grid, low: int, high: int, num_layers: int, w_q: float = 1.0, w_c: float = 0.1):
        self.grid, self.num_layers, self.w_q, self.w_c = grid, num_layers, w_q, w_c
        if grid.param != "snr_db":
            raise ValueError(f"policy_grid must sweep snr_db, its {grid.channel!r} slice sweeps {grid.param!r}")
        self.rows = [i for i, k in enumerate(grid.ks) if low <= k <= high]
        if not self.rows:
            raise ValueError(f"policy_grid measures k in {grid.ks.tolist()}, none in the service's split range "
                             f"[{low}, {high}]")
        self.ks = grid.ks[self.rows]  # [K']

    def scores(self, snr_db: float, clean: bool = False) -> np.ndarray:
        """Reward of every candidate k [K'] at ``snr_db`` (``clean``: no corruption, quality term 0)."""
        quality = np.zeros(len(self.ks)) if clean else np.log(self.grid.ppl_table(snr_db)[self.rows] / self.grid.ppl_clean)
        return -self.w_q * quality - self.w_c * self.ks / self.num_layers

    def __call__(self, features: Mapping[str, Any]) -> int:
        scores = self.scores(float(features["snr_db"]), clean=features.get("kind") == "clean")
        return int(self.ks[int(np.argmax(scores))])  # argmax takes the first (smallest k) on ties


def observation(features: Mapping[str, Any], num_layers: int) -> np.ndarray:
    """The observation a trained policy sees [5]: SNR in dB, its trend (0: one request has none),
    spectral efficiency log2(1 + snr), previous k / L (0: no history per request), UE budget (1).

    This mirrors the ``wireless`` env's state as the design describes it; align it with the env's
    observation when the policy is trained, or pass another ``observe`` to :func:`load_rllib_rule`.
    """
    snr_db = float(features["snr_db"])
    return np.array([snr_db, 0.0, math.log2(1.0 + 10 ** (snr_db / 10)), 0.0, 1.0], dtype=np.float32)


class RLlibRule:
    """Greedy action of an RLlib ``RLModule``; action i means split point ``candidate_ks[i]``."""

    name = "rllib"

    def __init__(self, module, candidate_ks: Sequence[int], observe: Callable[[Mapping[str, Any]], np.ndarray]):
        self.module, self.candidate_ks, self.observe = module, list(candidate_ks), observe

    def __call__(self, features: Mapping[str, Any]) -> int:
        import torch
        from ray.rllib.core.columns import Columns

        obs = torch.as_tensor(self.observe(features), dtype=torch.float32).unsqueeze(0)  # [1, D]
        with torch.no_grad():
            logits = self.module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]  # [1, A]
        return int(self.candidate_ks[int(logits.argmax(-1)[0])])


def load_rllib_rule(path: str | Path, candidate_ks: Sequence[int], num_layers: int,
                    observe: Callable[[Mapping[str, Any]], np.ndarray] | None = None) -> RLlibRule:
    """Load a policy from an ``RLModule`` checkpoint folder or an Algorithm checkpoint that holds one.

    The module's action space must be ``Discrete(len(candidate_ks))`` and its observation space must
    match ``observe`` (default :func:`observation`).
    """
    from ray.rllib.core.rl_module.rl_module import RLModule

    path = Path(path).expanduser()
    candidates = [path, path / "learner_group" / "learner" / "rl_module" / "default_policy",
                  path / "learner_group" / "learner" / "rl_module" / "default_module"]
    folder = next((p for p in candidates if (p / "class_and_ctor_args.pkl").exists()), None)
    if folder is None:
        raise FileNotFoundError(f"policy_checkpoint {str(path)!r} holds no RLModule (looked in "
                                f"{[str(p) for p in candidates]})")
    module = RLModule.from_checkpoint(folder)
    observe = observe or (lambda f: observation(f, num_layers))
    n_actions = getattr(module.action_space, "n", None)
    if n_actions != len(candidate_ks):
        raise ValueError(f"policy_checkpoint has {n_actions} actions but the service offers {len(candidate_ks)} "
                         f"split points {list(candidate_ks)}: set min_split/max_split to the policy's range")
    probe = observe({"snr_db": 10.0, "kind": "awgn"})
    shape = getattr(module.observation_space, "shape", None)
    if shape is not None and tuple(shape) != probe.shape:
        raise ValueError(f"policy_checkpoint expects observations of shape {tuple(shape)}, the service builds "
                         f"{probe.shape}: pass a matching observe function")
    return RLlibRule(module, candidate_ks, observe)


def make_rule(config: ServeConfig, num_layers: int) -> SplitRule:
    """The rule the config asks for: RLlib checkpoint, else measured grid, else a fixed k."""
    low, high = config.split_range(num_layers)
    if config.policy_checkpoint:
        return load_rllib_rule(config.policy_checkpoint, range(low, high + 1), num_layers)
    if config.policy_grid:
        from splitlab.envs.quality_grid import QualityGrid

        grid = QualityGrid.from_json(config.policy_grid, channel=config.policy_grid_channel)
        return GridRule(grid, low, high, num_layers, config.w_q, config.w_c)
    return FixedRule(config.fixed_split(num_layers))


@serve.deployment(name="SplitPolicy")
class SplitPolicy:
    """Serve deployment of the split policy: ``choose(features) -> {"k", "rule"}``."""

    def __init__(self, config: dict):
        import torch

        torch.set_num_threads(1)
        self.config = ServeConfig.from_dict(config)
        num_layers = model_facts(self.config.model).num_layers
        self.low, self.high = self.config.split_range(num_layers)
        self.rule = make_rule(self.config, num_layers)

    async def choose(self, features: dict) -> dict:
        k = int(self.rule(features))
        if not self.low <= k <= self.high:  # a policy trained for another range must not break requests
            k = min(max(k, self.low), self.high)
        return {"k": k, "rule": self.rule.name}
