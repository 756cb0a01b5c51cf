"""The experiment spec: one YAML file names everything a training run needs; validated before Ray starts.

``splitlab train SPEC.yaml`` reads it with :func:`load_spec`. Every section is a pydantic model whose
fields each carry a docstring (``splitlab config schema spec``, docs/config.md); a bad field fails at
load time with its dotted name, the value, and what would be accepted. Sections (all optional but
``quality``)::

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
      dynamics: {kind: gauss_markov, mean_db: 12, std_db: 8}
    algorithm:    {name: ppo, iterations: 20, lr: 3.0e-4, num_env_runners: 2, envs_per_env_runner: 8, ...}
    surrogate:    {members: 5, hidden: [128, 128], epochs: 800, holdout: 0.2}
    dyna:         {initial_evals: 16, evals_per_iter: 8, budget: 64, evaluators: 2}
    paper:        {grid: {kind: grid, path: runs/analysis, channel: erasure}}  # or measure ks x values
    evaluation:   {episodes: 20, truth: quality, baselines: true}
    checkpoint:   {every: 1, keep: 2}
    tracking:     {enabled: true, uri: null, experiment: splitlab-train}
    out: runs/train                 # the run writes to out/name

A ``sweep:`` section belongs to ``splitlab sweep`` (:class:`SweepFile`); an unknown top-level key is an
error that lists the accepted ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator, model_validator

from splitlab.config import Bool, ConfigModel, Float, Int, Str, apply_settings, read_yaml_mapping
from splitlab.envs.config import SplitEnvSettings
from splitlab.envs.multi_user import MultiUserCell
from splitlab.envs.reward_specs import MeasuredSpec, RewardSpec, channel_param, parse_reward_spec
from splitlab.mbrl.surrogate import SurrogateConfig
from splitlab.platform.search_space import SweepSpec

MODES = ("paper", "dyna", "model_free")
"""How rewards reach the agent: ``paper`` (surrogate fitted once on a measured grid), ``dyna``
(surrogate refreshed from budgeted real evaluations), ``model_free`` (the real quality directly)."""
ALGORITHMS = ("ppo", "dqn")
ENV_KINDS = ("split", "multi_user")


# -------------------------------------------------------------------------------------- sections
class AlgorithmSpec(ConfigModel):
    """The RL algorithm (RLlib new API stack) and how long it trains."""

    name: Literal[ALGORITHMS] = "ppo"
    """``ppo`` or ``dqn``."""
    iterations: Annotated[Int, Field(ge=1, le=10**6)] = 20
    """Training iterations (``algo.train()`` calls); Dyna refreshes the surrogate after each."""
    lr: Annotated[Float, Field(gt=0.0, le=1.0)] = 3e-4
    """Learning rate."""
    gamma: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.9
    """Discount (the wireless reward does not depend on earlier splits, so low values learn fastest)."""
    train_batch_size: Annotated[Int, Field(ge=1, le=10**8)] = 2000
    """Env steps per iteration (PPO: per learner update; DQN: sampled per iteration)."""
    minibatch_size: Annotated[Int, Field(ge=1, le=10**8)] = 256
    """PPO SGD minibatch; DQN train batch from the replay buffer."""
    num_epochs: Annotated[Int, Field(ge=1, le=1000)] = 5
    """PPO passes over each batch."""
    entropy_coeff: Annotated[Float, Field(ge=0.0, le=10.0)] = 0.01
    """PPO entropy bonus."""
    hidden: Annotated[tuple[Annotated[Int, Field(ge=1, le=65536)], ...], Field(min_length=1)] = (64, 64)
    """Policy/value network widths."""
    num_env_runners: Annotated[Int, Field(ge=0, le=1024)] = 1
    """Sampling actors (0: sample in the driver)."""
    envs_per_env_runner: Annotated[Int, Field(ge=1, le=10**4)] = 4
    """Envs (simulated users) each env runner steps as one vector."""
    env_runner_cpus: Annotated[Float, Field(ge=0.0, le=64.0)] = 0.5
    """CPUs each env runner reserves (fractional on small machines)."""
    rollout_fragment_length: Annotated[Int, Field(ge=1, le=10**6)] | Literal["auto"] = "auto"
    """Steps per env per sample call, or ``auto``."""
    epsilon_timesteps: Annotated[Int, Field(ge=1, le=10**9)] = 10000
    """DQN: env steps over which exploration epsilon decays from 1 to 0.02."""
    seed: Annotated[Int, Field(ge=0, le=2**31 - 1)] = 0
    """Seed of RLlib (env runners, module init) and of the training episodes."""

    @model_validator(mode="after")
    def _minibatch_fits(self) -> AlgorithmSpec:
        if self.name == "ppo" and self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size must be at most train_batch_size={self.train_batch_size}, "
                             f"got {self.minibatch_size}")
        return self


class DynaSpec(ConfigModel):
    """Dyna mode: how many real LLM evaluations refresh the surrogate, and who makes them."""

    initial_evals: Annotated[Int, Field(ge=3, le=10**6)] = 16
    """Real evaluations before training (every split at a lattice of the channel's quantiles), the
    clean reference perplexity included."""
    evals_per_iter: Annotated[Int, Field(ge=0, le=10**6)] = 8
    """Real evaluations after each training iteration at visited points: half where the ensemble
    disagrees most, half where a measurement could change the best split (wireless preset)."""
    budget: Annotated[Int, Field(ge=1, le=10**7)] = 64
    """Total real evaluations of the run (initial ones included); none are made once it is spent."""
    candidates: Annotated[Int, Field(ge=1, le=10**7)] = 4096
    """Most recent visited (k, value) pairs per iteration considered for evaluation."""
    value_range: tuple[Float, Float] | None = None
    """Channel values of the initial design [low, high]; None: mean +- 2 std of the dynamics (SNR) or
    the paper preset's rho_range."""
    evaluators: Annotated[Int, Field(ge=1, le=64)] = 1
    """Evaluator actors, each holding the LLM once."""
    evaluator_cpus: Annotated[Float, Field(ge=0.0, le=64.0)] = 0.0
    """CPUs each evaluator actor reserves (0 on small machines: they run between sampling rounds)."""

    @field_validator("value_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] >= v[1]:
            raise ValueError("must have low < high")
        return v

    @model_validator(mode="after")
    def _budget_covers_design(self) -> DynaSpec:
        if self.budget < self.initial_evals:
            raise ValueError(f"dyna.budget must be at least dyna.initial_evals={self.initial_evals}, got {self.budget}")
        return self


class PaperSpec(ConfigModel):
    """Paper mode: the measured grid the surrogate is fitted on (once, before training)."""

    grid: MeasuredSpec | None = None
    """A grid reward-model spec (``{kind: grid, path: runs/analysis, channel: erasure}`` or ``{kind:
    synthetic, ...}``); None: measure ``ks`` x ``values`` with the real quality now."""
    ks: Annotated[tuple[Annotated[Int, Field(ge=0, le=10**4)], ...], Field(min_length=1)] | None = None
    """Split points to measure when ``grid`` is None; None: the env's candidate ks (wireless) or 1..K_max."""
    values: Annotated[tuple[Float, ...], Field(min_length=2)] | None = None
    """Channel values to measure when ``grid`` is None; None: 6 evenly spaced over the design range."""


class EvaluationSpec(ConfigModel):
    """Final evaluation on held-out channel traces, against the reference policies."""

    episodes: Annotated[Int, Field(ge=1, le=10**6)] = 20
    """Held-out episodes per policy (the same traces and seeds for every policy)."""
    seed: Annotated[Int, Field(ge=0, le=2**63 - 1)] = 1_000_003
    """Seed of the held-out traces (apart from training's small seeds)."""
    truth: Literal["quality"] | RewardSpec = "quality"
    """Where true rewards come from: ``quality`` (the real measurement above, cached; its evaluations
    are counted apart from training's) or a reward-model spec (e.g. a grid measured beforehand)."""

    @field_validator("truth", mode="before")
    @classmethod
    def _truth(cls, v: Any) -> Any:
        return v if v == "quality" else parse_reward_spec(v, "evaluation.truth")
    baselines: Bool = True
    """Also evaluate every fixed k, random and the oracle."""
    every: Annotated[Int, Field(ge=0, le=10**6)] = 0
    """Also evaluate the policy every this many iterations (0: only at the end)."""


class CheckpointSpec(ConfigModel):
    """Checkpoints: an interrupted run resumes from the newest one."""

    every: Annotated[Int, Field(ge=1, le=10**6)] = 1
    """Checkpoint every this many iterations (and always at the end)."""
    keep: Annotated[Int, Field(ge=1, le=1000)] = 2
    """Newest checkpoints kept on disk."""


class TrackingSpec(ConfigModel):
    """MLflow logging (``splitlab.platform.tracking``)."""

    enabled: Bool = True
    """Log the run to MLflow."""
    uri: Annotated[Str, Field(min_length=1)] | None = None
    """Tracking URI; None: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working directory."""
    experiment: Annotated[Str, Field(min_length=1)] = "splitlab-train"
    """MLflow experiment name."""
    log_model: Bool = True
    """Log a wireless single-user policy as an MLflow pyfunc model (observation -> k) at ``policy_model``."""
    register_policy: Annotated[Str, Field(min_length=1)] | None = None
    """Register that model under this name (``models:/<name>/<version>``); None: log it only."""


class SplitEnvSection(SplitEnvSettings):
    """The ``env:`` section for one user per env (``env: split``): every SplitEnvConfig key but
    ``reward_model``, which the mode sets from ``quality``."""

    env: Literal["split"] = "split"
    """Which environment: ``split`` (one UE per env) or ``multi_user`` (a cell sharing one edge)."""


class MultiUserSection(MultiUserCell, SplitEnvSettings):
    """The ``env:`` section of a cell of UEs (``env: multi_user``): the cell keys and the per-user
    SplitEnvConfig keys side by side (``preset`` must be ``wireless``)."""

    env: Literal["multi_user"]
    """Which environment: ``split`` (one UE per env) or ``multi_user`` (a cell sharing one edge)."""

    @model_validator(mode="after")
    def _wireless(self) -> MultiUserSection:
        if self.preset != "wireless":
            raise ValueError(f"env.preset must be 'wireless' for the multi-user env, got {self.preset!r}")
        return self


EnvSection = Annotated[Union[SplitEnvSection, MultiUserSection], Field(discriminator="env")]


def _env_kind(v: Any) -> Any:
    if v is None:
        return {"env": "split"}
    if isinstance(v, dict):
        if "reward_model" in v:
            raise ValueError("env.reward_model is set by the mode (paper, dyna, model_free) from the quality "
                             "section; remove it from env")
        return {"env": "split", **v}
    return v


# ---------------------------------------------------------------------------------- the spec
class ExperimentSpec(ConfigModel):
    """One training run. Build with :meth:`from_dict` or :func:`load_spec`."""

    label: ClassVar[str] = "spec"

    name: Annotated[Str, Field(min_length=1, pattern=r"^[^./\\][^/\\]*$")]
    """Run name: output folder ``out/name`` and the MLflow run name (no '/', not starting with '.')."""
    quality: RewardSpec
    """The real measurement (a reward-model spec; ``live`` runs the LLM)."""
    mode: Literal[MODES] = "dyna"
    """``paper``, ``dyna`` or ``model_free``."""
    env: EnvSection = Field(default_factory=SplitEnvSection)
    """The environment: SplitEnvConfig keys (no ``reward_model``), plus the cell keys with ``env: multi_user``."""
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec)
    """The RL algorithm and its settings."""
    surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)
    """The reward surrogate ensemble (paper and dyna modes)."""
    dyna: DynaSpec = Field(default_factory=DynaSpec)
    """Dyna mode's real-evaluation budget."""
    paper: PaperSpec = Field(default_factory=PaperSpec)
    """Paper mode's measured grid."""
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    """Held-out evaluation against the reference policies."""
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    """Checkpoint cadence (resume)."""
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    """MLflow logging."""
    out: Annotated[Str, Field(min_length=1)] = "runs/train"
    """Parent folder of the run folder."""

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        unknown = sorted(set(raw) - set(cls.model_fields))
        if unknown:
            hint = " (a sweep section is run by `splitlab sweep`)" if "sweep" in unknown else ""
            raise ValueError(f"unknown spec sections {unknown}{hint}; accepted: {list(cls.model_fields)}")
        if "quality" not in raw:
            raise ValueError("quality is required: the real measurement, e.g. {kind: live, model: smollm2, "
                             "channel: {kind: awgn}} (or {kind: synthetic} for a stand-in)")
        if not isinstance(raw.get("name"), str) or "/" in raw["name"] or "\\" in raw["name"]:
            raise ValueError(f"name must be a non-empty run name without '/' (the output folder), got {raw.get('name')!r}")
        return {**raw, "env": _env_kind(raw.get("env"))}

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        if self.algorithm.name == "dqn" and self.env.env == "multi_user":
            raise ValueError("algorithm.name 'dqn' is offered for env 'split' only; use ppo with env: multi_user")
        if self.mode == "paper" and self.paper.grid is not None and channel_param(self.paper.grid) != self.param:
            raise ValueError(f"paper.grid measures {channel_param(self.paper.grid)!r} but quality measures "
                             f"{self.param!r}; they must be the same channel parameter")
        want = "rho" if self.env.preset == "paper" else "snr_db"
        if self.param != want:
            raise ValueError(f"env.preset {self.env.preset!r} needs a quality measured over {want!r}, but quality "
                             f"measures {self.param!r} (paper: channel erasure; wireless: awgn or digital)")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    @property
    def env_kind(self) -> str:
        return self.env.env

    @property
    def param(self) -> str:
        """The channel parameter (``rho`` or ``snr_db``) the quality is measured over."""
        return channel_param(self.quality)

    @classmethod
    def from_dict(cls, raw: Any, name: str = "") -> ExperimentSpec:
        if not isinstance(raw, dict) and not isinstance(raw, ExperimentSpec):
            raise ValueError(f"a spec must be a mapping of sections, got {type(raw).__name__}")
        return super().from_dict(raw, name)


class SweepFile(ExperimentSpec):
    """A sweep spec: an experiment spec plus the ``sweep:`` section that ``splitlab sweep`` expands into trials."""

    sweep: SweepSpec
    """How the trials vary the spec (see ``splitlab.platform.search_space``)."""

    @field_validator("sweep", mode="before")
    @classmethod
    def _sweep(cls, raw: Any) -> Any:
        return SweepSpec.from_dict(raw) if isinstance(raw, dict) and "name" not in raw else raw


def read_spec_file(path: str | Path, what: str = "spec") -> dict:
    """The YAML mapping in ``path``; a missing file, bad YAML or a non-mapping is a clear error."""
    return read_yaml_mapping(path, what)


def load_spec(path: str | Path, settings: list[tuple[str, Any]] | dict[str, Any] | None = None) -> ExperimentSpec:
    """Read and validate a YAML spec; ``settings`` (``[("algorithm.iterations", "3")]`` as ``--set`` gives them,
    or ``{"algorithm.iterations": 3}``) apply first."""
    path = Path(path)
    raw = read_spec_file(path)
    raw.setdefault("name", path.stem)
    try:
        return apply_settings(ExperimentSpec, raw, settings or [])
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
