"""The split policy: request features -> split point k.

A rule is any callable ``rule(features) -> k`` with a ``name``. Three are built in:

- :class:`RLlibRule`: the policy of a ``splitlab train`` run (wireless preset), acting greedily on the
  env's own observation of the request, rebuilt from the run's ``policy.json``.
- :class:`GridRule`: the measured quality grid (``splitlab analyze``): the k maximising
  ``-w_q * log(ppl_k / ppl_clean) - w_c * k / L`` at the request's mean SNR.
- :class:`FixedRule`: one k for every request (``default_split``) when neither is configured.

Features (all built by the ingress): ``snr_db`` (mean SNR of the request's link), ``profile``,
``kind`` (channel kind), ``fading``, ``prompt_tokens``, ``max_tokens``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
        """Reward of every candidate k [K'] at ``snr_db`` (``clean``: no corruption, quality term 0): the
        wireless reward without its latency term (the service does not model the request's link time)."""
        from splitlab.envs.rewards import wireless_reward

        ppl = np.full(len(self.ks), self.grid.ppl_clean) if clean else self.grid.ppl_table(snr_db)[self.rows]  # [K']
        return wireless_reward(ppl, self.grid.ppl_clean, self.ks, self.num_layers, 0.0, 1.0,
                               w_q=self.w_q, w_c=self.w_c, w_l=0.0).total

    def __call__(self, features: Mapping[str, Any]) -> int:
        scores = self.scores(float(features["snr_db"]), clean=features.get("kind") == "clean")
        return int(self.ks[int(np.argmax(scores))])  # argmax takes the first (smallest k) on ties


POLICY_FILE = "policy.json"
"""Written by ``splitlab train`` next to ``policy/``: candidate splits, model depth, env, observer."""
REQUEST_UE_BUDGET = 1.0
"""UE budget the policy sees for a request: the service does not meter UE load, so a free UE."""


class RLlibRule:
    """Greedy action of a trained RLlib ``RLModule`` on the env's own observation of the request.

    A request is the first step of an episode: the SNR estimate is its link's mean SNR, there is no
    trend and no previous split yet (as at ``reset``), and the UE budget is ``REQUEST_UE_BUDGET``.
    Action i means split point ``candidate_ks[i]``.
    """

    name = "rllib"

    def __init__(self, module, candidate_ks: Sequence[int], observer):
        self.module, self.candidate_ks, self.observer = module, list(candidate_ks), observer

    def observation(self, features: Mapping[str, Any]) -> np.ndarray:
        return self.observer.features(float(features["snr_db"]), 0.0, 0, REQUEST_UE_BUDGET)

    def __call__(self, features: Mapping[str, Any]) -> int:
        import torch
        from ray.rllib.core.columns import Columns

        obs = torch.as_tensor(self.observation(features)).unsqueeze(0)  # [1, N_FEATURES]
        with torch.no_grad():
            logits = self.module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]  # [1, A]
        return int(self.candidate_ks[int(logits.argmax(-1)[0])])


def policy_run_dir(path: str | Path) -> Path:
    """The ``splitlab train`` run folder of a ``policy_checkpoint`` (the run folder or its ``policy/``)."""
    path = Path(path).expanduser()
    for folder in (path, path.parent):
        if (folder / POLICY_FILE).exists() and (folder / "policy").is_dir():
            return folder
    raise FileNotFoundError(f"policy_checkpoint {str(path)!r} is not a `splitlab train` run: expected a folder "
                            f"holding {POLICY_FILE} and policy/ (the run folder, e.g. runs/train/dyna, or its "
                            f"policy/ folder)")


def read_policy_info(path: str | Path) -> dict[str, Any]:
    """``policy.json`` of a ``policy_checkpoint``, checked to be servable (a wireless single-user policy)."""
    info = json.loads((policy_run_dir(path) / POLICY_FILE).read_text())
    if info.get("observer") is None:
        raise ValueError(f"policy_checkpoint {str(path)!r} was trained on env {info.get('env')!r} with preset "
                         f"{info.get('preset')!r}; the service acts only with policies of the wireless "
                         f"single-user env (env: split, preset: wireless, e.g. tune_configs/dyna.yaml), "
                         f"whose observation a request's SNR determines")
    return info


def load_rllib_rule(path: str | Path, num_layers: int) -> RLlibRule:
    """Load the policy of a ``splitlab train`` run (its folder or its ``policy/``) for a ``num_layers`` model."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from splitlab.envs.wireless import Observer

    info = read_policy_info(path)
    if info["num_layers"] != num_layers:
        raise ValueError(f"policy_checkpoint {str(path)!r} was trained for a {info['num_layers']}-layer model; "
                         f"the service's model has {num_layers} layers")
    module = RLModule.from_checkpoint((policy_run_dir(path) / "policy").resolve())  # RLlib wants absolute paths
    if getattr(module.action_space, "n", None) != len(info["candidate_ks"]):
        raise ValueError(f"policy_checkpoint's module has {getattr(module.action_space, 'n', None)} actions but "
                         f"its {POLICY_FILE} lists {len(info['candidate_ks'])} candidate splits")
    return RLlibRule(module, info["candidate_ks"], Observer.from_dict(info["observer"]))


def fit_split_range(config: ServeConfig, num_layers: int) -> ServeConfig:
    """``config`` with a split range that holds every split its ``policy_checkpoint`` may choose.

    An unset ``max_split`` becomes the policy's deepest candidate; a range set by hand that leaves some
    candidate out is an error, since the halves would not hold the layers that split needs.
    """
    if not config.policy_checkpoint:
        return config
    ks = read_policy_info(config.policy_checkpoint)["candidate_ks"]
    if config.max_split is None:
        config = config.replace(max_split=max(max(ks), config.min_split))
    low, high = config.split_range(num_layers)
    outside = [k for k in ks if not low <= k <= high]
    if outside:
        raise ValueError(f"policy_checkpoint may choose splits {outside} outside the service's range [min_split="
                         f"{low}, max_split={high}]: widen min_split/max_split to cover {ks}")
    return config


def make_rule(config: ServeConfig, num_layers: int) -> SplitRule:
    """The rule the config asks for: RLlib checkpoint, else measured grid, else a fixed k."""
    low, high = config.split_range(num_layers)
    if config.policy_checkpoint:
        return load_rllib_rule(config.policy_checkpoint, num_layers)
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
