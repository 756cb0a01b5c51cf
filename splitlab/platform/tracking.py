"""MLflow tracking defaults shared by every splitlab run.

The default store is SQLite in the working directory (MLflow 3.17 refuses the old file store);
``$MLFLOW_TRACKING_URI`` or an explicit ``--tracking-uri`` points runs at a server instead.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = "mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """The URI runs log to: the argument, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def use_tracking(uri: str | None = None, experiment: str = "splitlab") -> str:
    """Point mlflow at the store and select (creating if needed) the experiment; returns the URI."""
    import mlflow

    resolved = tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_experiment(experiment)
    return resolved
