"""Measured per-split tables the wireless reward reads: token leakage (privacy) and UE energy.

A table maps split point k to one number. It comes inline (``{0: 0.99, 4: 0.31, ...}``) or from a
results file: ``{"path": "benchmarks/results/privacy_cost.json", "key": "leakage_learned_top1"}``
reads ``rows[i][key]`` of a ``benchmarks/privacy_cost.py`` result (``"profile": "phone"`` picks one
entry of a per-profile value such as ``energy_mj_per_token``), or the clean leakage rows
(``privacy.clean``) of a ``splitlab analyze --privacy`` grid.json (keys ``leak_nn_top1`` ...). A relative
path is looked up from the working directory, then from the project root (where ``benchmarks/results``
lives), so that Tune trials, which run in folders of their own, find the same file.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MAX_TABLE_BYTES = 50_000_000
"""Largest results file a table is read from (checked before reading)."""


@dataclass(frozen=True)
class SplitTable:
    """One measured number per split point."""

    values: dict[int, float]
    source: str
    """Where the numbers came from (for logs and errors)."""

    def at(self, k) -> np.ndarray | float:
        """The value at ``k`` (an int or an array of split points); a k the table lacks is an error."""
        ks = np.asarray(k)
        missing = sorted({int(x) for x in ks.ravel()} - set(self.values))
        if missing:
            raise ValueError(f"{self.source} has no value for split points {missing}; it covers {sorted(self.values)}")
        out = np.vectorize(lambda x: self.values[int(x)], otypes=[float])(ks)
        return float(out) if out.ndim == 0 else out

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "values": {str(k): v for k, v in sorted(self.values.items())}}

    @classmethod
    def from_spec(cls, spec: Mapping | "SplitTable", name: str) -> "SplitTable":
        """Build from an inline ``{k: value}`` mapping or a ``{"path", "key", "profile"?}`` reference."""
        if isinstance(spec, SplitTable):
            return spec
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError(f"{name} must be a mapping k -> value or {{path, key[, profile]}}, got {spec!r}")
        if "path" in spec:
            return cls._from_file(spec, name)
        try:
            values = {int(k): float(v) for k, v in spec.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{name} inline table must map integer split points to numbers, got {dict(spec)}") from None
        if min(values) < 0 or not all(np.isfinite(list(values.values()))):
            raise ValueError(f"{name} must have split points >= 0 and finite values, got {values}")
        return cls(values, f"{name} (inline)")

    @classmethod
    def _from_file(cls, spec: Mapping, name: str) -> "SplitTable":
        unknown = sorted(set(spec) - {"path", "key", "profile"})
        if unknown or "key" not in spec:
            raise ValueError(f"{name} file reference takes keys path, key and optionally profile; got {sorted(spec)}")
        path = Path(spec["path"])
        if not path.is_absolute() and not path.is_file():
            path = PROJECT_ROOT / path
        if not path.is_file():
            raise ValueError(f"{name}: no results file at {path}")
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise ValueError(f"{name}: {path} is larger than {MAX_TABLE_BYTES} bytes")
        data = json.loads(path.read_text())
        rows = data["privacy"]["clean"] if isinstance(data.get("privacy"), Mapping) else data.get("rows")
        key, profile = spec["key"], spec.get("profile")
        if not isinstance(rows, list) or not rows or key not in rows[0]:
            have = sorted(rows[0]) if isinstance(rows, list) and rows else []
            raise ValueError(f"{name}: {path} has no rows with key {key!r}; keys: {have}")
        values = {}
        for row in rows:
            value = row[key]
            if isinstance(value, Mapping):
                if profile not in value:
                    raise ValueError(f"{name}: {key!r} is per profile in {path}; set profile to one of {sorted(value)}")
                value = value[profile]
            values[int(row["k"])] = float(value)
        return cls(values, f"{name} ({path}:{key}{'/' + profile if profile else ''})")
