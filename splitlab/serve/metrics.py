"""Request metrics through Ray Serve's metrics API (exported with Ray's Prometheus metrics).

Names are namespaced like the rest of splitlab (``splitlab_split_k``, ``splitlab_link_bytes_up``);
Serve adds the deployment, replica and application tags; Prometheus sees them with Ray's ``ray_``
prefix (``ray_splitlab_requests_total``). Read them from the metrics export port of the Ray node
(127.0.0.1 under ``splitlab serve``); ``cluster/grafana/splitlab_dashboard.json`` is a Grafana
dashboard of them.
"""
from __future__ import annotations

from ray.serve import metrics

_LATENCY_S = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
_TAGS = ("route", "profile", "chosen_by")


def ingress_metrics(num_layers: int) -> dict:
    """Per-request metrics recorded by the ingress, tagged by route, channel profile and split source."""
    return {
        "requests": metrics.Counter("splitlab_requests", "Completed requests.", tag_keys=_TAGS),
        "rejected": metrics.Counter("splitlab_requests_rejected", "Requests refused with a 4xx, by field.",
                                    tag_keys=("route", "param")),
        "failed": metrics.Counter("splitlab_requests_failed", "Requests that failed inside the service.",
                                  tag_keys=("route",)),
        "split": metrics.Histogram("splitlab_split_k", "Split point k used (layers on the UE).",
                                   boundaries=[k + 0.5 for k in range(num_layers)], tag_keys=_TAGS),
        "bytes_up": metrics.Counter("splitlab_link_bytes_up", "Bytes of hidden states sent UE -> edge.",
                                    tag_keys=_TAGS),
        "bytes_down": metrics.Counter("splitlab_link_bytes_down", "Bytes of token ids sent edge -> UE.",
                                      tag_keys=_TAGS),
        "link_latency": metrics.Histogram("splitlab_link_latency_s", "Simulated air time per request.",
                                          boundaries=_LATENCY_S, tag_keys=_TAGS),
        "latency": metrics.Histogram("splitlab_request_latency_s", "Wall time per request.",
                                     boundaries=_LATENCY_S, tag_keys=_TAGS),
        "tokens": metrics.Counter("splitlab_completion_tokens", "Generated tokens.", tag_keys=_TAGS),
        "rebuilds": metrics.Counter("splitlab_edge_rebuilds", "Edge caches rebuilt from UE history.",
                                    tag_keys=_TAGS),
        "resplits": metrics.Counter("splitlab_resplits", "Split moves within streams (snr_trace requests).",
                                    tag_keys=_TAGS),
    }


def edge_metrics() -> dict:
    """Metrics of one edge replica."""
    return {
        "sessions": metrics.Gauge("splitlab_edge_sessions", "KV caches held by this edge replica."),
        "cache_bytes": metrics.Gauge("splitlab_edge_cache_bytes", "Bytes of KV cache held by this edge replica."),
        "rebuilds": metrics.Counter("splitlab_edge_resend_requests", "Steps that arrived without their cache."),
        "resplits": metrics.Counter("splitlab_edge_resplits", "Split points moved within a stream."),
        "resplit_layer_tokens": metrics.Counter(
            "splitlab_edge_resplit_recomputed_layer_tokens",
            "Layers the edge took over on a move down, times the past tokens it recomputed them for."),
        "batch": metrics.Histogram("splitlab_edge_batch_size", "Requests in the decode batch of each edge step.",
                                   boundaries=[1.5, 2.5, 4.5, 8.5, 16.5, 32.5, 64.5]),
    }
