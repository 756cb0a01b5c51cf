"""Dotted paths into nested mappings: ``"env.dynamics.mean_db"`` names ``spec["env"]["dynamics"]["mean_db"]``.

The one place the platform reads, writes and compares configs by path: ``--set`` overrides, sweep
parameters, MLflow params and the changed keys a run folder reports when its spec changed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "algorithm.lr", 1e-3)`` sets ``d["algorithm"]["lr"]``, creating mappings on the way."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"cannot set {dotted!r}: {key!r} holds {nxt!r}, not a mapping")
        node = nxt
    node[keys[-1]] = value


def flatten(tree: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"env": {"w_l": 0.5}}`` -> ``{"env.w_l": 0.5}`` (``sep="/"``: ``env/w_l``, MLflow's names for a
    sweep trial's params). Empty mappings stay leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


UNSET = "<unset>"
"""What :func:`changed_paths` shows for a leaf one side lacks."""


def changed_paths(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """Leaves that differ between two nested mappings: ``[(dotted path, old value, new value)]``, sorted;
    a leaf present on one side only shows ``"<unset>"`` on the other."""
    a, b = flatten(old), flatten(new)
    return [(key, a.get(key, UNSET), b.get(key, UNSET)) for key in sorted(set(a) | set(b))
            if a.get(key, UNSET) != b.get(key, UNSET)]
