"""API keys for the device path's routes: ``Authorization: Bearer <key>``, compared in constant time.

A refusal is a 401 in OpenAI's error shape (``type: invalid_request_error``, ``code: invalid_api_key``).
The text endpoint's key option (issue 18) and this check should become one function once both land.
"""
from __future__ import annotations

import hmac
from collections.abc import Sequence

from splitlab.serve.protocol import RequestError


class KeyError401(RequestError):
    """A missing or wrong API key."""

    def __init__(self, message: str):
        super().__init__(message, None, status=401)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": "invalid_request_error", "param": None,
                          "code": "invalid_api_key"}}


def check_api_key(authorization: str | None, keys: Sequence[str]) -> None:
    """Accept when ``keys`` is empty or the header's bearer token equals one of them; else raise a 401.

    Every configured key is compared (``hmac.compare_digest``), so the time taken tells nothing about
    which key, or how much of one, matched.
    """
    if not keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise KeyError401("missing API key: send 'Authorization: Bearer <key>'")
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not matched:
        raise KeyError401("incorrect API key provided")
