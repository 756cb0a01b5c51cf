"""An emulated radio link on loopback: a TCP proxy that adds one-way delay and a rate limit per direction.

Every chunk read from one side departs when the link is free and takes ``bits / rate`` to serialise
(with ``packet_overhead_bytes`` per ``mss``-byte segment, as IP/TCP headers would on a 1500-byte
MTU link), then arrives ``delay_s`` later; chunks keep their order. That is a FIFO link with a
bottleneck rate and a propagation delay, the model the env's link cost is checked against.

:class:`LinkEmulator` runs the proxy in its own process (so a client pinned to one core does not share
it), listens on 127.0.0.1 on a free port, counts the TCP payload bytes in each direction, and can record
the uplink bytes to a file (to check what the edge could have seen).
"""
from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class LinkSpec(BaseModel):
    """One emulated link (the same in both directions unless ``down_rate_bps`` is set)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=False)

    delay_s: float = Field(default=0.0, ge=0.0, le=10.0)
    """One-way propagation delay (each direction), seconds."""
    rate_bps: float = Field(default=1e9, gt=0.0)
    """Uplink bottleneck rate, bit/s."""
    down_rate_bps: float | None = Field(default=None, gt=0.0)
    """Downlink rate, bit/s; None: the uplink's."""
    packet_overhead_bytes: int = Field(default=40, ge=0, le=1000)
    """Header bytes per segment that cost air time but carry no payload (IPv4 + TCP: 40)."""
    mss: int = Field(default=1460, ge=64, le=65535)
    """Payload bytes per segment (a 1500-byte MTU)."""


@dataclass
class LinkCounters:
    bytes_up: int = 0  # TCP payload bytes client -> server
    bytes_down: int = 0
    segments_up: int = 0
    segments_down: int = 0
    connections: int = 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: LinkSpec, rate: float,
                counters: LinkCounters, up: bool, record) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    free_at = 0.0

    async def deliver() -> None:
        while True:
            item = await queue.get()
            if item is None:
                break
            arrive, data = item
            wait = arrive - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(65536):
            segments = math.ceil(len(data) / spec.mss)
            start = max(loop.time(), free_at)
            free_at = start + 8 * (len(data) + segments * spec.packet_overhead_bytes) / rate
            queue.put_nowait((free_at + spec.delay_s, data))
            if up:
                counters.bytes_up += len(data)
                counters.segments_up += segments
                if record is not None:
                    record.write(data)
            else:
                counters.bytes_down += len(data)
                counters.segments_down += segments
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        queue.put_nowait(None)
        try:
            await task
        except (ConnectionResetError, BrokenPipeError):
            pass


async def _serve(spec: LinkSpec, target: tuple[str, int], conn, record_path: str | None) -> None:
    counters = LinkCounters()
    record = open(record_path, "ab", buffering=0) if record_path else None

    async def handle(client_r, client_w):
        counters.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        down_rate = spec.down_rate_bps or spec.rate_bps
        await asyncio.gather(_pipe(client_r, server_w, spec, spec.rate_bps, counters, True, record),
                             _pipe(server_r, client_w, spec, down_rate, counters, False, None))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    conn.send(server.sockets[0].getsockname()[1])
    loop = asyncio.get_running_loop()
    while True:  # commands from the parent: "stats", "reset", "stop"
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stats":
            conn.send(asdict(counters))
        elif command == "reset":
            counters.__init__()
            conn.send(True)
        else:
            break
    server.close()
    if record is not None:
        record.close()
    conn.send(True)


def _main(spec_json: str, target: tuple[str, int], conn, record_path: str | None, cpus: list[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    asyncio.run(_serve(LinkSpec.model_validate_json(spec_json), target, conn, record_path))


class LinkEmulator:
    """A proxy process in front of ``target``: ``with LinkEmulator(spec, (host, port)) as link: link.url``."""

    def __init__(self, spec: LinkSpec, target: tuple[str, int], record_path: str | Path | None = None,
                 cpus: list[int] | None = None):
        self.spec, self.target = spec, target
        self.record_path = str(record_path) if record_path else None
        self.cpus = cpus
        self.port: int | None = None

    def start(self) -> "LinkEmulator":
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_main, args=(self.spec.model_dump_json(), self.target, child,
                                                       self.record_path, self.cpus), daemon=True)
        self.process.start()
        if not self.conn.poll(60):
            self.process.kill()
            raise RuntimeError("the link emulator did not start within 60 s")
        self.port = self.conn.recv()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> LinkCounters:
        self.conn.send("stats")
        return LinkCounters(**self.conn.recv())

    def reset(self) -> None:
        self.conn.send("reset")
        self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.send("stop")
            self.conn.poll(5)
        finally:
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()

    def __enter__(self) -> "LinkEmulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

