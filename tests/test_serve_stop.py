"""`splitlab serve` stops cleanly: SIGTERM to its process group frees the port within 10 s."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from processes import stop_process_group

from splitlab.serve.local import free_port

ROOT = Path(__file__).parents[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_sigterm_to_the_process_group_frees_the_port_within_10_s():
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "splitlab.cli", "serve", "--model", "tiny-llama", "--port",
                             str(port), "--num-cpus", "2", "--set", "replica_cpus=0.25", "--set", "edge_max_replicas=1"],
                            cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or the app still deploying
                pass
            assert proc.poll() is None, "splitlab serve exited before it was ready"
            time.sleep(1)
        else:
            pytest.fail("splitlab serve did not become ready in 300 s")
        started = time.time()
        os.killpg(proc.pid, signal.SIGTERM)
        while _port_open(port) and time.time() - started < 30:
            time.sleep(0.2)
        freed_after = time.time() - started
        assert freed_after < 10, f"port still open {freed_after:.1f} s after SIGTERM"
        proc.wait(timeout=30)
    finally:
        stop_process_group(proc)
