"""The experiment spec: one YAML file names everything a training run needs; validated before Ray starts.

``splitlab train SPEC.yaml`` reads it with :func:`load_spec`. Every section is a typed dataclass whose
fields each carry a docstring; a bad field fails at load time with its dotted name, the value, and what
would be accepted. Sections (all optional but ``quality``)::

    name: dyna-smollm2              # run name: the output folder and the MLflow run name
    mode: dyna                      # paper | dyna | model_free  (how rewards reach the agent)
    quality:                        # the real measurement: a reward-model spec (splitlab.envs.reward_models)
      kind: live                    #   live: the real LLM; synthetic / grid: stand-ins for tests and demos
      model: smollm2
      channel: {kind: awgn}
      n_tokens: 256
      window: 64
      decimals: 0                   #   evaluations are cached per (k, value rounded to this many decimals)
    env:                            # SplitEnvConfig keys (and MultiUserConfig keys with env: multi_user);
      env: split                    #   reward_model is set by the mode, never here
      preset: wireless
      candidate_ks: [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
      dynamics: {kind: gauss_markov, mean_snr_db: 12, std_db: 8}
    algorithm:    {name: ppo, iterations: 20, lr: 3.0e-4, num_env_runners: 2, envs_per_env_runner: 8, ...}
    surrogate:    {members: 5, hidden: [128, 128], epochs: 800, holdout: 0.2}
    dyna:         {initial_evals: 16, evals_per_iter: 8, budget: 64, evaluators: 2}
    paper:        {grid: {kind: grid, path: runs/analysis, channel: erasure}}  # or measure ks x values
    evaluation:   {episodes: 20, truth: quality, baselines: true}
    checkpoint:   {every: 1, keep: 2}
    tracking:     {enabled: true, uri: null, experiment: splitlab-train}
    out: runs/train                 # the run writes to out/name

Other tools add top-level sections with :func:`register_section` (a sweep section, for instance);
an unknown top-level key is an error that lists the accepted ones.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

import splitlab.mbrl.rllib_env  # noqa: F401  (registers the reward kinds surrogate and counted)
from splitlab.channel.validation import dataclass_from_mapping
from splitlab.mbrl.surrogate import SurrogateConfig
from splitlab.platform.dotted import set_dotted

MODES = ("paper", "dyna", "model_free")
"""How rewards reach the agent: ``paper`` (surrogate fitted once on a measured grid), ``dyna``
(surrogate refreshed from budgeted real evaluations), ``model_free`` (the real quality directly)."""
ALGORITHMS = ("ppo", "dqn")
ENV_KINDS = ("split", "multi_user")


# ---------------------------------------------------------------------------------------- checks
def _num(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
         integer: bool = False) -> Any:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    what = "an integer" if integer else "a number"
    if not ok or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if (value <= low if low_open else value < low) or value > high:
        lo = "(" if low_open else "["
        raise ValueError(f"{name} must be {what} in {lo}{low:g}, {high:g}], got {value!r}")
    return int(value) if integer else float(value)


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _section(cls: type, name: str, raw: Any) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the section."""
    return dataclass_from_mapping(cls, raw, name)


def _prefixed(name: str, fn: Callable[[], Any]) -> Any:
    """Run a validator from another module and put the section name in front of its message."""
    try:
        return fn()
    except ValueError as err:
        msg = str(err)
        raise ValueError(msg if msg.startswith(name) else f"{name}: {msg}") from None
    except TypeError as err:  # a wrongly typed value deep inside (e.g. a string where a mapping belongs)
        raise ValueError(f"{name}: {err}") from None


# -------------------------------------------------------------------------------------- sections
@dataclass
class AlgorithmSpec:
    """The RL algorithm (RLlib new API stack) and how long it trains."""

    name: str = "ppo"
    """``ppo`` or ``dqn``."""
    iterations: int = 20
    """Training iterations (``algo.train()`` calls); Dyna refreshes the surrogate after each."""
    lr: float = 3e-4
    """Learning rate."""
    gamma: float = 0.9
    """Discount (the wireless reward does not depend on earlier splits, so low values learn fastest)."""
    train_batch_size: int = 2000
    """Env steps per iteration (PPO: per learner update; DQN: sampled per iteration)."""
    minibatch_size: int = 256
    """PPO SGD minibatch; DQN train batch from the replay buffer."""
    num_epochs: int = 5
    """PPO passes over each batch."""
    entropy_coeff: float = 0.01
    """PPO entropy bonus."""
    hidden: tuple[int, ...] = (64, 64)
    """Policy/value network widths."""
    num_env_runners: int = 1
    """Sampling actors (0: sample in the driver)."""
    envs_per_env_runner: int = 4
    """Envs (simulated users) each env runner steps as one vector."""
    env_runner_cpus: float = 0.5
    """CPUs each env runner reserves (fractional on small machines)."""
    rollout_fragment_length: int | str = "auto"
    """Steps per env per sample call, or ``auto``."""
    epsilon_timesteps: int = 10000
    """DQN: env steps over which exploration epsilon decays from 1 to 0.02."""
    seed: int = 0
    """Seed of RLlib (env runners, module init) and of the training episodes."""

    def __post_init__(self) -> None:
        _choice("algorithm.name", self.name, ALGORITHMS)
        self.iterations = _num("algorithm.iterations", self.iterations, 1, 10**6, integer=True)
        self.lr = _num("algorithm.lr", self.lr, 0.0, 1.0, low_open=True)
        self.gamma = _num("algorithm.gamma", self.gamma, 0.0, 1.0)
        self.train_batch_size = _num("algorithm.train_batch_size", self.train_batch_size, 1, 10**8, integer=True)
        self.minibatch_size = _num("algorithm.minibatch_size", self.minibatch_size, 1, 10**8, integer=True)
        self.num_epochs = _num("algorithm.num_epochs", self.num_epochs, 1, 1000, integer=True)
        self.entropy_coeff = _num("algorithm.entropy_coeff", self.entropy_coeff, 0.0, 10.0)
        if isinstance(self.hidden, (str, bytes)) or not isinstance(self.hidden, (list, tuple)) or not self.hidden:
            raise ValueError(f"algorithm.hidden must be a non-empty list of layer widths like [64, 64], "
                             f"got {self.hidden!r}")
        self.hidden = tuple(_num("algorithm.hidden", h, 1, 65536, integer=True) for h in self.hidden)
        self.num_env_runners = _num("algorithm.num_env_runners", self.num_env_runners, 0, 1024, integer=True)
        self.envs_per_env_runner = _num("algorithm.envs_per_env_runner", self.envs_per_env_runner, 1, 10**4,
                                        integer=True)
        self.env_runner_cpus = _num("algorithm.env_runner_cpus", self.env_runner_cpus, 0.0, 64.0)
        if self.rollout_fragment_length != "auto":
            self.rollout_fragment_length = _num("algorithm.rollout_fragment_length", self.rollout_fragment_length,
                                                1, 10**6, integer=True)
        self.epsilon_timesteps = _num("algorithm.epsilon_timesteps", self.epsilon_timesteps, 1, 10**9, integer=True)
        self.seed = _num("algorithm.seed", self.seed, 0, 2**31 - 1, integer=True)
        if self.name == "ppo" and self.minibatch_size > self.train_batch_size:
            raise ValueError(f"algorithm.minibatch_size must be at most train_batch_size={self.train_batch_size}, "
                             f"got {self.minibatch_size}")


@dataclass
class DynaSpec:
    """Dyna mode: how many real LLM evaluations refresh the surrogate, and who makes them."""

    initial_evals: int = 16
    """Real evaluations before training (every split at a lattice of the channel's quantiles), the
    clean reference perplexity included."""
    evals_per_iter: int = 8
    """Real evaluations after each training iteration at visited points: half where the ensemble
    disagrees most, half where a measurement could change the best split (wireless preset)."""
    budget: int = 64
    """Total real evaluations of the run (initial ones included); none are made once it is spent."""
    candidates: int = 4096
    """Most recent visited (k, value) pairs per iteration considered for evaluation."""
    value_range: tuple[float, float] | None = None
    """Channel values of the initial design [low, high]; None: mean +- 2 std of the dynamics (SNR) or
    the paper preset's rho_range."""
    evaluators: int = 1
    """Evaluator actors, each holding the LLM once."""
    evaluator_cpus: float = 0.0
    """CPUs each evaluator actor reserves (0 on small machines: they run between sampling rounds)."""

    def __post_init__(self) -> None:
        self.initial_evals = _num("dyna.initial_evals", self.initial_evals, 3, 10**6, integer=True)
        self.evals_per_iter = _num("dyna.evals_per_iter", self.evals_per_iter, 0, 10**6, integer=True)
        self.budget = _num("dyna.budget", self.budget, 1, 10**7, integer=True)
        if self.budget < self.initial_evals:
            raise ValueError(f"dyna.budget must be at least dyna.initial_evals={self.initial_evals}, got {self.budget}")
        self.candidates = _num("dyna.candidates", self.candidates, 1, 10**7, integer=True)
        if self.value_range is not None:
            if not isinstance(self.value_range, (list, tuple)) or len(self.value_range) != 2:
                raise ValueError(f"dyna.value_range must be a pair [low, high] or null, got {self.value_range!r}")
            lo, hi = (_num("dyna.value_range", v) for v in self.value_range)
            if lo >= hi:
                raise ValueError(f"dyna.value_range must have low < high, got {list(self.value_range)}")
            self.value_range = (lo, hi)
        self.evaluators = _num("dyna.evaluators", self.evaluators, 1, 64, integer=True)
        self.evaluator_cpus = _num("dyna.evaluator_cpus", self.evaluator_cpus, 0.0, 64.0)


@dataclass
class PaperSpec:
    """Paper mode: the measured grid the surrogate is fitted on (once, before training)."""

    grid: dict | None = None
    """A grid reward-model spec (``{kind: grid, path: runs/analysis, channel: erasure}`` or ``{kind:
    synthetic, ...}``); None: measure ``ks`` x ``values`` with the real quality now."""
    ks: tuple[int, ...] | None = None
    """Split points to measure when ``grid`` is None; None: the env's candidate ks (wireless) or 1..K_max."""
    values: tuple[float, ...] | None = None
    """Channel values to measure when ``grid`` is None; None: 6 evenly spaced over the design range."""

    def __post_init__(self) -> None:
        if self.grid is not None:
            self.grid = _reward_spec("paper.grid", self.grid, kinds=("grid", "synthetic"))
        if self.ks is not None:
            if not isinstance(self.ks, (list, tuple)) or not self.ks:
                raise ValueError(f"paper.ks must be a non-empty list of split points or null, got {self.ks!r}")
            self.ks = tuple(_num("paper.ks", k, 0, 10**4, integer=True) for k in self.ks)
        if self.values is not None:
            if not isinstance(self.values, (list, tuple)) or len(self.values) < 2:
                raise ValueError(f"paper.values must list at least 2 channel values or be null, got {self.values!r}")
            self.values = tuple(_num("paper.values", v) for v in self.values)


@dataclass
class EvaluationSpec:
    """Final evaluation on held-out channel traces, against the reference policies."""

    episodes: int = 20
    """Held-out episodes per policy (the same traces and seeds for every policy)."""
    seed: int = 1_000_003
    """Seed of the held-out traces (apart from training's small seeds)."""
    truth: str | dict = "quality"
    """Where true rewards come from: ``quality`` (the real measurement above, cached; its evaluations
    are counted apart from training's) or a grid reward-model spec (e.g. measured beforehand)."""
    baselines: bool = True
    """Also evaluate every fixed k, random and the oracle."""
    every: int = 0
    """Also evaluate the policy every this many iterations (0: only at the end)."""

    def __post_init__(self) -> None:
        self.episodes = _num("evaluation.episodes", self.episodes, 1, 10**6, integer=True)
        self.seed = _num("evaluation.seed", self.seed, 0, 2**63 - 1, integer=True)
        if self.truth != "quality":
            self.truth = _reward_spec("evaluation.truth", self.truth)
        self.baselines = _bool("evaluation.baselines", self.baselines)
        self.every = _num("evaluation.every", self.every, 0, 10**6, integer=True)


@dataclass
class CheckpointSpec:
    """Checkpoints: an interrupted run resumes from the newest one."""

    every: int = 1
    """Checkpoint every this many iterations (and always at the end)."""
    keep: int = 2
    """Newest checkpoints kept on disk."""

    def __post_init__(self) -> None:
        self.every = _num("checkpoint.every", self.every, 1, 10**6, integer=True)
        self.keep = _num("checkpoint.keep", self.keep, 1, 1000, integer=True)


@dataclass
class TrackingSpec:
    """MLflow logging (``splitlab.platform.tracking``)."""

    enabled: bool = True
    """Log the run to MLflow."""
    uri: str | None = None
    """Tracking URI; None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working directory."""
    experiment: str = "splitlab-train"
    """MLflow experiment name."""

    def __post_init__(self) -> None:
        self.enabled = _bool("tracking.enabled", self.enabled)
        if self.uri is not None and (not isinstance(self.uri, str) or not self.uri):
            raise ValueError(f"tracking.uri must be a non-empty string or null, got {self.uri!r}")
        if not isinstance(self.experiment, str) or not self.experiment:
            raise ValueError(f"tracking.experiment must be a non-empty string, got {self.experiment!r}")


# ------------------------------------------------------------------------------- reward specs
def _reward_spec(name: str, raw: Any, kinds: tuple[str, ...] | None = None) -> dict:
    """Check a reward-model mapping against its factory's signature without building it."""
    from splitlab.envs.reward_models import REWARD_MODEL_KINDS

    accepted = kinds or tuple(sorted(REWARD_MODEL_KINDS))
    if not isinstance(raw, Mapping) or "kind" not in raw:
        raise ValueError(f"{name} must be a mapping with a 'kind' in {list(accepted)}, got {raw!r}")
    kind = _choice(f"{name}.kind", raw["kind"], accepted)
    factory = REWARD_MODEL_KINDS[kind]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(raw) - {"kind"} - set(params))
        if unknown:
            raise ValueError(f"unknown {name} keys {unknown} for kind {kind!r}; accepted keys: {['kind', *params]}")
    out = copy.deepcopy(dict(raw))
    if kind == "live":
        from splitlab.channel import ChannelConfig

        if out.get("channel") is not None:
            _prefixed(f"{name}.channel", lambda: ChannelConfig.from_dict(out["channel"]))
        for key, low in (("n_tokens", 2), ("window", 2), ("batch_size", 1)):
            if key in out:
                _num(f"{name}.{key}", out[key], low, 10**7, integer=True)
        if "decimals" in out:
            _num(f"{name}.decimals", out["decimals"], 0, 6, integer=True)
        if not isinstance(out.get("model", "smollm2"), str):
            raise ValueError(f"{name}.model must be a model name or path, got {out['model']!r}")
    if kind == "grid" and (("path" in out) == ("grid" in out)):
        raise ValueError(f"{name} of kind 'grid' needs exactly one of 'path' (a grid.json or its folder) or 'grid'")
    return out


def quality_param(spec: Mapping[str, Any]) -> str:
    """``rho`` or ``snr_db``: the channel parameter a reward-model spec measures over."""
    if spec["kind"] == "live":
        channel = spec.get("channel") or {"kind": "awgn"}
        return "rho" if channel.get("kind") == "erasure" else "snr_db"
    channel = spec.get("channel") or "awgn"
    return "rho" if channel == "erasure" else "snr_db"


# ---------------------------------------------------------------------------------- the spec
SECTIONS: dict[str, Callable[[Any], Any]] = {}
"""Extra top-level sections: name -> parser(raw) returning the typed section (see register_section)."""


def register_section(name: str, parser: Callable[[Any], Any]) -> None:
    """Accept a top-level section ``name`` in specs; ``parser(raw)`` validates it (raise ValueError)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"section name must be an identifier, got {name!r}")
    SECTIONS[name] = parser


@dataclass
class ExperimentSpec:
    """One training run. Build with :meth:`from_dict` or :func:`load_spec`."""

    name: str
    """Run name: output folder ``out/name`` and the MLflow run name."""
    quality: dict
    """The real measurement (a reward-model spec; ``live`` runs the LLM)."""
    mode: str = "dyna"
    """``paper``, ``dyna`` or ``model_free``."""
    env: dict = field(default_factory=dict)
    """Env keys (SplitEnvConfig, plus MultiUserConfig with ``env: multi_user``); no ``reward_model``."""
    algorithm: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    dyna: DynaSpec = field(default_factory=DynaSpec)
    paper: PaperSpec = field(default_factory=PaperSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    out: str = "runs/train"
    """Parent folder of the run folder."""
    extra: dict = field(default_factory=dict)
    """Sections added with :func:`register_section`, parsed."""
    raw: dict = field(default_factory=dict, repr=False)
    """The mapping this spec was built from (what gets logged and saved next to the run)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @property
    def env_kind(self) -> str:
        return self.env.get("env", "split")

    @property
    def param(self) -> str:
        """The channel parameter (``rho`` or ``snr_db``) the quality is measured over."""
        return quality_param(self.quality)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ExperimentSpec:
        if not isinstance(raw, Mapping):
            raise ValueError(f"a spec must be a mapping of sections, got {type(raw).__name__}")
        raw = copy.deepcopy(dict(raw))
        own = [f.name for f in fields(cls) if f.name not in ("extra", "raw")]
        accepted = own + sorted(SECTIONS)
        unknown = sorted(set(raw) - set(accepted))
        if unknown:
            hint = " (a sweep section is run by `splitlab sweep`)" if "sweep" in unknown else ""
            raise ValueError(f"unknown spec sections {unknown}{hint}; accepted: {accepted}")
        name = raw.get("name")
        if not isinstance(name, str) or not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ValueError(f"name must be a non-empty run name without '/' (the output folder), got {name!r}")
        mode = _choice("mode", raw.get("mode", "dyna"), MODES)
        if "quality" not in raw:
            raise ValueError("quality is required: the real measurement, e.g. {kind: live, model: smollm2, "
                             "channel: {kind: awgn}} (or {kind: synthetic} for a stand-in)")
        quality = _reward_spec("quality", raw["quality"])
        algorithm = _prefixed("algorithm", lambda: _section(AlgorithmSpec, "algorithm", raw.get("algorithm")))
        surrogate = _prefixed("surrogate", lambda: SurrogateConfig.from_dict(raw.get("surrogate")))
        dyna = _section(DynaSpec, "dyna", raw.get("dyna"))
        paper = _section(PaperSpec, "paper", raw.get("paper"))
        evaluation = _section(EvaluationSpec, "evaluation", raw.get("evaluation"))
        checkpoint = _section(CheckpointSpec, "checkpoint", raw.get("checkpoint"))
        tracking = _section(TrackingSpec, "tracking", raw.get("tracking"))
        out = raw.get("out", "runs/train")
        if not isinstance(out, str) or not out:
            raise ValueError(f"out must be a folder path, got {out!r}")
        env = _check_env(raw.get("env"), quality)
        if algorithm.name == "dqn" and env.get("env", "split") == "multi_user":
            raise ValueError("algorithm.name 'dqn' is offered for env 'split' only; use ppo with env: multi_user")
        if mode == "paper" and paper.grid is not None and quality_param(paper.grid) != quality_param(quality):
            raise ValueError(f"paper.grid measures {quality_param(paper.grid)!r} but quality measures "
                             f"{quality_param(quality)!r}; they must be the same channel parameter")
        extra = {key: _prefixed(key, lambda key=key: SECTIONS[key](raw[key])) for key in SECTIONS if key in raw}
        return cls(name=name, quality=quality, mode=mode, env=env, algorithm=algorithm, surrogate=surrogate,
                   dyna=dyna, paper=paper, evaluation=evaluation, checkpoint=checkpoint, tracking=tracking,
                   out=out, extra=extra, raw=raw)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data (tuples as lists), for saving and logging."""
        def plain(v: Any) -> Any:
            if dataclasses.is_dataclass(v):
                return {f.name: plain(getattr(v, f.name)) for f in fields(v)}
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        out = {f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("extra", "raw")}
        out.update({k: self.raw[k] for k in self.extra})
        return out

    def replace(self, **changes: Any) -> ExperimentSpec:
        """A copy with top-level fields replaced (e.g. ``name``, ``out``); sections are not revalidated."""
        return dataclasses.replace(self, **changes)


def _check_env(raw: Any, quality: Mapping[str, Any]) -> dict:
    """Validate the env section by building its config with a placeholder reward model."""
    from splitlab.envs.config import SplitEnvConfig

    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"env must be a mapping of SplitEnvConfig keys, got {raw!r}")
    env = copy.deepcopy(dict(raw))
    kind = _choice("env.env", env.get("env", "split"), ENV_KINDS)
    if "reward_model" in env:
        raise ValueError("env.reward_model is set by the mode (paper, dyna, model_free) from the quality section; "
                         "remove it from env")
    probe = {k: v for k, v in env.items() if k != "env"}
    probe["reward_model"] = {"kind": "synthetic"}
    if kind == "split":
        cfg = _prefixed("env", lambda: SplitEnvConfig.from_dict(probe))
    else:
        from splitlab.envs.multi_user import MultiUserConfig

        cfg = _prefixed("env", lambda: MultiUserConfig.from_dict(probe).split)
    param = quality_param(quality)
    want = "rho" if cfg.preset == "paper" else "snr_db"
    if param != want:
        raise ValueError(f"env.preset {cfg.preset!r} needs a quality measured over {want!r}, but quality "
                         f"measures {param!r} (paper: channel erasure; wireless: awgn or digital)")
    return env


def read_spec_file(path: str | Path, what: str = "spec") -> dict:
    """The YAML mapping in ``path``; a missing file, bad YAML or a non-mapping is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a spec must be a YAML mapping of sections, got {type(raw).__name__}")
    return dict(raw)


def load_spec(path: str | Path, overrides: Mapping[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate a YAML spec; ``overrides`` (``{"algorithm.iterations": 3}``) apply first."""
    path = Path(path)
    raw = read_spec_file(path)
    raw.setdefault("name", path.stem)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return ExperimentSpec.from_dict(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
