"""Run the service on this machine: an embedded Ray on 127.0.0.1 and Serve's HTTP proxy on a local port.

Used by ``splitlab serve``, the tests and the benchmark. Ray itself (its RPC ports and its Prometheus
metrics export port) always listens on 127.0.0.1 here, and the dashboard is off; only Serve's HTTP
proxy goes where ``host`` says. Ray's token authentication (on by default in Ray 2.60) guards Ray's own
RPCs; the HTTP API has its own keys (``api_keys``): set one before binding anything but loopback.

SIGTERM (a process manager, or ``kill -TERM`` on the process group) stops Serve with a short grace
period, shuts Ray down, and ends any of this process's own Ray processes still holding on, so the
port is free within seconds.
"""
from __future__ import annotations

import signal
import socket
import time
from collections.abc import Mapping
from typing import Any

from splitlab.serve.config import ServeConfig

APP_NAME = "splitlab"
LOOPBACK = "127.0.0.1"
SHUTDOWN_GRACE_S = 4.0
"""How long a stop waits for Serve's controller before shutting Ray down under it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_local(config: ServeConfig, host: str = "127.0.0.1", port: int | None = None, num_cpus: int | None = None,
                app_name: str = APP_NAME, route_prefix: str = "/", deployments: Mapping | None = None,
                app: Any = None) -> str:
    """Start an embedded Ray and Serve on ``host``, deploy the app, wait until it runs; returns its URL.

    ``app``: another bound application to run instead of the text service (the device path's edge).
    """
    from ray import serve

    from splitlab.platform.ray_runtime import LOCAL, ensure_ray

    port = port or free_port(host)
    # Ray's own listeners (RPC, metrics export) on loopback whatever host the API is served on.
    ensure_ray(num_cpus, address=LOCAL, host=LOOPBACK, quiet=False)
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    if app is None:
        deploy(config, app_name, route_prefix, deployments)
    else:
        serve.run(app, name=app_name, route_prefix=route_prefix, blocking=False)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def deploy(config: ServeConfig, app_name: str = APP_NAME, route_prefix: str = "/",
           deployments: Mapping | None = None) -> None:
    """Deploy (or update) one application on the running Serve instance; returns when it is running."""
    from ray import serve

    from splitlab.serve.app import build_app

    serve.run(build_app(config, deployments), name=app_name, route_prefix=route_prefix, blocking=False)


def stop_local(grace_s: float = SHUTDOWN_GRACE_S) -> None:
    """Shut Serve and the embedded Ray down; processes of ours still alive after that are ended.

    ``serve.shutdown`` waits on Serve's controller, which a signal to the whole process group may
    already have killed: it gets ``grace_s`` seconds on a side thread, then Ray is shut down anyway.
    """
    import threading

    import psutil
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    ours = psutil.Process().children(recursive=True)  # raylet, GCS, workers (the proxy among them)
    stopper = threading.Thread(target=serve.shutdown, daemon=True)
    stopper.start()
    stopper.join(grace_s)
    if stopper.is_alive():
        # Never shut Ray down under a thread still inside a Ray call: that crashed the process
        # (SIGSEGV). Killing the controller makes serve.shutdown's pending call fail at once.
        _kill_serve_controller()
        stopper.join(grace_s)
    ray.shutdown()
    alive = [p for p in ours if p.is_running()]
    for proc in alive:
        proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=3.0)
    for proc in alive:
        proc.kill()


def _kill_serve_controller() -> None:
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.kill(ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE), no_restart=True)
    except (ValueError, ray.exceptions.RayError):
        pass  # already gone


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
    for warning in exposure_warnings(config, host):
        print(f"WARNING: {warning}", flush=True)
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


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warnings(config: ServeConfig, host: str) -> list[str]:
    """What an operator binding ``host`` should hear: no key on a non-loopback address, a Host allow-list
    that the clients' addresses would fail."""
    if is_loopback(host):
        return []
    out = []
    if not config.api_keys:
        out.append(f"serving on {host}, beyond this machine, WITHOUT an API key: anyone who can reach the port "
                   f"can use the model. Set --api-key (or $SPLITLAB_API_KEY), or bind 127.0.0.1 behind a proxy "
                   f"that authenticates.")
    if "*" not in config.allowed_hosts and host not in config.allowed_hosts:
        out.append(f"allowed_hosts is {list(config.allowed_hosts)}: requests naming this machine by another "
                   f"name get 400. Add its names with --set allowed_hosts=NAME1,NAME2 (or '*').")
    return out
