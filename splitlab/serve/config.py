"""What one split-inference service is: model, split range, policy, channel defaults, replicas.

:class:`ServeConfig` is the single source of the service's settings. ``splitlab serve`` fills it from
flags, ``serve run splitlab.serve.app:build key=value ...`` and ``serve deploy serve_config.yaml``
from the application's ``args``; :meth:`ServeConfig.from_dict` validates all three the same way and
accepts the strings that ``serve run`` passes (``max_split=15``, ``wait_link=true``), read as YAML and
kept as text where the field is a string. :func:`read_serve_file` reads a Serve config file: its first
application's ``args`` and its ``deployments:`` overrides, which ``splitlab serve --config`` applies
the way ``serve deploy`` does.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from splitlab.config import (
    Bool,
    ConfigModel,
    Int,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Str,
    apply_settings,
    read_yaml_mapping,
    validate,
)
from splitlab.serve.profiles import CHANNEL_PROFILES

DEPLOYMENT_NAMES = ("SplitIngress", "SplitPolicy", "UEHalf", "EdgeHalf")
"""The application's deployments, by the names a Serve config file's ``deployments:`` uses."""


class ServeConfig(ConfigModel):
    """Settings of the split-inference service. Validated on construction."""

    model_config = ConfigDict(frozen=True)
    label: ClassVar[str] = "serve config"

    model: Annotated[Str, Field(min_length=1)] = "smollm2"
    """Model spec (``smollm2``, ``tiny-llama``, ``tiny-gpt2`` or a local checkpoint); also the
    ``model`` name clients send."""
    min_split: NonNegativeInt = 0
    """Smallest split point k a request may use; the edge half holds layers ``>= min_split``."""
    max_split: NonNegativeInt | None = None
    """Largest split point k; the UE half holds layers ``< max_split``. None: half the layers, or the
    deepest split the ``policy_checkpoint`` may choose."""
    default_split: NonNegativeInt | None = None
    """k used by the fixed rule (no grid, no checkpoint). None: a third of the layers, clamped to
    ``[min_split, max_split]`` (k = 10 on SmolLM2)."""
    policy_grid: Str | None = None
    """``grid.json`` of measured perplexity (``splitlab analyze``): the policy picks k by the rule
    ``argmax_k -w_q log(ppl_k / ppl_clean) - w_c k / L`` at the request's SNR."""
    policy_grid_channel: Str = "awgn"
    """Channel kind of the grid slice the rule reads."""
    policy_checkpoint: Str | None = None
    """Run folder (or its ``policy/``) of a ``splitlab train`` run with the wireless preset; the service
    picks k as that policy does on a request's SNR. Wins over ``policy_grid``."""
    w_q: NonNegativeFloat = 1.0
    """Quality weight of the grid rule."""
    w_c: NonNegativeFloat = 0.1
    """UE-compute weight of the grid rule."""
    default_profile: Literal[tuple(CHANNEL_PROFILES)] = "clean"
    """Channel profile of requests that name neither ``channel_profile`` nor ``snr_db``."""
    max_tokens_limit: PositiveInt = 1024
    """Largest ``max_tokens`` a request may ask for."""
    max_context: NonNegativeInt | None = None
    """Most prompt + generated tokens per request. None: the model's ``max_position_embeddings``."""
    wait_link: Bool = False
    """Also sleep the simulated link latency of every transmission (wall time = compute + air time)."""
    edge_min_replicas: PositiveInt = 1
    """Autoscaling lower bound of the edge half."""
    edge_max_replicas: PositiveInt = 2
    """Autoscaling upper bound of the edge half."""
    edge_target_ongoing_requests: PositiveFloat = 4.0
    """Autoscaling target: in-flight calls per edge replica (a UE's steps for one replica share one call)."""
    ue_replicas: PositiveInt = 1
    """Replicas of the UE half (each request's UE state lives inside one streaming call)."""
    replica_cpus: NonNegativeFloat = 0.5
    """CPUs reserved by each UE and edge replica (fractional on small machines)."""
    max_streams: PositiveInt = 64
    """Concurrent requests per UE replica and KV caches kept per edge replica (LRU beyond)."""
    session_ttl_s: PositiveFloat = 300.0
    """An edge KV cache idle this long is dropped (its UE vanished); a late step rebuilds it."""
    edge_retry_s: PositiveFloat = 60.0
    """How long the UE keeps retrying an edge that died or is restarting before failing."""
    health_check_period_s: PositiveFloat = 2.0
    """Serve health-check period of the halves (how fast a dead replica is replaced); also how often
    the edge sweeps caches idle longer than ``session_ttl_s``."""
    adaptive: Bool = True
    """With neither ``policy_grid`` nor ``policy_checkpoint``: pick k per request with the measured grid
    shipped for the model (SmolLM2); False, or a model without a shipped grid: ``default_split``."""
    trust_checkpoint: Bool = False
    """Allow a ``policy_checkpoint`` without the safe export (``policy.safetensors`` + JSON), loaded
    through RLlib's pickled checkpoint. Only for files you made yourself."""
    max_batch: PositiveInt = 32
    """Most requests one batched decode step takes, on the UE and on the edge."""
    batch_wait_s: NonNegativeFloat = 0.02
    """How long a decode step waits for the steps of other recently active requests to join its batch (a lone
    request never waits)."""
    edge_max_caches: PositiveInt | None = None
    """KV caches per edge replica (LRU beyond). None: twice ``max_streams`` x ``ue_replicas``."""
    edge_cache_mib: PositiveFloat = 4096.0
    """Memory for KV caches per edge replica; a new request reserves its cache at its full context."""
    max_queued_requests: NonNegativeInt = 64
    """Requests that may wait for a free stream (per ingress replica); beyond: 429 with Retry-After."""
    queue_timeout_s: PositiveFloat = 30.0
    """Longest wait for a free stream; then 503 with Retry-After."""
    request_timeout_s: PositiveFloat = 600.0
    """Deadline of one request from arrival to its last token (then 504, or an error event in a stream)."""
    max_body_bytes: Annotated[Int, Field(ge=1024)] = 4 * 1024 * 1024
    """Largest request body (Content-Length or streamed); beyond: 413, before the body is read whole."""
    api_keys: tuple[Annotated[Str, Field(min_length=8)], ...] = ()
    """Accepted API keys (``Authorization: Bearer KEY``, at least 8 characters each); empty: no key needed.
    ``splitlab serve`` also reads ``--api-key`` and ``$SPLITLAB_API_KEY`` (comma-separated)."""
    allowed_hosts: Annotated[tuple[Annotated[Str, Field(min_length=1)], ...], Field(min_length=1)] = \
        ("127.0.0.1", "localhost", "::1")
    """Host header names the ingress answers (port ignored; ``*``: any); others get 400."""

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # `serve run app:build api_keys=a,b` and --set pass one string
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ordered(self) -> ServeConfig:
        if self.max_split is not None and self.max_split < self.min_split:
            raise ValueError(f"max_split ({self.max_split}) must be >= min_split ({self.min_split})")
        if self.edge_max_replicas < self.edge_min_replicas:
            raise ValueError(f"edge_max_replicas must be >= edge_min_replicas={self.edge_min_replicas}, "
                             f"got {self.edge_max_replicas}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | ServeConfig | None, name: str = "") -> ServeConfig:
        """Build from a mapping (YAML ``args``, ``serve run`` key=value pairs); unknown keys are an error.

        String values are read as YAML (``serve run app:build max_split=15`` passes every value as a
        string), except in string fields, which keep the text.
        """
        if isinstance(data, ServeConfig):
            return data
        return apply_settings(cls, {}, dict(data or {}), name)

    # ------------------------------------------------------------------ derived
    def split_range(self, num_layers: int) -> tuple[int, int]:
        """``(min_split, max_split)`` for a model with ``num_layers`` layers, checked against it."""
        high = num_layers // 2 if self.max_split is None else self.max_split
        if high > num_layers:
            raise ValueError(f"max_split must be <= the model's {num_layers} layers, got {high}")
        if self.min_split > high:
            raise ValueError(f"min_split ({self.min_split}) must be <= max_split ({high}) for a "
                             f"{num_layers}-layer model")
        return self.min_split, high

    def fixed_split(self, num_layers: int) -> int:
        low, high = self.split_range(num_layers)
        k = num_layers // 3 if self.default_split is None else self.default_split
        if self.default_split is not None and not low <= k <= high:
            raise ValueError(f"default_split must be in [{low}, {high}], got {k}")
        return min(max(k, low), high)


class DeploymentOptions(ConfigModel):
    """One entry of a Serve config file's ``deployments:``: options that override the app's defaults."""

    name: Literal[DEPLOYMENT_NAMES]
    """Which deployment these options apply to."""
    num_replicas: PositiveInt | Literal["auto"] | None = None
    """Fixed replica count (not with ``autoscaling_config``)."""
    max_ongoing_requests: PositiveInt | None = None
    """Requests one replica runs at once."""
    max_queued_requests: Annotated[int, Field(ge=-1)] | None = None
    """Requests waiting per caller before new ones are refused (-1: no limit)."""
    ray_actor_options: dict[str, Any] | None = None
    """Ray actor options of each replica (``num_cpus``, ``memory``, ...)."""
    autoscaling_config: dict[str, Any] | None = None
    """Serve's autoscaling config (``min_replicas``, ``max_replicas``, ``target_ongoing_requests``, ...)."""
    health_check_period_s: PositiveFloat | None = None
    """Seconds between health checks of a replica."""
    health_check_timeout_s: PositiveFloat | None = None
    """Seconds a health check may take."""
    graceful_shutdown_timeout_s: NonNegativeFloat | None = None
    """Seconds a stopping replica gets to finish its requests."""

    def options(self) -> dict[str, Any]:
        """The keyword arguments for ``Deployment.options`` (only what the file sets)."""
        return self.model_dump(exclude={"name"}, exclude_none=True)


def read_serve_file(path: str | Path) -> tuple[ServeConfig, dict[str, dict[str, Any]]]:
    """A Serve config file's first application -> (its ``args`` as a ServeConfig, ``{deployment: options}``);
    a plain YAML mapping of ServeConfig fields -> (that config, no overrides)."""
    data = read_yaml_mapping(path, "serve config")
    if "applications" not in data:
        return ServeConfig.from_dict(data), {}
    apps = data["applications"]
    if not isinstance(apps, list) or not apps or not isinstance(apps[0], Mapping):
        raise ValueError(f"{path}: applications must be a list of applications, got {apps!r}")
    app = apps[0]
    config = ServeConfig.from_dict(app.get("args") or {}, "args")
    overrides = {}
    for i, entry in enumerate(app.get("deployments") or []):
        opts = validate(DeploymentOptions, entry, f"deployments[{i}]")
        overrides[opts.name] = opts.options()
    return config, overrides


@dataclass(frozen=True)
class ModelFacts:
    """What the service needs to know about a model without loading its weights."""

    num_layers: int
    hidden_size: int
    max_positions: int


def model_facts(spec: str) -> ModelFacts:
    """Read the model's config (resolving ``spec`` to a local checkpoint, converting it once if needed)."""
    from transformers import AutoConfig

    from splitlab.llm.loading import resolve_checkpoint

    cfg = AutoConfig.from_pretrained(resolve_checkpoint(spec), local_files_only=True)
    positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
    return ModelFacts(int(cfg.num_hidden_layers), int(cfg.hidden_size), int(positions))
