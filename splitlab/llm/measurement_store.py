"""A content-addressed store of real-model measurements, shared by every trial, actor and node of a sweep.

A measurement (one perplexity of the split model at a point) depends only on what was measured: the
model's weights, the token windows, the channel config with its value, k, the noise seed and the metric;
never on a trial's hyperparameters. :func:`measurement_key` turns those into one canonical mapping,
whose SHA-256 names one small JSON file::

    <root>/<aa>/<sha256>.json   {"key": {...}, "value": 27.31, "sha256": <checksum of key and value>}

so 48 trials of a sweep measure each point once. Writes are atomic: a local (or NFS) store writes a
temporary file and renames it over the target (``os.replace`` semantics via pyarrow's ``move``), an
object store writes the object in one PUT; two writers of one point write the same bytes, so the last
rename wins harmlessly. A file that does not parse, whose checksum does not match, or whose key is not
the one asked for counts as ``corrupt`` and reads as a miss: the caller remeasures and overwrites it.

The root is a local folder or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands (``s3://bucket/
prefix``, ``file:///nfs/...``). :func:`resolve_store` maps the ``store`` field of a live reward spec to a
root: ``auto`` means ``$SPLITLAB_MEASUREMENTS`` (a sweep sets it to ``<storage_path>/measurements`` for
its trials) or else ``runs/measurements`` under the working directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV_VAR = "SPLITLAB_MEASUREMENTS"
"""Where ``store: auto`` points when set (a folder or a pyarrow URI)."""
DEFAULT_ROOT = "runs/measurements"
"""Where ``store: auto`` points otherwise (relative to the working directory)."""
MAX_ENTRY_BYTES = 1 << 20
"""An entry is a few hundred bytes; anything bigger is not ours and is treated as corrupt unread."""


def resolve_store(store: str | None) -> str | None:
    """The store root for a spec's ``store`` value: None (no store), ``auto`` (see the module docstring), a
    folder (made absolute, so Ray actors with another working directory find it) or a URI (kept)."""
    if store is None or store == "off":
        return None
    if store == "auto":
        store = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    if not isinstance(store, str) or not store:
        raise ValueError(f"store must be a folder, a pyarrow URI (s3://..., file://...), 'auto' or None, got {store!r}")
    return store if "://" in store else str(Path(store).resolve())


def measurement_key(**fields: Any) -> dict[str, Any]:
    """A canonical key: the fields as plain JSON types (floats kept exact via ``repr`` round trips)."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class MeasurementStore:
    """One store root (see the module docstring) with hit, miss, write and corrupt-entry counters.

    Args:
        root: a local folder or a pyarrow URI.
    """

    def __init__(self, root: str) -> None:
        import pyarrow.fs

        self.root = root
        self.fs, base = pyarrow.fs.FileSystem.from_uri(root if "://" in root else str(Path(root).resolve()))
        self.base = base.rstrip("/")
        # local and NFS folders rename atomically; object stores have no rename but write an object in one PUT
        self.renames = isinstance(self.fs, pyarrow.fs.LocalFileSystem)
        self.hits = self.misses = self.writes = self.corrupt = 0

    def __getstate__(self) -> dict[str, Any]:  # a pyarrow filesystem is rebuilt from the root where it travels
        return {"root": self.root, "counters": (self.hits, self.misses, self.writes, self.corrupt)}

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__init__(state["root"])
        self.hits, self.misses, self.writes, self.corrupt = state["counters"]

    def path(self, key: Mapping[str, Any]) -> str:
        """The entry's path inside the filesystem: ``<base>/<first two hex>/<sha256>.json``."""
        name = _digest(dict(key))
        return f"{self.base}/{name[:2]}/{name}.json"

    def get(self, key: Mapping[str, Any]) -> float | None:
        """The stored value for ``key``, or None (missing or corrupt: the caller measures and :meth:`put`s)."""
        import pyarrow.fs

        target = self.path(key)
        info = self.fs.get_file_info(target)
        if info.type == pyarrow.fs.FileType.NotFound:
            self.misses += 1
            return None
        value = None
        if info.size is not None and info.size <= MAX_ENTRY_BYTES:
            try:
                with self.fs.open_input_stream(target) as f:
                    entry = json.loads(f.read().decode())
                if (entry.get("key") == dict(key) and entry.get("sha256") == _digest([entry["key"], entry["value"]])
                        and isinstance(entry["value"], (int, float))):
                    value = float(entry["value"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                value = None
        if value is None:
            self.corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: Mapping[str, Any], value: float) -> None:
        """Store ``value`` under ``key`` atomically (a reader sees the old entry, the new one or none)."""
        key = dict(key)
        entry = {"key": key, "value": float(value), "sha256": _digest([key, float(value)])}
        data = json.dumps(entry, sort_keys=True).encode()
        target = self.path(key)
        self.fs.create_dir(target.rpartition("/")[0], recursive=True)
        if not self.renames:
            with self.fs.open_output_stream(target) as f:
                f.write(data)
        else:
            tmp = f"{target}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, target)
        self.writes += 1

    def stats(self) -> dict[str, float]:
        """Namespaced counters: ``store/hits``, ``store/misses``, ``store/writes``, ``store/corrupt``,
        ``store/hit_rate`` (hits over lookups; 0 before the first)."""
        lookups = self.hits + self.misses
        return {"store/hits": float(self.hits), "store/misses": float(self.misses), "store/writes": float(self.writes),
                "store/corrupt": float(self.corrupt), "store/hit_rate": self.hits / lookups if lookups else 0.0}


def merge_stats(stats: list[Mapping[str, float]]) -> dict[str, float]:
    """Sum the counters of several stores' :meth:`MeasurementStore.stats` (e.g. one per evaluator actor)."""
    total = {name: sum(float(s.get(name, 0.0)) for s in stats)
             for name in ("store/hits", "store/misses", "store/writes", "store/corrupt")}
    lookups = total["store/hits"] + total["store/misses"]
    return {**total, "store/hit_rate": total["store/hits"] / lookups if lookups else 0.0}
