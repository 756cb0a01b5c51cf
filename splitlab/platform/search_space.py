"""The ``sweep:`` section of an experiment spec and its mapping to a Ray Tune search space.

A spec is the YAML that ``splitlab train`` runs; a sweep spec adds one section::

    sweep:
      name: network-sweep              # MLflow tag splitlab.sweep and the Tune experiment folder
      metric: policy/return_vs_oracle  # what the searcher and scheduler optimise
      mode: max
      searcher: random                 # by name: random (grid + sampling, built in), optuna, hyperopt, ...
      scheduler: fifo                  # by name: fifo, asha, hyperband, median_stopping_rule
      num_samples: 1                   # repeats of the grid (each repeat draws the distributions anew)
      params:                          # dotted path into the spec -> a value or a search domain
        env.dynamics.mean_db: {grid_search: [0, 10, 20]}
        algorithm.lr: {loguniform: [1.0e-5, 1.0e-3]}
        env.w_l: {uniform: [0.0, 1.0]}
        env.dynamics.fading: {choice: [none, rayleigh]}
        algorithm.seed: {randint: [0, 1000]}     # low inclusive, high exclusive (Tune's randint)

Every path becomes a nested key of Tune's ``param_space`` (``algorithm.lr`` -> ``{"algorithm": {"lr": ...}}``),
so a trial's config is a partial spec that :func:`apply_overrides` merges over the base spec, and MLflow
params read ``algorithm/lr``. Everything is checked here, before Ray starts; errors name the field.
"""
from __future__ import annotations

import copy
import importlib.util
import itertools
import math
import numbers
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from splitlab.platform.dotted import set_dotted

DOMAINS = ("grid_search", "choice", "uniform", "loguniform", "randint")
"""Accepted search-domain keys of a ``params`` entry."""
BUILTIN_SEARCHERS = ("random", "variant_generator")
"""Searchers that need no extra package; both expand grid_search and sample the distributions."""
EXTERNAL_SEARCHERS = {"optuna": "optuna", "hyperopt": "hyperopt", "bayesopt": "bayes_opt", "ax": "ax",
                      "nevergrad": "nevergrad", "zoopt": "zoopt", "hebo": "hebo", "bohb": "hpbandster"}
"""Model-based searchers Tune knows by name -> the module each needs installed."""
SCHEDULERS = {"fifo": "fifo", "asha": "async_hyperband", "async_hyperband": "async_hyperband",
              "hyperband": "hyperband", "median_stopping_rule": "median_stopping_rule"}
"""Scheduler names accepted -> Tune's ``create_scheduler`` name. Population-based schedulers are left
out: they need trials that restore mid-run from a mutated config, which a split-policy trial is not."""
MODES = ("max", "min")
SWEEP_KEYS = ("name", "metric", "mode", "searcher", "searcher_args", "scheduler", "scheduler_args",
              "num_samples", "max_concurrent_trials", "cpus_per_trial", "storage_path", "experiment", "params")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Domain:
    """One swept parameter: ``kind`` in DOMAINS and its arguments as written in the spec."""

    kind: str
    """grid_search, choice, uniform, loguniform or randint."""
    args: list
    """Values (grid_search, choice) or bounds ([low, high]; loguniform may add a base)."""

    def to_tune(self) -> Any:
        """The Tune object for this domain (``tune.grid_search`` returns a plain dict marker)."""
        from ray import tune

        if self.kind == "grid_search":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        return tune.randint(*self.args)

    def representatives(self) -> list:
        """Values that a validation pass tries: every listed value, or both ends of a range."""
        if self.kind in ("grid_search", "choice"):
            return list(self.args)
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return [self.args[0], self.args[1]]

    def sample(self, rng: random.Random) -> Any:
        """One value drawn without Ray (for dry runs and tests)."""
        if self.kind in ("grid_search", "choice"):
            return rng.choice(self.args)
        low, high = self.args[0], self.args[1]
        if self.kind == "uniform":
            return rng.uniform(low, high)
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(low), math.log(high)))
        return rng.randrange(low, high)


@dataclass
class SweepSpec:
    """The validated ``sweep:`` section. Build with :meth:`from_dict`."""

    name: str
    """Sweep name: the Tune experiment folder under ``storage_path`` and the MLflow tag ``splitlab.sweep``."""
    metric: str = "policy/return"
    """Reported metric the searcher and scheduler optimise (namespaced, as the trainable reports it)."""
    mode: str = "max"
    """``max`` or ``min``."""
    searcher: str = "random"
    """By name: random / variant_generator (built in) or one of EXTERNAL_SEARCHERS when its package is installed."""
    searcher_args: dict = field(default_factory=dict)
    """Keyword arguments for the searcher's constructor."""
    scheduler: str = "fifo"
    """By name, one of SCHEDULERS (asha stops weak trials early on ``metric``)."""
    scheduler_args: dict = field(default_factory=dict)
    """Keyword arguments for the scheduler (e.g. grace_period, max_t for asha)."""
    num_samples: int = 1
    """Trials per grid point (Tune's num_samples): repeats of the grid, each drawing the distributions anew."""
    max_concurrent_trials: int | None = None
    """Trials running at once; None lets Tune fill the cluster's CPUs."""
    cpus_per_trial: float = 1.0
    """CPUs reserved per trial; fractions are fine (a 2-core machine runs 4 trials at 0.5)."""
    storage_path: str = "runs/sweeps"
    """Where Tune keeps trial state and checkpoints (a local folder, or s3://... / a shared mount on a cluster)."""
    experiment: str = "splitlab-sweeps"
    """MLflow experiment the trials' runs land in; the sweep tag tells sweeps apart inside it."""
    params: dict[str, Domain | Any] = field(default_factory=dict)
    """Dotted spec path -> Domain (swept) or a plain value (fixed override for every trial)."""

    @classmethod
    def from_dict(cls, raw: Any, default_name: str = "sweep") -> SweepSpec:
        """Validate the raw ``sweep:`` mapping; errors name the field, the value and what is accepted."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"sweep must be a mapping with keys {list(SWEEP_KEYS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(SWEEP_KEYS))
        if unknown:
            raise ValueError(f"unknown sweep keys {unknown}; accepted keys: {list(SWEEP_KEYS)}")
        name = raw.get("name", default_name)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"sweep.name must be letters, digits, '_', '-' or '.', got {name!r}")
        metric = raw.get("metric", cls.metric)
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"sweep.metric must be a metric name like 'policy/return', got {metric!r}")
        mode = raw.get("mode", "max")
        if mode not in MODES:
            raise ValueError(f"sweep.mode must be one of {list(MODES)}, got {mode!r}")
        searcher = _check_searcher(raw.get("searcher", "random"))
        scheduler = raw.get("scheduler", "fifo")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"sweep.scheduler must be one of {list(SCHEDULERS)}, got {scheduler!r}")
        for key in ("searcher_args", "scheduler_args"):
            if not isinstance(raw.get(key, {}), Mapping):
                raise ValueError(f"sweep.{key} must be a mapping of keyword arguments, got {raw[key]!r}")
        num_samples = raw.get("num_samples", 1)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"sweep.num_samples must be an integer >= 1, got {num_samples!r}")
        mct = raw.get("max_concurrent_trials")
        if mct is not None and (isinstance(mct, bool) or not isinstance(mct, int) or mct < 1):
            raise ValueError(f"sweep.max_concurrent_trials must be an integer >= 1 or null, got {mct!r}")
        cpus = raw.get("cpus_per_trial", 1.0)
        if isinstance(cpus, bool) or not isinstance(cpus, numbers.Real) or not 0 < cpus <= 1024:
            raise ValueError(f"sweep.cpus_per_trial must be a number in (0, 1024], got {cpus!r}")
        for key in ("storage_path", "experiment"):
            if key in raw and (not isinstance(raw[key], str) or not raw[key]):
                raise ValueError(f"sweep.{key} must be a non-empty string, got {raw[key]!r}")
        params_raw = raw.get("params")
        if not isinstance(params_raw, Mapping) or not params_raw:
            raise ValueError("sweep.params must map dotted spec paths to values or search domains, e.g. "
                             "{'env.w_l': {'grid_search': [0.1, 0.5]}}, got " + repr(params_raw))
        params = {str(path): parse_domain(f"sweep.params.{path}", value) for path, value in params_raw.items()}
        _check_paths(params)
        spec = cls(name=name, metric=metric, mode=mode, searcher=searcher, searcher_args=dict(raw.get("searcher_args", {})),
                   scheduler=scheduler, scheduler_args=dict(raw.get("scheduler_args", {})), num_samples=num_samples,
                   max_concurrent_trials=mct, cpus_per_trial=float(cpus),
                   storage_path=raw.get("storage_path", cls.storage_path),
                   experiment=raw.get("experiment", cls.experiment), params=params)
        if searcher not in BUILTIN_SEARCHERS and spec.grid_points() > 1:
            raise ValueError(f"sweep.searcher {searcher!r} cannot expand grid_search (only {list(BUILTIN_SEARCHERS)} "
                             "can); use choice for that searcher or searcher: random")
        return spec

    @property
    def swept(self) -> dict[str, Domain]:
        """Only the parameters that vary."""
        return {p: d for p, d in self.params.items() if isinstance(d, Domain)}

    def grid_points(self) -> int:
        """Number of grid combinations (1 when nothing uses grid_search)."""
        return math.prod(len(d.args) for d in self.swept.values() if d.kind == "grid_search")

    def trial_count(self) -> int:
        """How many trials the sweep runs: grid points x num_samples."""
        return self.grid_points() * self.num_samples

    def param_space(self) -> dict:
        """Tune's ``param_space``: the params as nested dicts, swept ones as Tune domains."""
        out: dict = {}
        for path, value in self.params.items():
            set_dotted(out, path, value.to_tune() if isinstance(value, Domain) else copy.deepcopy(value))
        return out

    def representative_overrides(self, limit: int = 64) -> list[dict]:
        """Nested override dicts covering every listed value and both ends of every range (for validation).

        The full product when it has at most ``limit`` members, else each value once with the others at
        their first representative.
        """
        paths = list(self.params)
        choices = [self.params[p].representatives() if isinstance(self.params[p], Domain) else [self.params[p]]
                   for p in paths]
        if math.prod(len(c) for c in choices) <= limit:
            combos = list(itertools.product(*choices))
        else:
            base = [c[0] for c in choices]
            combos = [tuple(base)] + [tuple(v if j == i else base[j] for j in range(len(paths)))
                                      for i, c in enumerate(choices) for v in c[1:]]
        out = []
        for combo in combos:
            nested: dict = {}
            for path, value in zip(paths, combo):
                set_dotted(nested, path, copy.deepcopy(value))
            out.append(nested)
        return out

    def to_dict(self) -> dict:
        """Plain dict as written in YAML (for logging and for the job that a cluster runs)."""
        return {"name": self.name, "metric": self.metric, "mode": self.mode, "searcher": self.searcher,
                "searcher_args": self.searcher_args, "scheduler": self.scheduler,
                "scheduler_args": self.scheduler_args, "num_samples": self.num_samples,
                "max_concurrent_trials": self.max_concurrent_trials, "cpus_per_trial": self.cpus_per_trial,
                "storage_path": self.storage_path, "experiment": self.experiment,
                "params": {p: ({d.kind: d.args} if isinstance(d, Domain) else d) for p, d in self.params.items()}}


def _check_searcher(name: Any) -> str:
    if name in BUILTIN_SEARCHERS:
        return name
    if name in EXTERNAL_SEARCHERS:
        module = EXTERNAL_SEARCHERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"sweep.searcher {name!r} needs the {module!r} package, which is not installed; "
                             f"install it or use one of {list(BUILTIN_SEARCHERS)}")
        return name
    raise ValueError(f"sweep.searcher must be one of {list(BUILTIN_SEARCHERS) + list(EXTERNAL_SEARCHERS)}, "
                     f"got {name!r}")


def _number(name: str, value: Any, integer: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral if integer else numbers.Real)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return int(value) if integer else float(value)


def parse_domain(name: str, value: Any) -> Domain | Any:
    """A ``params`` entry: ``{kind: args}`` with kind in DOMAINS becomes a Domain; anything else is a fixed value.

    A mapping whose only key looks like a misspelt domain (``{gridsearch: ...}``) is rejected rather
    than passed through as a fixed value, since that is almost always a typo.
    """
    if not (isinstance(value, Mapping) and len(value) == 1):
        return value
    (kind, args), = value.items()
    if kind not in DOMAINS:
        near = [d for d in DOMAINS if d.replace("_", "") == str(kind).replace("_", "").lower()]
        if near or str(kind).lower() in ("grid", "log_uniform", "randn", "quniform", "qloguniform", "qrandint",
                                         "lograndint", "sample_from"):
            raise ValueError(f"{name}: unknown search domain {kind!r}; accepted: {list(DOMAINS)}")
        return value
    if kind in ("grid_search", "choice"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{name}.{kind} must be a non-empty list of values, got {args!r}")
        return Domain(kind, list(args))
    if not isinstance(args, list) or len(args) not in ((2, 3) if kind == "loguniform" else (2,)):
        form = "[low, high] or [low, high, base]" if kind == "loguniform" else "[low, high]"
        raise ValueError(f"{name}.{kind} must be {form}, got {args!r}")
    integer = kind == "randint"
    low, high = (_number(f"{name}.{kind}[{i}]", v, integer) for i, v in enumerate(args[:2]))
    if not low < high:
        raise ValueError(f"{name}.{kind} needs low < high, got {args!r}")
    if kind == "loguniform":
        if low <= 0:
            raise ValueError(f"{name}.loguniform needs 0 < low < high, got {args!r}")
        if len(args) == 3 and _number(f"{name}.loguniform[2]", args[2]) <= 1:
            raise ValueError(f"{name}.loguniform base must be > 1, got {args[2]!r}")
    return Domain(kind, [low, high, *args[2:]])


def _check_paths(params: Mapping[str, Any]) -> None:
    for path in params:
        parts = path.split(".")
        if not path or any(not p for p in parts):
            raise ValueError(f"sweep.params key {path!r} must be a dotted path like 'env.w_l'")
        if parts[0] == "sweep":
            raise ValueError(f"sweep.params key {path!r} cannot sweep the sweep section itself")
    ordered = sorted(params)
    for a, b in zip(ordered, ordered[1:]):
        if b.startswith(a + "."):
            raise ValueError(f"sweep.params keys {a!r} and {b!r} overlap: one sets the other's parent")


def apply_overrides(base: Mapping, overrides: Mapping) -> dict:
    """Deep-merge a trial's nested config over the base spec (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply_overrides(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
