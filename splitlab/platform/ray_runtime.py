"""The one way splitlab starts or joins Ray: training, sweeps, the demo and ``splitlab serve`` all call
:func:`ensure_ray`.

An embedded Ray binds to 127.0.0.1 (Ray 2.60 binds to the machine's external address unless told), with
no dashboard; a cluster is joined when an address is given or ``$RAY_ADDRESS`` names one (inside
``ray job submit``).
"""
from __future__ import annotations

import os
from typing import Any

LOCAL = "local"
"""``address`` value that always starts an embedded Ray, even when ``$RAY_ADDRESS`` is set."""


def ensure_ray(num_cpus: float | None = None, *, address: str | None = None, host: str = "127.0.0.1",
               runtime_env: dict[str, Any] | None = None, log_to_driver: bool = False, quiet: bool = True) -> bool:
    """Start (or join) Ray unless this process already has it; True when this call started it.

    Args:
        num_cpus: CPUs of an embedded Ray (default: the machine's).
        address: None joins ``$RAY_ADDRESS`` when set, else starts an embedded Ray; ``"local"`` always
            starts an embedded one; ``"auto"`` or ``HOST:PORT`` joins a running cluster.
        host: address an embedded Ray binds to (keep 127.0.0.1 unless something in front authenticates).
        runtime_env: Ray runtime environment of the job (e.g. env vars for workers).
        log_to_driver: print the workers' output here.
        quiet: Ray's own logging at ERROR only (the embedded Ray of ``splitlab train``).
    """
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or LOCAL
    if address != LOCAL:
        ray.init(address=address, runtime_env=runtime_env)
        return True
    extra = {"configure_logging": True, "logging_level": "ERROR"} if quiet else {}
    ray.init(address=LOCAL, num_cpus=int(num_cpus or os.cpu_count() or 2), include_dashboard=False,
             _node_ip_address=host, runtime_env=runtime_env, log_to_driver=log_to_driver, **extra)
    return True
