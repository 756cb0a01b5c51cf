"""A shared edge with a queue that persists from one step to the next.

The edge decodes every user's tokens in batches: one decode iteration runs one token of every active
user through that user's tail layers, so an iteration lasts the sum of the users' per-token tail times.
Per step the edge has ``capacity_s`` seconds of compute (the step's wall time); work beyond it stays in
the backlog and is served first in the next steps (a fluid FIFO). A user's per-token edge latency is
therefore ``(backlog + this step's work of all users) / block_tokens``: its own tail, the other users'
tails batched with it, and the wait behind the backlog.

Overload is handled in two places: arrivals are admitted only while the backlog is below
``max_backlog_steps`` steps of capacity, and a per-token latency past the deadline is penalised in the
reward (:class:`~splitlab.envs.sequential.SequentialConfig` ``deadline_s``, ``w_d``).
"""
from __future__ import annotations

from pydantic import Field

from splitlab.config import ConfigModel


class EdgeQueueConfig(ConfigModel):
    """How loaded the shared edge is and when it stops admitting users."""


    load: float = Field(0.5, gt=0, le=1000)
    """Edge work per step of a full cell with every user at k = 0, over the edge's capacity per step
    (sets the edge's speed: above 1 the edge cannot serve everyone at k = 0)."""
    max_backlog_steps: float = Field(2.0, ge=0)
    """New users are admitted only while the backlog is below this many steps of edge capacity."""


class EdgeQueue:
    """The backlog of edge work, in seconds of edge compute."""

    def __init__(self, config: EdgeQueueConfig, capacity_s: float) -> None:
        if not capacity_s > 0:
            raise ValueError(f"edge capacity per step must be > 0 seconds, got {capacity_s!r}")
        self.config, self.capacity_s = config, float(capacity_s)
        self.backlog_s = 0.0
        self.served_s = 0.0

    def reset(self) -> None:
        self.backlog_s, self.served_s = 0.0, 0.0

    def serve(self, arrivals_s: float) -> float:
        """Queue this step's work; returns the time until it is all done (backlog ahead + arrivals)."""
        ahead = self.backlog_s + float(arrivals_s)
        done = min(ahead, self.capacity_s)
        self.served_s += done
        self.backlog_s = ahead - done
        return ahead

    def admits(self) -> bool:
        """Whether a new user may join now."""
        return self.backlog_s < self.config.max_backlog_steps * self.capacity_s

    @property
    def backlog_steps(self) -> float:
        return self.backlog_s / self.capacity_s
