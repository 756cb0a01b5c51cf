"""Run a spec on a Ray cluster: ``splitlab submit SPEC.yaml --address http://HEAD:8265``.

The spec is validated here first (a bad spec never reaches the cluster). Then Ray's job submission
client uploads the project folder as the job's working directory (``.gitignore``d files and local
stores stay behind) and runs ``python -m splitlab.cli sweep SPEC`` (a spec with a ``sweep:``
section) or ``python -m splitlab.cli train SPEC`` on the head node. A spec kept outside the project
travels in a staged copy of the project's code (package, configs) with the spec added. The job logs to the MLflow store
given by ``--tracking-uri`` / ``$MLFLOW_TRACKING_URI``; the default SQLite file in this folder only
works when the head shares this filesystem (a local head), so clusters want a tracking server
(``mlflow/``).

Token authentication (Ray >= 2.52): the dashboard wants ``Authorization: Bearer <token>``. The token
comes from ``--token``, else ``$RAY_AUTH_TOKEN``, else the file at ``$RAY_AUTH_TOKEN_PATH`` or
``~/.ray/auth_token`` (what ``ray get-auth-token`` prints); a cluster without auth ignores it.
"""
from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

EXCLUDES = [".git", ".venv", "runs/", "mlruns/", "mlartifacts/", "*.db", ".pytest_cache/", "benchmarks/results/",
            "**/__pycache__/", "*.egg-info/", ".env", ".env.*", "*.env", "**/.env", "**/.env.*"]
"""Never uploaded with the working directory (Ray also skips what .gitignore lists); ``.env`` files hold
secrets (API keys, tokens) and stay on the submitting machine."""
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Submission:
    """A submitted job."""

    submission_id: str
    address: str
    entrypoint: str
    status: str = "PENDING"
    logs: str = ""


def project_root(start: Path) -> Path | None:
    """The folder holding ``pyproject.toml`` and ``splitlab/`` at or above ``start``, or None."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "splitlab").is_dir():
            return folder
    return None


STAGED = ("pyproject.toml", "README.md", "splitlab", "tune_configs")
"""What a staged upload holds: enough to import splitlab and run a spec (plus the spec itself)."""
STAGED_SPEC_DIR = "submitted"


def stage_project(root: Path, spec_path: Path) -> Path:
    """A temporary copy of the project's code with ``spec_path`` added under ``submitted/``."""
    import shutil
    import tempfile

    stage = Path(tempfile.mkdtemp(prefix="splitlab-submit-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".env", ".env.*", "*.env")  # secrets stay
    for name in STAGED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, stage / name)
    (stage / STAGED_SPEC_DIR).mkdir()
    shutil.copy2(spec_path, stage / STAGED_SPEC_DIR / spec_path.name)
    return stage


def auth_token(explicit: str | None = None) -> str | None:
    """The Ray auth token to send: explicit, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if explicit:
        return explicit
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return (path.read_text().strip() or None) if path.is_file() else None


def _is_local(address: str) -> bool:
    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1")


def build_entrypoint(spec_rel: str, is_sweep: bool, *, resume: bool = False, name: str | None = None,
                     storage_path: str | None = None) -> str:
    """The shell command the job runs on the head, from the working directory's root."""
    import shlex

    if not is_sweep:
        return f"python -m splitlab.cli train {shlex.quote(spec_rel)}"
    parts = ["python", "-m", "splitlab.cli", "sweep", spec_rel, "--address", "auto"]
    if resume:
        parts.append("--resume")
    if name:
        parts += ["--name", name]
    if storage_path:
        parts += ["--storage-path", storage_path]
    return " ".join(shlex.quote(p) for p in parts)


def validate_spec(spec_path: Path) -> tuple[bool, str | None]:
    """Validate the spec as ``splitlab sweep`` / ``train`` would; returns (is it a sweep, its MLflow experiment)."""
    raw = yaml.safe_load(spec_path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{spec_path}: a spec must be a YAML mapping, got {type(raw).__name__}")
    if "sweep" in raw:
        from splitlab.platform.sweep import load_plan

        return True, load_plan(spec_path).sweep.experiment
    from splitlab.platform.sweep import validate_experiment

    typed = validate_experiment(raw)
    return False, typed.tracking.experiment if typed.tracking.enabled else None


def submit(spec: str | Path, address: str, *, wait: bool = True, tracking_uri: str | None = None,
           storage_path: str | None = None, resume: bool = False, name: str | None = None,
           token: str | None = None, env: dict[str, str] | None = None, timeout_s: float | None = None,
           log=print) -> Submission:
    """Validate, upload the project, start the job; with ``wait`` stream its logs until it ends."""
    from ray.job_submission import JobSubmissionClient

    from splitlab.platform.tracking import tracking_uri as resolve_uri

    spec_path = Path(spec).resolve()
    if not spec_path.is_file():
        raise FileNotFoundError(f"spec {str(spec)!r} does not exist")
    is_sweep, experiment = validate_spec(spec_path)
    root = project_root(Path.cwd().resolve())
    if root is None or root not in spec_path.parents:
        root = project_root(spec_path.parent)
    stage = None
    if root is None:
        import splitlab

        stage = stage_project(Path(splitlab.__file__).resolve().parents[1], spec_path)
        root, spec_path = stage, stage / STAGED_SPEC_DIR / spec_path.name
    uri = resolve_uri(tracking_uri)
    if uri.startswith("sqlite:") and experiment:
        from splitlab.platform.tracking import ensure_experiment

        ensure_experiment(uri, experiment)  # here, so its artifact folder is ./mlruns beside us, not in the job's copy
    if uri.startswith("sqlite:") and not _is_local(address):
        log(f"warning: tracking URI {uri} is a file on this machine; the cluster at {address} logs there only "
            "if it shares this filesystem. Start a tracking server (mlflow/README.md) and pass --tracking-uri.")
    if storage_path and "://" not in storage_path:
        storage_path = str(Path(storage_path).resolve())
    entrypoint = build_entrypoint(str(spec_path.relative_to(root)), is_sweep, resume=resume, name=name,
                                  storage_path=storage_path)
    secret = auth_token(token)
    headers = {"Authorization": f"Bearer {secret}"} if secret else None
    client = JobSubmissionClient(address, headers=headers)
    submission_id = f"splitlab-{spec_path.stem}-{uuid.uuid4().hex[:8]}"
    runtime_env = {"working_dir": str(root), "excludes": EXCLUDES,
                   "env_vars": {"MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", **(env or {})}}
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                          metadata={"splitlab.spec": spec_path.name, "splitlab.kind": "sweep" if is_sweep else "train"})
    finally:
        if stage is not None:  # uploaded (or failed): the staged copy has served
            import shutil

            shutil.rmtree(stage, ignore_errors=True)
    job = Submission(submission_id=submission_id, address=address, entrypoint=entrypoint)
    log(f"submitted {submission_id} to {address}: {entrypoint}")
    if not wait:
        return job
    shown = 0
    start = time.monotonic()
    while True:
        job.status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if job.status in TERMINAL:
            job.logs = logs
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            client.stop_job(submission_id)
            raise TimeoutError(f"job {submission_id} still {job.status} after {timeout_s:.0f} s; stopped it")
        time.sleep(2.0)
    log(f"job {submission_id} {job.status}")
    return job
