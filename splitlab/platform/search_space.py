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
      methods:                         # optional: named bundles of settings, one more grid axis
        dyna: {mode: dyna}
        dqn: {mode: model_free, algorithm.name: dqn}

Every path becomes a nested key of Tune's ``param_space`` (``algorithm.lr`` -> ``{"algorithm": {"lr": ...}}``),
so a trial's config is a partial spec that :func:`apply_overrides` merges over the base spec, and MLflow
params read ``algorithm/lr``. ``methods`` compares settings that must change together (a training mode
with its algorithm): the trial config carries ``method: NAME`` (the MLflow param ``method``) and
:func:`resolve_method` swaps it for that method's overrides before the merge, so ``methods x seeds`` is
one sweep. Everything is checked here, before Ray starts; errors name the field.
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
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from splitlab.config import ConfigModel, Float, Int, PositiveInt, Str, validate

from splitlab.dotted import set_dotted

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
METHOD_KEY = "method"
"""The trial-config key (and MLflow param) naming a trial's entry of ``sweep.methods``."""


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


class SweepSpec(ConfigModel):
    """The validated ``sweep:`` section. Build with :meth:`from_dict`."""

    label: ClassVar[str] = "sweep"

    name: Annotated[Str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] = "sweep"
    """Sweep name: the Tune experiment folder under ``storage_path`` and the MLflow tag ``splitlab.sweep``
    (letters, digits, '_', '-', '.'; default: the spec file's stem)."""
    metric: Annotated[Str, Field(min_length=1)] = "policy/return"
    """Reported metric the searcher and scheduler optimise (namespaced, as the trainable reports it)."""
    mode: Literal[MODES] = "max"
    """``max`` or ``min``."""
    searcher: Str = "random"
    """By name: random / variant_generator (built in) or one of optuna, hyperopt, bayesopt, ax, nevergrad,
    zoopt, hebo, bohb when its package is installed."""
    searcher_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the searcher's constructor."""
    scheduler: Literal[tuple(SCHEDULERS)] = "fifo"
    """By name: fifo, asha / async_hyperband, hyperband, median_stopping_rule (asha stops weak trials early
    on ``metric``)."""
    scheduler_args: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the scheduler (e.g. grace_period, max_t for asha)."""
    num_samples: PositiveInt = 1
    """Trials per grid point (Tune's num_samples): repeats of the grid, each drawing the distributions anew."""
    max_concurrent_trials: PositiveInt | None = None
    """Trials running at once; None lets Tune fill the cluster's CPUs."""
    max_failures: Annotated[Int, Field(ge=0, le=100)] = 2
    """Times a failed trial (a lost node, a killed worker) is restarted from its last checkpoint; 0: never."""
    cpus_per_trial: Annotated[Float, Field(gt=0, le=1024)] = 1.0
    """CPUs reserved per trial; fractions are fine (a 2-core machine runs 4 trials at 0.5)."""
    storage_path: Annotated[Str, Field(min_length=1)] = "runs/sweeps"
    """Where Tune keeps trial state and checkpoints (a local folder, or s3://... / a shared mount on a cluster)."""
    experiment: Annotated[Str, Field(min_length=1)] = "splitlab-sweeps"
    """MLflow experiment the trials' runs land in; the sweep tag tells sweeps apart inside it."""
    params: dict[str, Any]
    """Dotted spec path -> a search domain (``{grid_search: [...]}``, ``{choice: [...]}``, ``{uniform: [low,
    high]}``, ``{loguniform: [low, high]}``, ``{randint: [low, high]}``) or a plain value (a fixed override
    for every trial)."""
    methods: dict[str, dict[str, Any]] | None = None
    """Named methods compared in one sweep: name -> {dotted spec path: value} set together (e.g. ``mode`` and
    ``algorithm.name``). A grid axis crossed with ``params`` (trial config and MLflow param ``method``); a
    method may not set a path that ``params`` sets. None: no method axis."""

    @field_validator("searcher")
    @classmethod
    def _searcher(cls, name: str) -> str:
        return _check_searcher(name)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError("must map dotted spec paths to values or search domains, e.g. "
                             "{'env.w_l': {'grid_search': [0.1, 0.5]}}")
        params = {str(path): parse_domain(f"sweep.params.{path}", value) for path, value in raw.items()}
        _check_paths(params)
        return params

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, raw: Any) -> Any:
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError("must map method names to {dotted spec path: value}, e.g. "
                             "{'dyna': {'mode': 'dyna'}, 'dqn': {'mode': 'model_free', 'algorithm.name': 'dqn'}}")
        out = {}
        for name, settings in raw.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"method name {name!r} must be letters, digits, '_', '-', '.'")
            if not isinstance(settings, Mapping) or not settings:
                raise ValueError(f"method {name!r} must map dotted spec paths to values, got {settings!r}")
            for path, value in settings.items():
                if isinstance(parse_domain(f"sweep.methods.{name}.{path}", value), Domain):
                    raise ValueError(f"method {name!r} sets {path!r} to a search domain; a method's values are fixed "
                                     "(sweep a value in params instead)")
            _check_paths(settings)
            out[str(name)] = {str(p): v for p, v in settings.items()}
        return out

    @model_validator(mode="after")
    def _methods_apart_from_params(self) -> SweepSpec:
        if self.methods is None:
            return self
        if METHOD_KEY in self.params or any(p.startswith(METHOD_KEY + ".") for p in self.params):
            raise ValueError(f"sweep.params cannot set {METHOD_KEY!r} when sweep.methods is given (it names the method)")
        for name, settings in self.methods.items():
            for path in settings:
                clash = [p for p in self.params if p == path or p.startswith(path + ".") or path.startswith(p + ".")]
                if clash:
                    raise ValueError(f"method {name!r} sets {path!r}, which sweep.params also sets ({clash[0]!r}); "
                                     "set it in one place")
        return self

    @model_validator(mode="after")
    def _grid_searcher(self) -> SweepSpec:
        if self.searcher not in BUILTIN_SEARCHERS and self.grid_points() > 1:
            raise ValueError(f"sweep.searcher {self.searcher!r} cannot expand grid_search (only "
                             f"{list(BUILTIN_SEARCHERS)} can); use choice for that searcher or searcher: random")
        return self

    @classmethod
    def from_dict(cls, raw: Any, default_name: str = "sweep") -> SweepSpec:
        """Validate the raw ``sweep:`` mapping; errors name the field, the value and what is accepted."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"sweep must be a mapping with keys {list(cls.model_fields)}, got {raw!r}")
        return validate(cls, {"name": default_name, **raw}, "sweep")

    @property
    def swept(self) -> dict[str, Domain]:
        """Only the parameters that vary."""
        return {p: d for p, d in self.params.items() if isinstance(d, Domain)}

    def grid_points(self) -> int:
        """Number of grid combinations, methods included (1 when nothing uses grid_search or methods)."""
        return math.prod(len(d.args) for d in self.swept.values() if d.kind == "grid_search") * len(
            self.methods or {None: None})

    def method_overrides(self) -> dict[str, dict] | None:
        """Each method's settings as a nested override dict (what :func:`resolve_method` merges); None without methods."""
        if self.methods is None:
            return None
        out = {}
        for name, settings in self.methods.items():
            nested: dict = {}
            for path, value in settings.items():
                set_dotted(nested, path, copy.deepcopy(value))
            out[name] = nested
        return out

    def trial_count(self) -> int:
        """How many trials the sweep runs: grid points x num_samples."""
        return self.grid_points() * self.num_samples

    def param_space(self) -> dict:
        """Tune's ``param_space``: the params as nested dicts, swept ones as Tune domains."""
        out: dict = {}
        for path, value in self.params.items():
            set_dotted(out, path, value.to_tune() if isinstance(value, Domain) else copy.deepcopy(value))
        if self.methods is not None:
            from ray import tune

            out[METHOD_KEY] = tune.grid_search(list(self.methods))
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
        methods = self.method_overrides()
        if methods is not None:  # every method with every combination: settings may clash only together
            out = [apply_overrides(nested, m) for nested in out for m in methods.values()]
        return out

    def to_dict(self) -> dict:
        """Plain dict as written in YAML (for logging and for the job that a cluster runs)."""
        out = self.model_dump(mode="json", exclude={"params"})
        out["params"] = {p: ({d.kind: d.args} if isinstance(d, Domain) else d) for p, d in self.params.items()}
        return out


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_method(config: Mapping, methods: Mapping[str, Mapping] | None) -> dict:
    """A trial's Tune config with ``method: NAME`` replaced by that method's nested overrides (see
    :meth:`SweepSpec.method_overrides`); a config without the key is returned as is."""
    config = dict(config)
    if METHOD_KEY not in config or methods is None:
        return config
    name = config.pop(METHOD_KEY)
    if name not in methods:
        raise ValueError(f"trial config names method {name!r}; the sweep's methods are {sorted(methods)}")
    return apply_overrides(config, methods[name])


def _check_searcher(name: Any) -> str:
    if name in BUILTIN_SEARCHERS:
        return name
    if name in EXTERNAL_SEARCHERS:
        module = EXTERNAL_SEARCHERS[name]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"needs the {module!r} package, which is not installed; "
                             f"install it or use one of {list(BUILTIN_SEARCHERS)}")
        return name
    raise ValueError(f"must be one of {list(BUILTIN_SEARCHERS) + list(EXTERNAL_SEARCHERS)}")


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
