"""The application graph and its builder: ingress -> policy, ingress -> UE half -> edge half.

``serve run splitlab.serve.app:build model=tiny-llama max_split=2`` and ``serve deploy
serve_config.yaml`` call :func:`build` with the application's ``args`` (keys of
:class:`~splitlab.serve.config.ServeConfig`); ``splitlab serve`` calls :func:`build_app` directly.
Replica options set here are defaults: a Serve config file's ``deployments:`` section overrides them
by deployment name (``SplitIngress``, ``SplitPolicy``, ``UEHalf``, ``EdgeHalf``).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from splitlab.serve.config import ServeConfig, model_facts
from splitlab.serve.edge import EdgeHalf
from splitlab.serve.ingress import SplitIngress
from splitlab.serve.policy import SplitPolicy, fit_split_range
from splitlab.serve.routing import ROUTER_PATH
from splitlab.serve.ue import UEHalf

LIGHT_CPUS = 0.1
"""CPUs of the ingress and the policy replicas (they tokenise and pick k; the halves compute)."""


def edge_autoscaling(config: ServeConfig) -> dict[str, Any]:
    """Autoscaling of the edge half: by in-flight calls per replica (one per UE replica and batch step)."""
    return {"min_replicas": config.edge_min_replicas, "max_replicas": config.edge_max_replicas,
            "target_ongoing_requests": config.edge_target_ongoing_requests,
            # Scale up fast under load, down slowly: a removed replica's requests rebuild their caches.
            "upscale_delay_s": 5.0, "downscale_delay_s": 120.0}


def build_app(config: ServeConfig, deployments: Mapping[str, Mapping[str, Any]] | None = None) -> Application:
    """The bound application for ``config``; validates the split range against the model first.

    ``deployments`` (``{deployment name: options}``, a Serve config file's ``deployments:`` section read by
    :func:`~splitlab.serve.config.read_serve_file`) override the replica options set here, as ``serve deploy``
    does with the same file.
    """
    extra = {name: dict(options) for name, options in (deployments or {}).items()}
    num_layers = model_facts(config.model).num_layers
    # Paths as the caller meant them: replicas may run in another working directory (and RLlib
    # reads a relative checkpoint path as a URI without a scheme).
    config = config.replace(**{name: str(Path(getattr(config, name)).expanduser().resolve())
                               for name in ("policy_checkpoint", "policy_grid") if getattr(config, name)})
    config = fit_split_range(config, num_layers)
    config.fixed_split(num_layers)
    args = config.to_dict()
    half = {"ray_actor_options": {"num_cpus": config.replica_cpus},
            "health_check_period_s": config.health_check_period_s, "graceful_shutdown_timeout_s": 5.0}
    edge = EdgeHalf.options(autoscaling_config=edge_autoscaling(config), max_ongoing_requests=config.max_streams,
                            request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH),
                            **half).options(**extra.get("EdgeHalf", {})).bind(args)
    ue = UEHalf.options(num_replicas=config.ue_replicas, max_ongoing_requests=config.max_streams,
                        **half).options(**extra.get("UEHalf", {})).bind(args, edge)
    light = {"num_replicas": 1, "ray_actor_options": {"num_cpus": LIGHT_CPUS}, "max_ongoing_requests": 4 * config.max_streams}
    policy = SplitPolicy.options(**light).options(**extra.get("SplitPolicy", {})).bind(args)
    return SplitIngress.options(**light).options(**extra.get("SplitIngress", {})).bind(args, ue, policy)


def build(args: dict[str, Any] | None = None) -> Application:
    """App builder for ``serve run splitlab.serve.app:build key=value ...`` and Serve config files."""
    return build_app(ServeConfig.from_dict(args or {}))
