"""What one split-inference service is: model, split range, policy, channel defaults, replicas.

:class:`ServeConfig` is the single source of the service's settings. ``splitlab serve`` fills it from
flags, ``serve run splitlab.serve.app:build key=value ...`` and ``serve deploy serve_config.yaml``
from the application's ``args``; :meth:`ServeConfig.from_dict` validates all three the same way and
accepts the strings that ``serve run`` passes (``max_split=15``, ``wait_link=true``).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from splitlab.channel.validation import check_bool, check_int
from splitlab.serve.profiles import CHANNEL_PROFILES


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the split-inference service. Validated on construction."""

    model: str = "smollm2"
    """Model spec (``smollm2``, ``tiny-llama``, ``tiny-gpt2`` or a local checkpoint); also the
    ``model`` name clients send."""
    min_split: int = 0
    """Smallest split point k a request may use; the edge half holds layers ``>= min_split``."""
    max_split: int | None = None
    """Largest split point k; the UE half holds layers ``< max_split``. None: half the layers, or the
    deepest split the ``policy_checkpoint`` may choose."""
    default_split: int | None = None
    """k used by the fixed rule (no grid, no checkpoint). None: a third of the layers, clamped to
    ``[min_split, max_split]`` (k = 10 on SmolLM2)."""
    policy_grid: str | None = None
    """``grid.json`` of measured perplexity (``splitlab analyze``): the policy picks k by the rule
    ``argmax_k -w_q log(ppl_k / ppl_clean) - w_c k / L`` at the request's SNR."""
    policy_grid_channel: str = "awgn"
    """Channel kind of the grid slice the rule reads."""
    policy_checkpoint: str | None = None
    """Run folder (or its ``policy/``) of a ``splitlab train`` run with the wireless preset; the service
    picks k as that policy does on a request's SNR. Wins over ``policy_grid``."""
    w_q: float = 1.0
    """Quality weight of the grid rule."""
    w_c: float = 0.1
    """UE-compute weight of the grid rule."""
    default_profile: str = "clean"
    """Channel profile of requests that name neither ``channel_profile`` nor ``snr_db``."""
    max_tokens_limit: int = 1024
    """Largest ``max_tokens`` a request may ask for."""
    max_context: int | None = None
    """Most prompt + generated tokens per request. None: the model's ``max_position_embeddings``."""
    wait_link: bool = False
    """Also sleep the simulated link latency of every transmission (wall time = compute + air time)."""
    edge_min_replicas: int = 1
    """Autoscaling lower bound of the edge half."""
    edge_max_replicas: int = 2
    """Autoscaling upper bound of the edge half."""
    edge_target_ongoing_requests: float = 4.0
    """Autoscaling target: in-flight token steps per edge replica."""
    ue_replicas: int = 1
    """Replicas of the UE half (each request's UE state lives inside one streaming call)."""
    replica_cpus: float = 0.5
    """CPUs reserved by each UE and edge replica (fractional on small machines)."""
    max_streams: int = 64
    """Concurrent requests per UE replica and KV caches kept per edge replica (LRU beyond)."""
    session_ttl_s: float = 300.0
    """An edge KV cache idle this long is dropped (its UE vanished); a late step rebuilds it."""
    edge_retry_s: float = 60.0
    """How long the UE keeps retrying an edge that died or is restarting before failing."""
    health_check_period_s: float = 2.0
    """Serve health-check period of the halves (how fast a dead replica is replaced); also how often
    the edge sweeps caches idle longer than ``session_ttl_s``."""
    adaptive: bool = True
    """With neither ``policy_grid`` nor ``policy_checkpoint``: pick k per request with the measured grid
    shipped for the model (SmolLM2); False, or a model without a shipped grid: ``default_split``."""
    trust_checkpoint: bool = False
    """Allow a ``policy_checkpoint`` without the safe export (``policy.safetensors`` + JSON), loaded
    through RLlib's pickled checkpoint. Only for files you made yourself."""
    max_batch: int = 32
    """Most requests one batched decode step takes, on the UE and on the edge."""
    batch_wait_s: float = 0.02
    """How long a decode step waits for the steps of other recently active requests to join its batch (a lone
    request never waits)."""
    edge_max_caches: int | None = None
    """KV caches per edge replica (LRU beyond). None: twice ``max_streams`` x ``ue_replicas``."""
    edge_cache_mib: float = 4096.0
    """Memory for KV caches per edge replica; a new request reserves its cache at its full context."""
    max_queued_requests: int = 64
    """Requests that may wait for a free stream (per ingress replica); beyond: 429 with Retry-After."""
    queue_timeout_s: float = 30.0
    """Longest wait for a free stream; then 503 with Retry-After."""
    request_timeout_s: float = 600.0
    """Deadline of one request from arrival to its last token (then 504, or an error event in a stream)."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body (Content-Length or streamed); beyond: 413, before the body is read whole."""
    api_keys: tuple[str, ...] = ()
    """Accepted API keys (``Authorization: Bearer KEY``); empty: no key needed. ``splitlab serve`` also
    reads ``--api-key`` and ``$SPLITLAB_API_KEY`` (comma-separated)."""
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    """Host header names the ingress answers (port ignored; ``*``: any); others get 400."""

    def __post_init__(self) -> None:
        _check_str("model", self.model)
        if not self.model:
            raise ValueError("model must be a non-empty model spec, e.g. 'smollm2' or 'tiny-llama'")
        check_int("min_split", self.min_split, 0)
        for name in ("max_split", "default_split", "max_context"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 0)
        if self.max_split is not None and self.max_split < self.min_split:
            raise ValueError(f"max_split ({self.max_split}) must be >= min_split ({self.min_split})")
        for name in ("policy_grid", "policy_checkpoint"):
            if getattr(self, name) is not None:
                _check_str(name, getattr(self, name))
        _check_str("policy_grid_channel", self.policy_grid_channel)
        for name in ("w_q", "w_c"):
            _check_float(name, getattr(self, name), 0.0)
        if self.default_profile not in CHANNEL_PROFILES:
            raise ValueError(f"default_profile must be one of {sorted(CHANNEL_PROFILES)}, got {self.default_profile!r}")
        check_int("max_tokens_limit", self.max_tokens_limit, 1)
        check_bool("wait_link", self.wait_link)
        check_int("edge_min_replicas", self.edge_min_replicas, 1)
        check_int("edge_max_replicas", self.edge_max_replicas, self.edge_min_replicas)
        _check_float("edge_target_ongoing_requests", self.edge_target_ongoing_requests, 0.0, low_open=True)
        check_int("ue_replicas", self.ue_replicas, 1)
        _check_float("replica_cpus", self.replica_cpus, 0.0)
        check_int("max_streams", self.max_streams, 1)
        for name in ("session_ttl_s", "edge_retry_s", "health_check_period_s", "edge_cache_mib", "queue_timeout_s",
                     "request_timeout_s"):
            _check_float(name, getattr(self, name), 0.0, low_open=True)
        for name in ("adaptive", "trust_checkpoint"):
            check_bool(name, getattr(self, name))
        check_int("max_batch", self.max_batch, 1)
        _check_float("batch_wait_s", self.batch_wait_s, 0.0)
        if self.edge_max_caches is not None:
            check_int("edge_max_caches", self.edge_max_caches, 1)
        check_int("max_queued_requests", self.max_queued_requests, 0)
        check_int("max_body_bytes", self.max_body_bytes, 1024)
        for name in ("api_keys", "allowed_hosts"):
            value = getattr(self, name)
            if isinstance(value, str):  # `serve run app:build api_keys=a,b` and --set pass one string
                value = tuple(v.strip() for v in value.split(",") if v.strip())
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{name} must be a list of non-empty strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if any(len(key) < 8 for key in self.api_keys):
            raise ValueError("api_keys must be at least 8 characters each (use e.g. `openssl rand -hex 24`)")
        if not self.allowed_hosts:
            raise ValueError("allowed_hosts must name at least one host (or '*' for any)")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ServeConfig":
        """Build from a mapping (YAML ``args``, ``serve run`` key=value pairs); unknown keys are an error.

        Strings are converted to the field's type, since ``serve run app:build max_split=15`` passes
        every value as a string.
        """
        data = dict(data or {})
        accepted = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ValueError(f"unknown serve config keys {unknown}; accepted keys: {sorted(accepted)}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(key, value, hints[key]) for key, value in data.items()})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ServeConfig":
        """Read the ``args`` of a Serve config file's first application, or a plain mapping file."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(data, Mapping) and "applications" in data:
            data = data["applications"][0].get("args", {})
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "ServeConfig":
        return dataclasses.replace(self, **changes)

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


def _check_float(name: str, value: Any, low: float, low_open: bool = False) -> None:
    # A scalar only: the shared check_range also accepts arrays, which no setting here is.
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if low_open else '>='} {low}, got {value!r}")


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {value!r}")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a ``serve run`` string to the field's type; other values pass through to validation."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if type(None) in options and value.lower() in ("none", "null", ""):
        return None
    for kind in options:
        if kind is bool:
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{name} must be true or false, got {value!r}")
        if kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None
    return value
