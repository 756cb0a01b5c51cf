"""Reward-model specs: the typed ``{kind: ..., ...}`` mappings that name where perplexity comes from.

One model per kind, selected by ``kind`` (a pydantic discriminated union), each building its reward
model with :meth:`build`. Used by an env's ``reward_model``, an experiment's ``quality``,
``paper.grid`` and ``evaluation.truth``::

    {kind: live, model: smollm2, channel: {kind: awgn}, n_tokens: 256}   # the real LLM
    {kind: grid, path: runs/analysis, channel: awgn}                     # a measured grid.json
    {kind: synthetic, channel: awgn}                                     # a smooth stand-in for tests
    {kind: surrogate, path: runs/train/x/surrogate.npz}                  # a fitted surrogate ensemble
    {kind: counted, inner: {kind: grid, ...}, decimals: 0}               # counts distinct queries as evaluations
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from splitlab.channel import ChannelConfig
from splitlab.config import (
    ConfigError,
    ConfigModel,
    Float,
    Int,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Str,
    validate,
)

if TYPE_CHECKING:
    from splitlab.envs.reward_models import RewardModel


class GridRewardSpec(ConfigModel):
    """Perplexity interpolated from a measured ``grid.json`` (``splitlab analyze``)."""

    kind: Literal["grid"] = "grid"
    """Selects this reward model."""
    path: Str | None = None
    """A ``grid.json`` or the folder holding it (exactly one of ``path`` and ``grid``)."""
    grid: dict | None = None
    """The ``grid.json`` contents inline (exactly one of ``path`` and ``grid``)."""
    channel: Str | None = None
    """Channel sweep of the grid to read (``erasure``, ``awgn``, ``digital``, ...); None: its only one."""

    @model_validator(mode="after")
    def _one_source(self) -> GridRewardSpec:
        if (self.path is None) == (self.grid is None):
            raise ValueError("a grid reward model needs exactly one of 'path' (a grid.json or its folder) or 'grid'")
        return self

    def build(self) -> RewardModel:
        from pathlib import Path

        from splitlab.envs.quality_grid import QualityGrid
        from splitlab.envs.reward_models import GridRewardModel

        if self.grid is not None:
            return GridRewardModel(QualityGrid.from_dict(dict(self.grid), self.channel))
        return GridRewardModel(QualityGrid.from_json(Path(self.path), self.channel))


class SyntheticRewardSpec(ConfigModel):
    """A smooth made-up quality surface with the shape of a real one (tests and smoke runs)."""

    kind: Literal["synthetic"] = "synthetic"
    """Selects this reward model."""
    channel: Str = "awgn"
    """``erasure`` (parameter rho) or an SNR channel name (``awgn``, ``digital``: parameter snr_db)."""
    num_layers: PositiveInt = 30
    """Depth L of the pretend model."""
    hidden_size: PositiveInt = 576
    """Hidden size of the pretend model (sets link payloads)."""
    ppl_clean: Annotated[Float, Field(ge=1.0)] = 20.0
    """Perplexity on a clean link."""
    severity: PositiveFloat | None = None
    """Scale of the damage; None: 4.0 for SNR channels, 0.5 for erasure."""

    def build(self) -> RewardModel:
        from splitlab.envs.quality_grid import QualityGrid
        from splitlab.envs.reward_models import GridRewardModel
        from splitlab.envs.synthetic import synthetic_grid

        grid = synthetic_grid(self.channel, self.num_layers, self.hidden_size, self.ppl_clean, self.severity)
        return GridRewardModel(QualityGrid.from_dict(grid, self.channel))


class LiveRewardSpec(ConfigModel):
    """The real split LLM: perplexity over token windows with the channel applied, cached per point."""

    kind: Literal["live"] = "live"
    """Selects this reward model."""
    model: Any = "smollm2"
    """Model spec for ``SplitModel.load`` (``smollm2``, ``tiny-llama``, a local checkpoint) or a loaded SplitModel."""
    channel: ChannelConfig | None = None
    """The corrupting channel (``erasure``, ``awgn`` or ``digital``); its rho or snr_db is replaced by each
    query's value. None: ``{kind: awgn}``."""
    corpus: Literal["wiki", "lambada"] = "wiki"
    """Evaluation text."""
    n_tokens: Annotated[Int, Field(ge=2, le=10**7)] = 256
    """Tokens per evaluation."""
    window: Annotated[Int, Field(ge=2, le=10**7)] = 64
    """Tokens per window."""
    decimals: Annotated[Int, Field(ge=0, le=6)] = 1
    """The cache key rounds the channel value to this many decimals."""
    seed: Annotated[Int, Field(ge=0)] = 0
    """Seed of the channel noise (with k and the value)."""
    batch_size: PositiveInt = 8
    """Windows per forward pass."""
    ks: tuple[Annotated[Int, Field(ge=0)], ...] | None = None
    """Split points allowed; None: 0..L."""
    store: Str | None = "auto"
    """Measurement store shared by trials and nodes (each point measured once, keyed by content): a folder, a
    pyarrow URI (``s3://bucket/prefix``, ``file:///nfs/...``), ``auto`` (``$SPLITLAB_MEASUREMENTS``, which a
    sweep sets to ``<storage_path>/measurements``, else ``runs/measurements``) or None (measure every time)."""

    @field_validator("model")
    @classmethod
    def _model_spec(cls, v: Any) -> Any:
        if isinstance(v, str) and v:
            return v
        if hasattr(v, "head") and hasattr(v, "num_layers"):
            return v  # a SplitModel already loaded in this process
        raise ValueError("must be a model name or path (smollm2, tiny-llama, a local checkpoint)")

    @field_validator("channel")
    @classmethod
    def _corrupting(cls, v: ChannelConfig | None) -> ChannelConfig | None:
        if v is not None and v.kind not in ("erasure", "awgn", "digital"):
            raise ValueError(f"channel.kind must be one of ('erasure', 'awgn', 'digital'), got {v.kind!r}")
        return v

    def build(self) -> RewardModel:
        from splitlab.envs.reward_models import LiveLLMRewardModel

        return LiveLLMRewardModel(**{k: v for k, v in dict(self).items() if k != "kind"})


class SurrogateRewardSpec(ConfigModel):
    """A fitted surrogate ensemble (``SurrogateEnsemble.save``)."""

    kind: Literal["surrogate"] = "surrogate"
    """Selects this reward model."""
    path: Str
    """The ensemble's ``.npz`` file."""
    key: Str | None = None
    """Only tells runs apart in a process-wide cache of reward models."""

    def build(self) -> RewardModel:
        from splitlab.mbrl.surrogate import SurrogateEnsemble

        return SurrogateEnsemble.load(self.path)


class CountedRewardSpec(ConfigModel):
    """Another reward model queried like a cached live LLM: each distinct (k, rounded value) counts as one
    real evaluation (for model-free baselines over measured truth)."""

    kind: Literal["counted"] = "counted"
    """Selects this reward model."""
    inner: RewardSpec
    """The reward model whose queries are counted."""
    decimals: Annotated[Int, Field(ge=0, le=6)] = 0
    """Values are rounded to this many decimals before counting."""
    seconds_per_eval: NonNegativeFloat = 0.0
    """What one real evaluation would have cost (for the reported LLM seconds)."""

    def build(self) -> RewardModel:
        from splitlab.mbrl.rllib_env import CountedRewardModel

        return CountedRewardModel(self.inner, self.decimals, self.seconds_per_eval)


RewardSpec = Annotated[
    Union[GridRewardSpec, SyntheticRewardSpec, LiveRewardSpec, SurrogateRewardSpec, CountedRewardSpec],
    Field(discriminator="kind"),
]
"""Any reward-model spec, selected by ``kind``."""
CountedRewardSpec.model_rebuild()

MeasuredSpec = Annotated[Union[GridRewardSpec, SyntheticRewardSpec], Field(discriminator="kind")]
"""A reward-model spec that needs no LLM (paper mode's grid)."""

REWARD_KINDS = ("grid", "synthetic", "live", "surrogate", "counted")
"""Accepted values of ``kind``."""
_BY_KIND = {"grid": GridRewardSpec, "synthetic": SyntheticRewardSpec, "live": LiveRewardSpec,
            "surrogate": SurrogateRewardSpec, "counted": CountedRewardSpec}


def parse_reward_spec(raw: Any, name: str = "reward_model") -> Any:
    """Validate a reward-model mapping into its typed spec (a spec passes through)."""
    if isinstance(raw, tuple(_BY_KIND.values())):
        return raw
    if not isinstance(raw, Mapping) or raw.get("kind") not in _BY_KIND:
        got = raw.get("kind") if isinstance(raw, Mapping) else raw
        raise ConfigError(f"{name}.kind must be one of {list(REWARD_KINDS)}, got {got!r}")
    return validate(_BY_KIND[raw["kind"]], dict(raw), name)


def channel_param(spec: Any) -> str:
    """``rho`` or ``snr_db``: the channel parameter a reward-model spec measures over."""
    if spec.kind == "counted":
        return channel_param(spec.inner)
    if spec.kind == "live":
        return "rho" if spec.channel is not None and spec.channel.kind == "erasure" else "snr_db"
    return "rho" if spec.channel == "erasure" else "snr_db"
