"""An exported split-policy network, read and run with numpy alone: no pickle, no torch, no splitlab imports.

The files (written by :func:`splitlab.serve.policy.export_policy`): ``policy_net.json`` lists the layers in
order (``{"linear": name, "in": F, "out": A}`` or ``{"activation": "tanh"}``), naming the tensors of
``policy.safetensors`` (or ``policy.npz``, read with ``allow_pickle=False``). The service reads them, and the
MLflow model ships this very file as its code (:mod:`splitlab.platform.policy_pyfunc`), so it imports nothing
of splitlab.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NET_FILE = "policy_net.json"
"""The network of an exported policy: its layers in order, naming the tensors of the weights file."""
WEIGHT_FILES = ("policy.safetensors", "policy.npz")
"""Exported policy weights, read without pickle (safetensors, or numpy with ``allow_pickle=False``)."""
NET_FORMAT = "splitlab-policy-mlp/1"
ACTIVATE = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0), "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
            "silu": lambda x: x / (1.0 + np.exp(-x)), "elu": lambda x: np.where(x > 0, x, np.expm1(x))}


def weights_file(folder: Path) -> Path | None:
    return next((Path(folder) / name for name in WEIGHT_FILES if (Path(folder) / name).is_file()), None)


def load_net(folder: str | Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The layers and float64 tensors of the exported network in ``folder``; errors name the bad file."""
    folder = Path(folder)
    weights = weights_file(folder)
    if weights is None or not (folder / NET_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no exported policy ({NET_FILE} + {' or '.join(WEIGHT_FILES)})")
    net = json.loads((folder / NET_FILE).read_text())
    if net.get("format") != NET_FORMAT:
        raise ValueError(f"{folder / NET_FILE} has format {net.get('format')!r}; expected {NET_FORMAT!r}")
    if weights.suffix == ".npz":
        with np.load(weights, allow_pickle=False) as data:  # refuses object arrays: no pickle
            tensors = {k: data[k] for k in data.files}
    else:
        from safetensors.numpy import load_file

        tensors = load_file(str(weights))
    layers = net["layers"]
    for layer in layers:
        if "activation" in layer and layer["activation"] not in ACTIVATE:
            raise ValueError(f"{folder / NET_FILE}: activation {layer['activation']!r} is not one of {sorted(ACTIVATE)}")
        if "linear" in layer and f"{layer['linear']}.weight" not in tensors:
            raise ValueError(f"{weights} lacks the tensor {layer['linear']}.weight that {NET_FILE} names")
    return layers, {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}


def output_size(layers: list[dict]) -> int:
    """Actions the network scores (0 when it has no linear layer)."""
    outputs = [layer["out"] for layer in layers if "linear" in layer]
    return outputs[-1] if outputs else 0


def logits(layers: list[dict], tensors: dict[str, np.ndarray], obs: np.ndarray) -> np.ndarray:
    """Action logits for one observation [F] -> [A], or a batch [N, F] -> [N, A]."""
    x = np.asarray(obs, dtype=np.float64)
    for layer in layers:
        if "linear" in layer:
            x = x @ tensors[layer["linear"] + ".weight"].T + tensors[layer["linear"] + ".bias"]
        else:
            x = ACTIVATE[layer["activation"]](x)
    return x
