"""The split policy: request features -> split point k.

A rule is any callable ``rule(features) -> k`` with a ``name``. Three are built in:

- :class:`MLPRule`: the policy of a ``splitlab train`` run (wireless preset), acting greedily on the
  env's own observation of the request: its network read from a weights file without pickle
  (``policy.safetensors`` or ``policy.npz``) and a JSON description (``policy_net.json``), its
  observation from the run's ``policy.json``. :func:`export_policy` writes these from an RLModule.
- :class:`RLlibRule`: the same from RLlib's own checkpoint (``policy/``), which RLlib unpickles: only
  with ``trust_checkpoint`` (``splitlab serve --trust-checkpoint``), for files you made yourself.
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

from splitlab.policy_net import NET_FILE, NET_FORMAT, WEIGHT_FILES, load_net, logits, output_size, weights_file
from splitlab.serve.config import ServeConfig, model_facts
from splitlab.serve.policy_source import POLICY_FILE


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
            out = self.module.forward_inference({Columns.OBS: obs})
        if Columns.ACTION_DIST_INPUTS in out:  # PPO: the greedy action is the logits' argmax
            return int(self.candidate_ks[int(out[Columns.ACTION_DIST_INPUTS].argmax(-1)[0])])  # logits [1, A]
        return int(self.candidate_ks[int(out[Columns.ACTIONS][0])])  # DQN: its inference pass gives the action


ACTIVATIONS = {"Tanh": "tanh", "ReLU": "relu", "SiLU": "silu", "Sigmoid": "sigmoid", "ELU": "elu", "Identity": None}


def policy_run_dir(path: str | Path) -> Path:
    """The ``splitlab train`` run folder of a ``policy_checkpoint`` (the run folder or its ``policy/``)."""
    from splitlab.serve.policy_source import resolve_policy_source

    path = Path(resolve_policy_source(str(path))).expanduser()  # runs:/, models:/, s3://... downloaded once
    for folder in (path, path.parent):
        if (folder / POLICY_FILE).exists() and ((folder / "policy").is_dir() or weights_file(folder)):
            return folder
    raise FileNotFoundError(f"policy_checkpoint {str(path)!r} is not a `splitlab train` run: expected a folder "
                            f"holding {POLICY_FILE} and the exported policy ({NET_FILE} + {' or '.join(WEIGHT_FILES)}) "
                            f"or policy/ (the run folder, e.g. runs/train/dyna, or its policy/ folder)")


def _greedy_path(module) -> list:
    """The modules from observation to action logits of an RLlib default MLP module, in order.

    PPO: ``encoder.actor_encoder`` then ``pi``. DQN: ``encoder`` (one MLP encoder, its layers in
    ``encoder.net``) then ``af``: without dueling ``af`` gives the Q-values; with dueling Q = V + A -
    mean(A), so the advantages rank the actions as the Q-values do. Distributional DQN (``num_atoms``
    > 1) ranks by an expectation over atoms, which this plain network cannot express: refused.
    """
    import torch

    encoder = getattr(module, "encoder", None)
    body = getattr(encoder, "actor_encoder", None) or getattr(encoder, "encoder", None)
    if body is None and isinstance(getattr(encoder, "net", None), torch.nn.Module):
        body = encoder  # DQN: a single MLP encoder shared by the advantage and value streams
    head = getattr(module, "pi", None) or getattr(module, "af", None)
    if body is None or head is None:
        raise ValueError(f"cannot export {type(module).__name__}: expected RLlib's default MLP module (PPO: "
                         f"encoder.actor_encoder + pi, DQN: encoder + af)")
    if int(getattr(module, "num_atoms", 1) or 1) > 1:
        raise ValueError(f"cannot export {type(module).__name__} with num_atoms={module.num_atoms} (distributional "
                         f"Q-learning): only expectation DQN (num_atoms=1) and PPO modules export")
    return [m for part in (body, head) for m in part.modules()
            if isinstance(m, torch.nn.Linear) or type(m).__name__ in ACTIVATIONS]


def export_policy(module, run_dir: str | Path) -> Path:
    """Write an RLModule's greedy network as ``policy.safetensors`` + ``policy_net.json`` in ``run_dir``.

    ``splitlab train`` calls it next to ``policy.json``; the service then never unpickles the policy.
    Returns the weights file.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    layers, tensors = [], {}
    for m in _greedy_path(module):
        name = type(m).__name__
        if name in ACTIVATIONS:
            if ACTIVATIONS[name]:
                layers.append({"activation": ACTIVATIONS[name]})
            continue
        key = f"linear{len(tensors) // 2}"
        tensors[f"{key}.weight"] = m.weight.detach().float().contiguous().clone()
        tensors[f"{key}.bias"] = (m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)).detach().float().clone()
        layers.append({"linear": key, "in": m.in_features, "out": m.out_features})
    weights = run_dir / WEIGHT_FILES[0]
    save_file(tensors, str(weights))
    (run_dir / NET_FILE).write_text(json.dumps({"format": NET_FORMAT, "layers": layers}, indent=1))
    return weights


class MLPRule:
    """Greedy action of an exported policy network (see the module docstring); no pickle involved."""

    name = "policy"

    def __init__(self, layers: list[dict], tensors: Mapping[str, np.ndarray], candidate_ks: Sequence[int], observer):
        self.layers, self.tensors, self.candidate_ks, self.observer = layers, dict(tensors), list(candidate_ks), observer

    def observation(self, features: Mapping[str, Any]) -> np.ndarray:
        return self.observer.features(float(features["snr_db"]), 0.0, 0, REQUEST_UE_BUDGET)

    def logits(self, obs: np.ndarray) -> np.ndarray:
        return logits(self.layers, self.tensors, obs)

    def __call__(self, features: Mapping[str, Any]) -> int:
        return int(self.candidate_ks[int(np.argmax(self.logits(self.observation(features))))])


def load_mlp_rule(path: str | Path, num_layers: int) -> MLPRule:
    """Load an exported policy (``policy.json`` + ``policy_net.json`` + weights) without unpickling anything."""
    from splitlab.envs.wireless import Observer

    info = _checked_info(path, num_layers)
    try:
        layers, tensors = load_net(policy_run_dir(path))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"policy_checkpoint {str(path)!r}: {err}") from err
    if output_size(layers) != len(info["candidate_ks"]):
        raise ValueError(f"policy_checkpoint's network has {output_size(layers)} outputs but its "
                         f"{POLICY_FILE} lists {len(info['candidate_ks'])} candidate splits")
    return MLPRule(layers, tensors, info["candidate_ks"], Observer.from_dict(info["observer"]))


def load_policy_rule(path: str | Path, num_layers: int, trust_checkpoint: bool = False) -> SplitRule:
    """The exported policy of a run; RLlib's pickled checkpoint only with ``trust_checkpoint``."""
    folder = policy_run_dir(path)
    if weights_file(folder) is not None:
        return load_mlp_rule(folder, num_layers)
    if not trust_checkpoint:
        raise ValueError(f"policy_checkpoint {str(path)!r} holds only RLlib's checkpoint (policy/), which is "
                         f"loaded by unpickling and can run arbitrary code: export it without pickle with "
                         f"splitlab.serve.policy.export_policy (policy.safetensors + {NET_FILE}), or pass "
                         f"--trust-checkpoint (trust_checkpoint: true) if you made the file yourself")
    return load_rllib_rule(folder, num_layers)


def read_policy_info(path: str | Path) -> dict[str, Any]:
    """``policy.json`` of a ``policy_checkpoint``, checked to be servable (a wireless single-user policy)."""
    info = json.loads((policy_run_dir(path) / POLICY_FILE).read_text())
    if info.get("observer") is None:
        raise ValueError(f"policy_checkpoint {str(path)!r} was trained on env {info.get('env')!r} with preset "
                         f"{info.get('preset')!r}; the service acts only with policies of the wireless "
                         f"single-user env (env: split, preset: wireless, e.g. tune_configs/dyna.yaml), "
                         f"whose observation a request's SNR determines")
    return info


def _checked_info(path: str | Path, num_layers: int) -> dict[str, Any]:
    info = read_policy_info(path)
    if info["num_layers"] != num_layers:
        raise ValueError(f"policy_checkpoint {str(path)!r} was trained for a {info['num_layers']}-layer model; "
                         f"the service's model has {num_layers} layers")
    return info


def load_rllib_rule(path: str | Path, num_layers: int) -> RLlibRule:
    """Load the RLlib checkpoint of a ``splitlab train`` run (its folder or its ``policy/``) for a
    ``num_layers`` model. RLlib unpickles it: trusted files only (see :func:`load_policy_rule`)."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    from splitlab.envs.wireless import Observer

    info = _checked_info(path, num_layers)
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


SHIPPED_GRIDS = Path(__file__).parent / "grids"
"""Measured grids shipped with the package, one ``<model>.json`` per model (the default adaptive rule)."""


def shipped_grid(model: str) -> Path | None:
    """The grid shipped for ``model`` (``smollm2``), or None."""
    path = SHIPPED_GRIDS / f"{model}.json"
    return path if path.is_file() else None


def make_rule(config: ServeConfig, num_layers: int) -> SplitRule:
    """The rule the config asks for: policy checkpoint, else measured grid, else (``adaptive``) the grid
    shipped for the model, else a fixed k."""
    low, high = config.split_range(num_layers)
    if config.policy_checkpoint:
        return load_policy_rule(config.policy_checkpoint, num_layers, config.trust_checkpoint)
    grid_path = config.policy_grid or (shipped_grid(config.model) if config.adaptive else None)
    if grid_path:
        from splitlab.envs.quality_grid import QualityGrid

        grid = QualityGrid.from_json(grid_path, channel=config.policy_grid_channel)
        if grid.num_layers != num_layers:
            raise ValueError(f"policy_grid {str(grid_path)!r} was measured on a {grid.num_layers}-layer model; the "
                             f"service's model has {num_layers} layers")
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
