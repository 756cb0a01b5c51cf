"""Helpers for tests that start servers in process groups of their own (Ray nodes, MLflow servers)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the group of ``proc`` (started with ``start_new_session=True``), SIGKILL it after ``timeout``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class RayCluster:
    """Ray nodes started here with ``ray start --block`` on 127.0.0.1, token auth on (never ``ray stop``,
    which would hit other Ray instances on the machine)."""

    token: str
    temp_dir: Path
    gcs: str = ""
    dashboard: str = ""
    """The job API, ``http://127.0.0.1:PORT``."""
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # the venv's ray
        env.pop("RAY_ADDRESS", None)
        return env

    def _start(self, args: list[str], name: str) -> subprocess.Popen:
        # Every listener of its own: several raylets on one machine must not share a default port.
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        low = 20000 + 2000 * len(self.nodes)  # worker ports: a range per node
        log = open(self.temp_dir / f"{name}.log", "w")
        proc = subprocess.Popen([RAY, "start", "--block", "--node-ip-address=127.0.0.1", *ports,
                                 f"--min-worker-port={low}", f"--max-worker-port={low + 1999}", *args,
                                 "--disable-usage-stats"], env=self.env(), start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT)
        self.nodes.append(proc)
        return proc

    def start_head(self, num_cpus: int) -> None:
        gcs_port, dashboard_port = free_port(), free_port()
        head = self._start(["--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
                            f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
                            f"--ray-client-server-port={free_port()}", f"--num-cpus={num_cpus}",
                            f"--temp-dir={self.temp_dir}"], "head")
        self.gcs, self.dashboard = f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                req = urllib.request.Request(f"{self.dashboard}/api/jobs/",
                                             headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(req, timeout=5) as response:
                    json.loads(response.read())
                return
            except OSError:
                assert head.poll() is None, (self.temp_dir / "head.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the head's job API did not come up"
                time.sleep(1.0)

    def add_worker(self, num_cpus: int, name: str, timeout: float = 180.0) -> subprocess.Popen:
        """Start a worker node and wait until it is alive (one at a time: two nodes of one IP starting at once
        time out waiting for their raylets)."""
        alive = len(self.alive_nodes())
        deadline = time.monotonic() + timeout
        for attempt in range(3):  # `ray start` gives a raylet 30 s to register: too short on a busy machine
            # A temp dir per node: nodes sharing one would share runtime_resources/, where each node's agent
            # deletes the job packages its own workers stopped using (the job's working dir among them).
            own = self.temp_dir / f"n{len(self.nodes)}"
            proc = self._start([f"--address={self.gcs}", f"--num-cpus={num_cpus}", f"--temp-dir={own}"],
                               f"{name}-{attempt}")
            while len(self.alive_nodes()) <= alive and proc.poll() is None:
                assert time.monotonic() < deadline, f"worker {name} did not join"
                time.sleep(1.0)
            if proc.poll() is None:
                return proc
            self.nodes.remove(proc)
        raise AssertionError((self.temp_dir / f"{name}-2.log").read_text()[-3000:])

    def state(self, what: str) -> list[dict]:
        """Ray's state API (``nodes``, ``actors``, ...) over the dashboard, dead entries included."""
        req = urllib.request.Request(f"{self.dashboard}/api/v0/{what}?detail=1&limit=1000",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.loads(response.read())["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def stop(self) -> None:
        """End every node's process group, then every process of the Ray session (workers and job drivers
        run in process groups of their own)."""
        session = self.temp_dir / "session_latest"
        name = os.path.basename(os.path.realpath(session)) if session.exists() else None
        for proc in reversed(self.nodes):
            stop_process_group(proc)
        if name:
            for proc_dir in Path("/proc").glob("[0-9]*"):
                try:
                    if name.encode() in (proc_dir / "cmdline").read_bytes():
                        os.kill(int(proc_dir.name), signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass
        import shutil

        shutil.rmtree(self.temp_dir, ignore_errors=True)


def new_cluster(token: str) -> RayCluster:
    # short: Ray's socket paths must stay < 108 characters
    return RayCluster(token=token, temp_dir=Path(tempfile.mkdtemp(prefix="rh", dir="/tmp")))


def start_mlflow_server(folder: Path, backend_uri: str) -> tuple[subprocess.Popen, str]:
    """``mlflow/start.sh`` (what ``make ui`` runs) on a free 127.0.0.1 port over ``backend_uri``, artifacts in
    ``folder/mlruns``; returns (process, URL) once /health answers. Stop with :func:`stop_process_group`."""
    root = Path(__file__).resolve().parents[1]
    port = free_port()
    env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_BACKEND_STORE_URI": backend_uri,
           "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "mlruns")}
    with (folder / "server.log").open("w") as log:
        server = subprocess.Popen([str(root / "mlflow" / "start.sh")], env=env, start_new_session=True, stdout=log,
                                  stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_process_group(server)
            raise RuntimeError("mlflow server did not answer /health: " + (folder / "server.log").read_text()[-3000:])
        time.sleep(0.5)
