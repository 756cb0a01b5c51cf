"""How long one split request takes: UE compute, then the link, then edge compute.

A request is a prefill of ``tokens`` tokens. The UE runs layers ``0..k-1``, sends the hidden state
``[tokens, hidden]`` over the link (time from :func:`splitlab.channel.link_cost`, whose
``ChannelConfig.bandwidth_hz`` is the bandwidth), and the edge runs layers ``k..L-1``. A decoder
layer costs about ``2 * params_per_layer`` FLOPs per token (one multiply-add per weight; attention
over a short window is small next to the matrix products).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ConfigDict

from splitlab.config import ConfigModel, NonNegativeFloat, PositiveFloat, PositiveInt


@dataclass(frozen=True)
class Latency:
    """Seconds spent in each part of one request."""

    ue_s: float
    """UE compute for the head (layers 0..k-1)."""
    tx_s: float
    """Time on air for the hidden state."""
    edge_s: float
    """Edge compute for the tail, queueing behind other users' tails included."""
    rtt_s: float = 0.0
    """Fixed round-trip time of the exchange (propagation both ways, serving hops): ``DeviceModel.rtt_s``."""

    @property
    def total_s(self) -> float:
        return self.ue_s + self.tx_s + self.edge_s + self.rtt_s

    def as_metrics(self, prefix: str = "latency/") -> dict[str, float]:
        return {f"{prefix}ue_s": self.ue_s, f"{prefix}tx_s": self.tx_s, f"{prefix}edge_s": self.edge_s,
                f"{prefix}rtt_s": self.rtt_s, f"{prefix}total_s": self.total_s}


class DeviceModel(ConfigModel):
    """Compute speeds of the UE and the edge, and the size of one request.

    The defaults are effective (not peak) rates: a phone NPU sustaining about 200 GFLOP/s on
    transformer layers and one data-centre GPU sustaining about 20 TFLOP/s. With SmolLM2
    (30 layers, hidden 576) one 128-token layer costs about 0.9 GFLOP: 4.5 ms on the UE.
    """

    label: ClassVar[str] = "device"

    model_config = ConfigDict(frozen=True)

    ue_flops: PositiveFloat = 2e11
    """Sustained UE FLOP/s at full budget (the observation's UE budget scales it)."""
    edge_flops: PositiveFloat = 2e13
    """Sustained edge FLOP/s, shared by every tail in flight."""
    params_per_layer: PositiveFloat | None = None
    """Weights per decoder layer; None estimates ``12 * hidden**2`` (attention 4h^2 + MLP 8h^2)."""
    tokens: PositiveInt = 128
    """Tokens per request: the prefill window whose hidden state crosses the link at once."""
    rtt_s: NonNegativeFloat = 0.0
    """Fixed time per UE -> edge -> UE exchange that neither compute nor air time covers: the link's
    propagation delay both ways plus the serving hops. The device-path benchmark measured it: 0 made the
    model miss per-token latency by the whole round trip (benchmarks/device_path.py)."""
    edge_fixed_s: NonNegativeFloat = 0.0
    """Edge compute per request outside the decoder layers (final norm and output head, whatever k is);
    on SmolLM2 the 49152 x 576 output head costs about as much as 8 layers for one decoded token."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | DeviceModel | None, name: str = "device") -> DeviceModel:
        """Build from a mapping; unknown keys are an error that lists the accepted ones."""
        return super().from_dict(d, name)

    def layer_flops(self, hidden: int) -> float:
        """FLOPs of one decoder layer over one request (``tokens`` tokens)."""
        params = self.params_per_layer if self.params_per_layer is not None else 12.0 * hidden**2
        return 2.0 * params * self.tokens

    def local_latency_s(self, num_layers: int, hidden: int) -> float:
        """Running the whole model on the UE at full budget: the default ``latency_ref``."""
        return num_layers * self.layer_flops(hidden) / self.ue_flops

    def latency(self, k: int, num_layers: int, hidden: int, tx_time_s: float, ue_budget: float = 1.0,
                edge_tail_layers: float | None = None) -> Latency:
        """Latency of a request split at ``k``.

        Args:
            ue_budget: fraction of ``ue_flops`` available to this request, in (0, 1].
            edge_tail_layers: tail layers the edge runs this step across all users (the edge
                processes them as one batch, so each user waits for all); None: this user's
                ``num_layers - k`` alone.
        """
        per_layer = self.layer_flops(hidden)
        tail = num_layers - k if edge_tail_layers is None else edge_tail_layers
        return Latency(ue_s=k * per_layer / (self.ue_flops * ue_budget), tx_s=float(tx_time_s),
                       edge_s=tail * per_layer / self.edge_flops + self.edge_fixed_s, rtt_s=self.rtt_s)
