"""What moving the split point costs in the middle of a generation: bytes over the link or recompute.

When k changes from ``k_from`` to ``k_to`` after ``T`` tokens, the layers between them change sides and
their KV cache for the past tokens must follow. Each move has two ways, priced in work units:

- up (``k_to > k_from``: the UE takes layers ``k_from..k_to-1``)
  - recompute: the UE runs those layers over the hidden states after ``k_from`` that it already holds
    (it sent them): ``(k_to - k_from) * T`` UE layer-tokens. A UE that no longer holds them (an earlier
    move by transfer left it without) first rebuilds them from the token ids: ``k_to * T`` in all.
  - transfer: the edge sends their KV: ``(k_to - k_from) * T * kv_bytes`` bytes.
- down (``k_to < k_from``: the edge takes layers ``k_to..k_from-1``)
  - recompute: the UE rebuilds the hidden states after ``k_to`` from the token ids (``k_to * T`` UE
    layer-tokens), sends them (``T * hidden_bytes``) and the edge runs the layers
    (``(k_from - k_to) * T`` edge layer-tokens).
  - transfer: the UE sends their KV: ``(k_from - k_to) * T * kv_bytes`` bytes.

:class:`MigrationPrices` turns work into seconds and picks the cheaper way. Everything here works on
numpy arrays as well as on scalars, so the token-level protocol (:mod:`splitlab.llm.generation`) and
the vectorised envs use one formula.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

MigrationMode = Literal["recompute", "transfer"]
MIGRATION_MODES: tuple[str, ...] = ("recompute", "transfer", "cheapest")


class MigrationWork(NamedTuple):
    """Work of one move by each way (arrays broadcast over users; zero where k does not change)."""

    recompute_ue_layer_tokens: np.ndarray
    recompute_edge_layer_tokens: np.ndarray
    recompute_bytes: np.ndarray
    transfer_bytes: np.ndarray


def migration_work(k_from, k_to, tokens, kv_bytes_per_layer_token: float, hidden_bytes_per_token: float,
                   ue_holds_boundary=True) -> MigrationWork:
    """Work of moving the split from ``k_from`` to ``k_to`` after ``tokens`` tokens, by each way."""
    k_from, k_to = np.asarray(k_from, dtype=np.float64), np.asarray(k_to, dtype=np.float64)
    t = np.asarray(tokens, dtype=np.float64)
    up, down = k_to > k_from, k_to < k_from
    moved = np.abs(k_to - k_from) * t  # layer-tokens whose KV changes sides
    up_ue = np.where(np.asarray(ue_holds_boundary, dtype=bool), moved, k_to * t)
    ue = np.where(up, up_ue, np.where(down, k_to * t, 0.0))
    edge = np.where(down, moved, 0.0)
    rec_bytes = np.where(down, t * hidden_bytes_per_token, 0.0)
    return MigrationWork(ue, edge, rec_bytes, moved * kv_bytes_per_layer_token)


@dataclass(frozen=True)
class MigrationPrices:
    """Seconds per unit of migration work; chooses the cheaper way to move the KV.

    Fields may be arrays (one price per user, broadcast against the work). Built from the device cost table of the env (or measured on a machine); ``link_bytes_per_s`` is the
    current link rate, so the choice changes with the channel.
    """

    ue_s_per_layer_token: float
    """UE compute time of one decoder layer over one token."""
    edge_s_per_layer_token: float
    """Edge compute time of one decoder layer over one token."""
    link_bytes_per_s: float
    """Link rate for the migration payload (bytes per second)."""

    def __post_init__(self) -> None:
        for name in ("ue_s_per_layer_token", "edge_s_per_layer_token", "link_bytes_per_s"):
            if not np.all(np.asarray(getattr(self, name)) > 0):
                raise ValueError(f"MigrationPrices.{name} must be > 0, got {getattr(self, name)!r}")

    def seconds(self, work: MigrationWork) -> tuple[np.ndarray, np.ndarray]:
        """(recompute seconds, transfer seconds) of ``work``."""
        recompute = (work.recompute_ue_layer_tokens * self.ue_s_per_layer_token
                     + work.recompute_edge_layer_tokens * self.edge_s_per_layer_token
                     + work.recompute_bytes / self.link_bytes_per_s)
        return recompute, work.transfer_bytes / self.link_bytes_per_s

    def choose(self, work: MigrationWork) -> MigrationMode:
        """The cheaper way for one move (ties go to recompute: nothing crosses the link)."""
        recompute, transfer = self.seconds(work)
        return "recompute" if float(recompute) <= float(transfer) else "transfer"
