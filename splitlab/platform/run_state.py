"""A training run's folder: what it records to resume, and the guard that keeps a changed spec out.

``state.json`` (:class:`RunState`) holds the spec the folder was started with and its hash, the newest
checkpoint, the history so far and the mode's counters, all as JSON; paths in it are relative to the run
folder, so a moved or copied folder resumes. :func:`open_run_folder` decides what a rerun does:

- same spec, unfinished: resume from the newest checkpoint (none yet: start over);
- same spec, finished: nothing to train, ``results.json`` holds the results;
- changed spec: :class:`SpecChanged` naming the changed keys (``--restart`` starts over in the folder,
  a new ``name`` gives the run a folder of its own);
- ``resume=False`` (``--restart``): delete the folder's outputs and start over.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitlab.dotted import UNSET, changed_paths
from splitlab.platform.spec import ExperimentSpec

STATE_FILE = "state.json"
RESULTS_FILE = "results.json"
OUTPUTS = ("checkpoints", "rllib", STATE_FILE, RESULTS_FILE, "spec.yaml", "history.csv", "surrogate.npz",
           "grid.json", "policy", "policy.json", "k_vs_channel.png", "learning_curve.png")
"""Everything a run writes in its folder (what ``--restart`` deletes; other files stay)."""
WHERE_KEYS = ("name", "out", "tracking", "checkpoint")
"""Spec sections that say where a run lives, logs and checkpoints, not what it computes: outside the hash,
so a moved folder (another ``out``) or a rerun without MLflow resumes."""


class SpecChanged(ValueError):
    """A run folder holds a run of another spec (the CLI exits with status 2 and this message)."""


def atomic_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file, so a killed process never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def spec_identity(spec: ExperimentSpec) -> dict[str, Any]:
    """The resolved spec without :data:`WHERE_KEYS`, as plain JSON types (what the hash covers)."""
    plain = json.loads(json.dumps(spec.to_dict(), default=str))
    if isinstance(plain.get("quality"), dict):
        plain["quality"].pop("store", None)  # where measurements are kept, not what is measured
    return {k: v for k, v in plain.items() if k not in WHERE_KEYS}


def spec_hash(identity: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of :func:`spec_identity` (first 16 hex digits)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RunState:
    """Everything a run folder records to resume (``state.json``)."""

    spec_hash: str
    """Hash of the spec the folder was started with (:func:`spec_hash`)."""
    spec: dict[str, Any]
    """That spec (:func:`spec_identity`), to name the keys a rerun changed."""
    iteration: int = 0
    """Last training iteration with a checkpoint (0: none yet)."""
    checkpoint: str | None = None
    """That checkpoint's folder, relative to the run folder."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Metrics of every iteration up to the checkpoint (or to the end)."""
    wall_s: float = 0.0
    """Wall time spent so far, over every resume."""
    finished: bool = False
    """The run evaluated and wrote ``results.json``."""
    mlflow_run_id: str | None = None
    """The MLflow run a resume continues."""
    mode: dict[str, Any] = field(default_factory=dict)
    """The training mode's own counters (:meth:`splitlab.platform.modes.TrainingMode.counters`)."""

    @classmethod
    def fresh(cls, spec: ExperimentSpec) -> RunState:
        identity = spec_identity(spec)
        return cls(spec_hash(identity), identity)

    def checkpoint_dir(self, run_dir: Path) -> Path | None:
        """The checkpoint folder inside ``run_dir`` (wherever the folder now is), None if it is gone."""
        if not self.checkpoint:
            return None
        path = Path(run_dir) / self.checkpoint
        return path if path.is_dir() else None

    def save(self, run_dir: Path) -> None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_json(Path(run_dir) / STATE_FILE, dataclasses.asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunState | None:
        """The folder's state, None without one; a state file from an older splitlab is an error."""
        path = Path(run_dir) / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        if "spec_hash" not in raw:
            raise SpecChanged(f"run folder {run_dir} was written by an older splitlab (its {STATE_FILE} records no "
                              "spec hash, and its checkpoint paths are absolute); rerun with --restart to train "
                              "it again there, or give the run a new name (--name NEW)")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def clear_outputs(run_dir: Path) -> None:
    """Delete what a run writes in ``run_dir`` (:data:`OUTPUTS`); anything else there stays."""
    for name in OUTPUTS:
        p = Path(run_dir) / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _show(value: Any) -> str:
    return UNSET if value is UNSET else repr(value)


def describe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 12) -> str:
    """``"algorithm.iterations: 3 -> 5, env.w_l: 0.5 -> 0.2"`` (the first ``limit`` changed keys)."""
    changes = changed_paths(old, new)
    text = ", ".join(f"{key}: {_show(a)} -> {_show(b)}" for key, a, b in changes[:limit])
    return text + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def open_run_folder(run_dir: Path, spec: ExperimentSpec, resume: bool = True) -> RunState | None:
    """What a run of ``spec`` in ``run_dir`` starts from (see the module docstring).

    Returns the state to resume or the finished state, or None to start over (the folder's outputs
    deleted). Raises :class:`SpecChanged` when the folder holds a run of another spec.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = RunState.load(run_dir) if resume else None
    if state is not None:
        mine = RunState.fresh(spec)
        if state.spec_hash != mine.spec_hash:
            what = "finished run" if state.finished else f"run (at iteration {state.iteration})"
            raise SpecChanged(f"run folder {run_dir} holds a {what} of another spec; changed: "
                              f"{describe_changes(state.spec, mine.spec)}. Rerun with --restart to start over "
                              "in that folder, or give this run a new name (--name NEW)")
        state.finished = state.finished and (run_dir / RESULTS_FILE).exists()  # else: evaluate again
        if state.finished or state.checkpoint_dir(run_dir) is not None:
            return state
    clear_outputs(run_dir)
    return None
