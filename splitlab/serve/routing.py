"""Route every call of one request to the edge replica that holds its KV cache.

The request id travels as the handle call's multiplexed model id. Serve's own multiplexed routing
only learns which replica holds an id after a report round trip (about 0.1 s) and then spreads calls
over every replica that ever held it, so consecutive steps of one request ping-pong between replicas
and each switch costs a cache rebuild. :class:`RequestIdRouter` instead ranks replicas by rendezvous
(highest-random-weight) hashing of (request id, replica id): the choice is immediate, the same in every
router, and a change of the replica set (a crash, autoscaling) moves only the requests of the replicas
that came or went, which then rebuild their cache once from the UE's history.

A UE sends the decode steps of all its requests whose caches sit on one replica as one call
(:mod:`splitlab.serve.edge_client`); such a call carries that replica's id, prefixed with
:data:`REPLICA_ROUTE`, instead of a request id, and goes to that replica while it exists (else to any
replica, where the requests rebuild their caches).
"""
from __future__ import annotations

import hashlib

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

ROUTER_PATH = "splitlab.serve.routing.RequestIdRouter"
"""Import path for ``request_router_config.request_router_class`` (code and Serve config files)."""
REPLICA_ROUTE = "replica:"
"""Prefix of a routing key that names a replica rather than a request (request ids are hex uuids)."""


def replica_route(replica_id: str) -> str:
    """The routing key of calls meant for the replica ``replica_id`` (Serve's ``ReplicaID.unique_id``)."""
    return REPLICA_ROUTE + replica_id


def affinity(request_id: str, replica_id: str) -> int:
    """Rendezvous score of a replica for a request; the highest score owns the request."""
    digest = hashlib.blake2b(f"{request_id}|{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_order(request_id: str, replica_ids: list[str]) -> list[str]:
    """Replica ids from owner to last resort."""
    return sorted(replica_ids, key=lambda rid: affinity(request_id, rid), reverse=True)


class RequestIdRouter(RequestRouter):
    """Serve request router with request-id affinity (see the module docstring).

    Without the FIFO mixin, Serve's router assigns a chosen replica to exactly the request it was
    chosen for. Calls without a multiplexed model id (``stats``) go to any replica.
    """

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        key = pending_request.metadata.multiplexed_model_id if pending_request is not None else None
        if not key:
            return [candidate_replicas]
        pending_request.routing_context.should_backoff = True  # a busy owner is retried, not skipped
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        if key.startswith(REPLICA_ROUTE):
            named = by_id.get(key[len(REPLICA_ROUTE):])
            return [[named]] if named is not None else [candidate_replicas]  # gone: anyone, caches rebuilt
        # Owner first; the others only if the owner refuses (full queue), at the price of a rebuild.
        return [[by_id[rid]] for rid in owner_order(key, list(by_id))]
