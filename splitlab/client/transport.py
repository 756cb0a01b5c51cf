"""How a device talks to the edge: one stream per generation, one activation frame up, one token frame down.

:class:`WebSocketTransport` keeps one connection per stream (``/v1/activations/ws``);
:class:`HttpTransport` sends each frame as one ``POST /v1/activations`` on a kept-alive connection.
Both count the application bytes they move (frames and replies; TCP/IP and WebSocket framing are
measured by :mod:`splitlab.client.link_emulator`). A refusal raises :class:`EdgeRefused` with the
edge's status and message.
"""
from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import requests


class EdgeRefused(RuntimeError):
    """The edge refused a stream or a frame; ``status`` is the HTTP status (WebSocket: close code - 4000)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"edge refused ({status}): {message}")
        self.status, self.message = status, message


@dataclass
class WireCount:
    """Application bytes of one stream."""

    bytes_up: int = 0
    bytes_down: int = 0
    frames: int = 0


class Stream(Protocol):
    count: WireCount

    def exchange(self, frame: bytes) -> bytes: ...

    def close(self) -> None: ...


class Transport(Protocol):
    def open(self, settings: dict) -> Stream: ...


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _message(text: str) -> str:
    try:
        return json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return text[:300]


class _WebSocketStream:
    def __init__(self, url: str, settings: dict, api_key: str | None, timeout_s: float, max_reply_bytes: int):
        from websockets.sync.client import connect

        parts = urlsplit(url)
        sock = socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small frame per token: no Nagle wait
        ws_url = f"ws://{parts.hostname}:{parts.port or 80}{parts.path.rstrip('/')}/v1/activations/ws"
        # No compression: the bytes counted must be the bytes a radio would carry for this payload format.
        self.ws = connect(ws_url, sock=sock, compression=None, proxy=None, additional_headers=_auth(api_key),
                          open_timeout=timeout_s, max_size=max_reply_bytes, ping_interval=None, legacy=True)
        self.timeout_s = timeout_s
        self.count = WireCount()
        text = json.dumps(settings)
        self.ws.send(text)
        self.count.bytes_up += len(text)

    def exchange(self, frame: bytes) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            self.ws.send(frame)
            reply = self.ws.recv(timeout=self.timeout_s)
        except ConnectionClosed as err:
            raise EdgeRefused(self._status(err.rcvd), err.rcvd.reason if err.rcvd else "connection closed") from None
        if isinstance(reply, str):  # an error body; the close frame follows with 4000 + status
            status = 400
            try:
                self.ws.recv(timeout=self.timeout_s)
            except ConnectionClosed as err:
                status = self._status(err.rcvd)
            raise EdgeRefused(status, _message(reply))
        self.count.bytes_up += len(frame)
        self.count.bytes_down += len(reply)
        self.count.frames += 1
        return reply

    @staticmethod
    def _status(close) -> int:
        return close.code - 4000 if close is not None and 4000 <= close.code < 5000 else 503

    def close(self) -> None:
        self.ws.close()


class WebSocketTransport:
    """One WebSocket per stream; frames and replies as binary messages."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_reply_bytes: int = 64 * 1024 * 1024):
        self.url, self.api_key, self.timeout_s, self.max_reply_bytes = url, api_key, timeout_s, max_reply_bytes

    def open(self, settings: dict) -> _WebSocketStream:
        return _WebSocketStream(self.url, settings, self.api_key, self.timeout_s, self.max_reply_bytes)


class _HttpStream:
    def __init__(self, session: requests.Session, url: str, settings: dict, api_key: str | None, timeout_s: float):
        self.session, self.url, self.timeout_s = session, url.rstrip("/"), timeout_s
        self.stream_id = secrets.token_hex(16)
        self.headers = {**_auth(api_key), "X-Splitlab-Stream": self.stream_id,
                        "Content-Type": "application/octet-stream"}
        self.params = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in settings.items()}
        self.count = WireCount()

    def exchange(self, frame: bytes) -> bytes:
        r = self.session.post(f"{self.url}/v1/activations", data=frame, params=self.params, headers=self.headers,
                              timeout=self.timeout_s)
        if r.status_code != 200:
            raise EdgeRefused(r.status_code, _message(r.text))
        self.count.bytes_up += len(frame)
        self.count.bytes_down += len(r.content)
        self.count.frames += 1
        return r.content

    def close(self) -> None:
        try:
            self.session.delete(f"{self.url}/v1/activations/{self.stream_id}", headers=self.headers,
                                timeout=self.timeout_s)
        except requests.RequestException:
            pass  # the edge frees an idle cache at its TTL


class HttpTransport:
    """One ``POST`` per frame on a kept-alive connection; the stream is named by a random id."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0):
        self.url, self.api_key, self.timeout_s = url, api_key, timeout_s
        self.session = requests.Session()
        self.session.trust_env = False  # loopback and emulated links: never through a configured proxy

    def open(self, settings: dict) -> _HttpStream:
        return _HttpStream(self.session, self.url, settings, self.api_key, self.timeout_s)


def make_transport(kind: str, url: str, api_key: str | None = None, timeout_s: float = 60.0) -> Transport:
    """``ws`` or ``http``."""
    if kind == "ws":
        return WebSocketTransport(url, api_key, timeout_s)
    if kind == "http":
        return HttpTransport(url, api_key, timeout_s)
    raise ValueError(f"transport must be 'ws' or 'http', got {kind!r}")
