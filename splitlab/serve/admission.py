"""Who may use the service and how many at once: API keys, Host names, and a bounded queue.

- :class:`Gate`: ``Authorization: Bearer KEY`` against the configured keys (constant-time compare;
  401 in OpenAI's error shape) and the ``Host`` header against an allow-list (400), so a browser page
  on another origin cannot reach a loopback service by DNS rebinding.
- :class:`Admission`: at most ``capacity`` streams run at once per ingress replica; up to
  ``max_queued`` requests wait for one, each at most ``timeout_s``. Beyond the queue: 429; a wait
  that times out: 503; both with ``Retry-After``.
"""
from __future__ import annotations

import asyncio
import hmac
from collections.abc import Sequence

from splitlab.serve.protocol import RequestError

RETRY_AFTER_S = 1
"""What ``Retry-After`` says when the queue is full or a wait timed out."""


class Overloaded(RequestError):
    """429 or 503 with a ``Retry-After`` header."""

    def __init__(self, message: str, status: int):
        super().__init__(message, None, status)
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


class Gate:
    """API keys and allowed Host names (see the module docstring)."""

    def __init__(self, api_keys: Sequence[str], allowed_hosts: Sequence[str]):
        self.keys = list(api_keys)
        self.any_host = "*" in allowed_hosts
        self.hosts = {h.lower().strip("[]") for h in allowed_hosts}

    def check_host(self, host_header: str | None) -> None:
        if self.any_host:
            return
        host = (host_header or "").strip().lower()
        name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        if name not in self.hosts:
            raise RequestError(f"Host {host_header!r} is not served here; allowed hosts: {sorted(self.hosts)} "
                               f"(set allowed_hosts)", "Host")

    def check_key(self, authorization: str | None) -> None:
        check_api_key(authorization, self.keys)


class InvalidKey(RequestError):
    """A missing or wrong API key: 401 in OpenAI's error shape (``code: invalid_api_key``)."""

    def __init__(self, message: str):
        super().__init__(message, "Authorization", status=401)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": None,
                          "code": "invalid_api_key"}}


def check_api_key(authorization: str | None, keys: Sequence[str]) -> None:
    """Accept when ``keys`` is empty or the header's bearer token equals one of them; else raise :class:`InvalidKey`.

    Every configured key is compared, each in constant time (``hmac.compare_digest``), so the time taken
    tells nothing about which key, or how much of one, matched. The text and the device endpoints share it.
    """
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if scheme.lower() != "bearer" or not token.strip() or not matched:
        raise InvalidKey("missing or wrong API key: send Authorization: Bearer YOUR_KEY")


class Admission:
    """A bounded number of running streams and of waiting requests (see the module docstring)."""

    def __init__(self, capacity: int, max_queued: int, timeout_s: float):
        self.capacity, self.max_queued, self.timeout_s = capacity, max_queued, timeout_s
        self.running = 0
        self.waiting = 0
        self.freed = asyncio.Condition()

    async def acquire(self, n: int = 1) -> None:
        """Take ``n`` streams, waiting in the queue if need be; raises :class:`Overloaded` (429/503).

        Every successful ``acquire`` is paired with one :meth:`release` (a stream's generator releases
        when it ends, however it ends).
        """
        if n > self.capacity:
            raise RequestError(f"the request needs {n} concurrent streams; this service runs at most "
                               f"{self.capacity}", "prompt")
        async with self.freed:
            if self.running + n > self.capacity:
                if self.waiting >= self.max_queued:
                    raise Overloaded(f"server busy: {self.running} streams running and {self.waiting} requests "
                                     f"queued (the limit); retry later", 429)
                self.waiting += 1
                try:
                    await asyncio.wait_for(self.freed.wait_for(lambda: self.running + n <= self.capacity),
                                           self.timeout_s)
                except asyncio.TimeoutError:
                    raise Overloaded(f"server busy: no stream came free within {self.timeout_s:g} s; retry later",
                                     503) from None
                finally:
                    self.waiting -= 1
            self.running += n

    async def release(self, n: int = 1) -> None:
        async with self.freed:
            self.running -= n
            self.freed.notify_all()
