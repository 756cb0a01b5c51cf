"""Run the service on this machine: an embedded Ray on 127.0.0.1 and Serve's HTTP proxy on a local port.

Used by ``splitlab serve``, the tests and the benchmark. Ray's token authentication (on by default in
Ray 2.60) guards Ray's own RPCs and dashboard; Serve's HTTP proxy is not behind it, so clients call
the API without a token. Keep the proxy on 127.0.0.1 unless something in front of it authenticates.
"""
from __future__ import annotations

import signal
import socket
import time
from collections.abc import Mapping

from splitlab.serve.config import ServeConfig

APP_NAME = "splitlab"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_local(config: ServeConfig, host: str = "127.0.0.1", port: int | None = None, num_cpus: int | None = None,
                app_name: str = APP_NAME, route_prefix: str = "/", deployments: Mapping | None = None) -> str:
    """Start an embedded Ray and Serve on ``host``, deploy the app, wait until it runs; returns its URL."""
    from ray import serve

    from splitlab.platform.ray_runtime import LOCAL, ensure_ray

    port = port or free_port(host)
    ensure_ray(num_cpus, address=LOCAL, host=host, quiet=False)
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    deploy(config, app_name, route_prefix, deployments)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def deploy(config: ServeConfig, app_name: str = APP_NAME, route_prefix: str = "/",
           deployments: Mapping | None = None) -> None:
    """Deploy (or update) one application on the running Serve instance; returns when it is running."""
    from ray import serve

    from splitlab.serve.app import build_app

    serve.run(build_app(config, deployments), name=app_name, route_prefix=route_prefix, blocking=False)


def stop_local() -> None:
    """Shut Serve and the embedded Ray down."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def serve_forever(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, num_cpus: int | None = None,
                  deployments: Mapping | None = None) -> None:
    """``splitlab serve``: start, print how to call it, block until Ctrl-C or SIGTERM, then shut down."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # a process manager's stop shuts Serve and Ray down cleanly too
    try:
        url = start_local(config, host, port, num_cpus, deployments=deployments)
    except KeyboardInterrupt:
        stop_local()
        return
    signal.signal(signal.SIGTERM, stop)  # again: ray.init installs its own handler
    print(f"splitlab serve: {config.model} at {url}  (Ctrl-C stops)", flush=True)
    print(f"  curl {url}/v1/completions -H 'Content-Type: application/json' "
          f"-d '{{\"prompt\": \"The capital of France is\", \"max_tokens\": 16, \"temperature\": 0, "
          f"\"channel_profile\": \"fair\"}}'", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_local()
