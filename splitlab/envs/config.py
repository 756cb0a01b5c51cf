"""Configuration of :class:`~splitlab.envs.split_env.SplitEnv`: one validated model, two presets.

Fields that only one preset reads are still validated, so a spec cannot carry a silent typo. Fields
left at ``None`` take the preset's default when the environment is built (they need the model depth).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, TypeAdapter, ValidationError, ValidationInfo, field_serializer, field_validator, model_validator

from splitlab.channel import ChannelConfig, GaussMarkovSNR, PathLossMobility
from splitlab.config import (
    ConfigError,
    ConfigModel,
    Float,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    describe_error,
)
from splitlab.envs.device import DeviceModel
from splitlab.envs.reward_models import REWARD_MODEL_KINDS, RewardModel
from splitlab.envs.reward_specs import parse_reward_spec
from splitlab.envs.split_tables import SplitTable

PRESETS = ("paper", "wireless")
"""Accepted values of ``preset``."""
PRIVACY_MODES = ("constraint", "penalty")
"""Accepted values of ``privacy_mode``."""
PAPER_ACTIONS = ("relative", "absolute")
"""Accepted values of ``paper_actions``."""
EPISODE_LEN = {"paper": 5, "wireless": 50}
"""Default episode length per preset (the paper's episodes have 5 steps)."""

Dynamics = Annotated[GaussMarkovSNR | PathLossMobility, Field(discriminator="kind")]
_DYNAMICS = TypeAdapter(Dynamics)


def make_dynamics(spec: Mapping[str, Any] | GaussMarkovSNR | PathLossMobility | None) -> GaussMarkovSNR | PathLossMobility:
    """``{"kind": "gauss_markov" | "path_loss", **fields}`` -> the dynamics model (None: Gauss-Markov defaults)."""
    if isinstance(spec, (GaussMarkovSNR, PathLossMobility)):
        return spec
    spec = _with_kind(spec)
    try:
        return _DYNAMICS.validate_python(spec)
    except ValidationError as err:
        raise ConfigError(describe_error(err, spec, None, "dynamics")) from None


class SplitEnvSettings(ConfigModel):
    """Every :class:`SplitEnvConfig` field but the reward model (an experiment spec's ``env:`` section)."""

    label: ClassVar[str] = "env config"

    preset: Literal[PRESETS] = "wireless"
    """MDP: ``paper`` (state (rho, k), relative moves, the paper's reward) or ``wireless``
    (channel features, a candidate k per step, quality-compute-latency reward)."""
    episode_len: PositiveInt | None = None
    """Steps per episode; None: 5 for ``paper``, 50 for ``wireless``."""

    # -- paper preset ---------------------------------------------------------------------------
    paper_actions: Literal[PAPER_ACTIONS] = "relative"
    """``relative``: Discrete(2*max_move+1) moves k by -max_move..+max_move; ``absolute``:
    Discrete(K_max) picks k = action + 1 (what the released code does)."""
    max_move: PositiveInt = 4
    """Largest move of k per step for relative actions (the paper: 4)."""
    k_max: PositiveInt | None = None
    """Deepest split the UE may take, K_max; None: round(10 / 32 * L), the paper's 10 of 32 layers."""
    alpha: NonNegativeFloat = 10.0
    """Weight of the quality term (PPL_ref - PPL_k) / PPL_ref."""
    beta: NonNegativeFloat = 1.0
    """Weight of the load term (K_max - k) / K_max."""
    rho_range: tuple[Float, Float] = (0.08, 0.22)
    """Erasure probability at reset, drawn uniformly (the released code's range)."""
    rho_max: Annotated[Float, Field(gt=0.0, le=1.0)] = 0.3
    """Upper clip of rho and its normalisation in the observation."""
    rho_drift: Annotated[Float, Field(ge=0.0, lt=1.0)] = 0.0005
    """Relative change of rho per move: x(1 - drift) when k grows, x(1 + drift) when it shrinks."""
    initial_k_range: tuple[PositiveInt, PositiveInt] | None = None
    """k at reset, drawn uniformly in [low, high]; None: round(0.3 K_max)..round(0.6 K_max) (3..6 for K_max 10)."""

    # -- wireless preset ------------------------------------------------------------------------
    candidate_ks: tuple[NonNegativeInt, ...] | None = None
    """Split points the policy chooses from (action i picks candidate_ks[i]); None: every k the reward model scores."""
    w_q: NonNegativeFloat = 1.0
    """Weight of the quality term log(PPL_k / PPL_clean)."""
    w_c: NonNegativeFloat = 0.5
    """Weight of the UE-compute term k / L."""
    w_l: NonNegativeFloat = 0.5
    """Weight of the latency term latency / latency_ref."""
    latency_ref_s: PositiveFloat | None = None
    """Latency normaliser in seconds; None: the whole model on the UE at full budget (device.local_latency_s)."""
    channel: ChannelConfig | None = None
    """The link (ChannelConfig or its fields) that sets payload size and rate; None: a Shannon-rate link
    (``awgn``, fp16, 20 MHz), or ``digital`` when the reward model's channel is a digital sweep."""
    dynamics: Dynamics = Field(default_factory=GaussMarkovSNR)
    """SNR over an episode: ``{"kind": "gauss_markov" | "path_loss", ...fields}`` (kind defaults to
    gauss_markov); None: Gauss-Markov defaults."""
    device: DeviceModel = Field(default_factory=DeviceModel)
    """Compute model (DeviceModel or its fields): UE and edge FLOP/s, params per layer, tokens per request."""
    snr_estimation_std_db: NonNegativeFloat = 1.0
    """The policy sees the SNR plus N(0, this^2) dB (pilot-based estimation error)."""
    trend_window: PositiveInt = 3
    """Steps over which the SNR trend feature is averaged."""
    ue_budget_range: tuple[Float, Float] = (0.25, 1.0)
    """Fraction of UE compute free for this request, drawn per episode uniformly in this range (0, 1]."""
    snr_ref_db: Float = 15.0
    """Observation normalisation: SNR feature = (SNR_est - snr_ref_db) / snr_scale_db."""
    snr_scale_db: PositiveFloat = 10.0
    """Observation normalisation scale in dB (also for the trend)."""
    privacy_table: Any = None
    """Token leakage per split (top-1 recovery in [0, 1]): a mapping k -> value, or {"path", "key"} reading a
    ``benchmarks/privacy_cost.py`` result or an ``analyze --privacy`` grid.json (see envs.split_tables); None: no
    privacy term."""
    privacy_budget: Annotated[Float, Field(ge=0.0, le=1.0)] = 1.0
    """Largest leakage a split may have (1: no limit); needs ``privacy_table`` when below 1."""
    privacy_mode: Literal[PRIVACY_MODES] = "constraint"
    """``constraint``: candidate splits whose leakage exceeds the budget leave the action set; ``penalty``: they
    stay and the reward loses ``w_p * (leakage - budget)``."""
    w_p: NonNegativeFloat = 10.0
    """Weight of the privacy penalty (``penalty`` mode)."""
    energy_table: Any = None
    """UE energy per split (any unit, e.g. mJ per token): a mapping k -> value or {"path", "key", "profile"};
    None: no energy term."""
    w_e: NonNegativeFloat = 0.0
    """Weight of the energy term ``energy_k / max(energy over the table)``; needs ``energy_table`` when > 0."""


    @field_validator("privacy_table", "energy_table", mode="before")
    @classmethod
    def _table(cls, value: Any, info: ValidationInfo) -> SplitTable | None:
        return None if value is None else SplitTable.from_spec(value, info.field_name)

    @field_serializer("privacy_table", "energy_table")
    def _dump_table(self, table: SplitTable | None) -> dict[str, float] | None:
        return None if table is None else {str(k): v for k, v in sorted(table.values.items())}

    @model_validator(mode="after")
    def _tables_given(self) -> SplitEnvSettings:
        if self.privacy_budget < 1.0 and self.privacy_table is None:
            raise ValueError(f"privacy_budget={self.privacy_budget} needs a privacy_table (leakage per split)")
        if self.w_e > 0 and self.energy_table is None:
            raise ValueError(f"w_e={self.w_e} needs an energy_table (UE energy per split)")
        return self

    @field_validator("dynamics", mode="before")
    @classmethod
    def _dynamics_kind(cls, v: Any) -> Any:
        return _with_kind(v)

    @field_validator("candidate_ks")
    @classmethod
    def _distinct_ks(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and not v:
            raise ValueError("must list at least one split point (or be null for every k)")
        if v is not None and len(set(v)) != len(v):
            raise ValueError("must not repeat a split point")
        return v

    @field_validator("initial_k_range")
    @classmethod
    def _ordered_ks(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError("must have low <= high")
        return v

    @field_validator("ue_budget_range")
    @classmethod
    def _budget(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("must be a pair [low, high] with 0 < low <= high <= 1")
        return v

    @model_validator(mode="after")
    def _rho_range(self) -> SplitEnvConfig:
        low, high = self.rho_range
        if not 0.0 <= low <= high <= self.rho_max:
            raise ValueError(f"rho_range must be a pair [low, high] with 0 <= low <= high <= rho_max={self.rho_max}, "
                             f"got {list(self.rho_range)}")
        return self



class SplitEnvConfig(SplitEnvSettings):
    """Everything that defines a :class:`SplitEnv`. Build from YAML/dicts with :meth:`from_dict`."""

    reward_model: Any = None
    """Where the perplexity comes from: a RewardModel, or ``{"kind": "grid" | "synthetic" | "live" | ..., ...}``
    (see ``splitlab.envs.reward_models``). Required."""

    @field_validator("reward_model", mode="before")
    @classmethod
    def _reward_model(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("is required: a RewardModel or e.g. {'kind': 'grid', 'path': "
                             "'runs/analysis/grid.json', 'channel': 'awgn'} (or {'kind': 'synthetic'} for a stand-in)")
        if isinstance(v, RewardModel) or (isinstance(v, Mapping) and v.get("kind") in REWARD_MODEL_KINDS):
            return v  # an instance, or a plugin's kind (its factory checks its own keys)
        return parse_reward_spec(v, "reward_model")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SplitEnvConfig | None, name: str = "") -> SplitEnvConfig:
        """Build from a mapping (YAML section, RLlib ``env_config``); unknown keys are an error."""
        if isinstance(d, Mapping) and d.get("env") == "split":  # the make_env selector, harmless here
            d = {k: v for k, v in d.items() if k != "env"}
        return super().from_dict(d, name)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for run parameters (nested configs as dicts, a reward-model instance described)."""
        out = self.model_dump(mode="json", exclude={"reward_model"})
        rm = self.reward_model
        out["reward_model"] = rm.describe() if isinstance(rm, RewardModel) else (
            rm.model_dump(mode="json") if hasattr(rm, "model_dump") else dict(rm))
        return out


def _with_kind(v: Any) -> Any:
    """Dynamics mappings may leave out ``kind`` (Gauss-Markov); None means all defaults."""
    if v is None:
        return {"kind": "gauss_markov"}
    if isinstance(v, Mapping) and "kind" not in v:
        return {"kind": "gauss_markov", **v}
    return v
