"""Shared fixtures: models are loaded once per session (tiny ones in a second, SmolLM2 in about one)."""
from __future__ import annotations

import pytest

from splitlab.llm import SplitModel


@pytest.fixture(scope="session", params=["tiny-llama", "tiny-gpt2"])
def tiny_model(request) -> SplitModel:
    return SplitModel.load(request.param)


@pytest.fixture(scope="session")
def tiny_llama() -> SplitModel:
    return SplitModel.load("tiny-llama")


@pytest.fixture(scope="session")
def smollm2() -> SplitModel:
    return SplitModel.load("smollm2")


@pytest.fixture(autouse=True)
def _no_inherited_tracking_uri(monkeypatch):
    """mlflow.set_tracking_uri exports $MLFLOW_TRACKING_URI; keep one test's store out of the next."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def _own_measurement_store(monkeypatch, tmp_path_factory):
    """``store: auto`` resolves through $SPLITLAB_MEASUREMENTS: each test gets an empty store of its own, so
    counts of real evaluations never depend on what an earlier test (or run) measured."""
    monkeypatch.setenv("SPLITLAB_MEASUREMENTS", str(tmp_path_factory.mktemp("measurements")))


def pytest_sessionfinish(session, exitstatus):
    """Leave no Ray behind: a test that failed half-way may not have reached its own shutdown."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    session.config._splitlab_exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    """End the process with pytest's status once everything is reported.

    Interpreter teardown after Ray, gRPC and torch threads have run sometimes aborts in abseil's mutex
    check ("thread should hold at least a read lock") after every test passed, turning a green run into
    exit 134. Nothing of ours runs at teardown, so skipping it loses nothing.
    """
    import os
    import sys

    status = getattr(config, "_splitlab_exitstatus", None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
