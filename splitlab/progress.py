"""One progress bar for long work (analysis grids, held-out scoring, benchmarks): a tqdm bar on a terminal,
a line every 30 s with the rate and the ETA in a log (no terminal), nothing when disabled."""
from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A tqdm bar over ``total`` steps; use it as a context manager and call ``update(n)``."""
    # In a log a refresh every 30 s keeps the progress (and its ETA) without flooding it.
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
                mininterval=0.1 if sys.stderr.isatty() else 30.0, maxinterval=30.0 if not sys.stderr.isatty() else 10.0)
