"""The load itself: closed-loop connections sending requests, plus idle ones held open meanwhile."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
    open_websocket_url,
)

from ..results.record import PcmFormat, Record
from .progress import Progress

CLIENT_MAX_MESSAGE: Final = 256 << 20
CONNECT_TIMEOUT: Final = 30.0
DISCONNECT_TIMEOUT: Final = 5.0
HANDSHAKES_AT_ONCE: Final = 64
"""Idle connections being opened at the same time; keeps the listen backlog from overflowing."""


class _Reply(msgspec.Struct):
    """The fields of a server message that the client acts on; the rest are ignored."""

    type: str | None = None
    status: str | None = None
    message: str | None = None
    sample_rate: int | None = None


_decode_reply: Final = msgspec.json.Decoder(_Reply).decode


@dataclass(frozen=True, slots=True)
class LoadPlan:
    url: str
    frames: Sequence[str]
    connections: int
    requests: int
    idle: int = 0
    duration_limit: float = 600.0
    warmup: int = 0


@dataclass(slots=True)
class LoadResult:
    plan: LoadPlan
    records: list[Record] = field(default_factory=list)
    elapsed: float = 0.0
    timed_out: bool = False
    idle_opened: int = 0
    idle_dropped: int = 0
    connection_errors: list[str] = field(default_factory=list)

    @property
    def not_sent(self) -> int:
        return self.plan.requests - len(self.records)


async def run_load(plan: LoadPlan, progress: Progress | None = None) -> LoadResult:
    """Warm up, open the idle connections, then run ``plan.requests`` on the clock."""
    return await _Run(plan, progress).run()


async def drive_connections(
    plan: LoadPlan,
    result: LoadResult,
    progress: Progress | None,
    connection: Callable[[int], Awaitable[None]],
) -> None:
    """Run ``plan.connections`` connections to the end, or until ``plan.duration_limit`` has passed."""
    async with trio.open_nursery() as nursery:
        if progress is not None:
            nursery.start_soon(progress.run)
        with trio.move_on_after(plan.duration_limit) as deadline:
            async with trio.open_nursery() as active:
                for index in range(plan.connections):
                    active.start_soon(connection, index)
        result.timed_out = deadline.cancelled_caught
        nursery.cancel_scope.cancel()
    if progress is not None:
        progress.close()


class _Run:
    def __init__(self, plan: LoadPlan, progress: Progress | None):
        self.plan = plan
        self.progress = progress
        self.result = LoadResult(plan)
        self.taken = 0
        self.t0 = time.perf_counter()

    def clock(self) -> float:
        return time.perf_counter() - self.t0

    async def run(self) -> LoadResult:
        if self.plan.warmup:
            await self._warm_up()
        async with trio.open_nursery() as held:
            idle = await self._open_idle(held)
            self.result.idle_opened = len(idle)
            self.t0 = time.perf_counter()
            await drive_connections(self.plan, self.result, self.progress, self._connection)
            self.result.elapsed = self.clock()
            self.result.idle_dropped = sum(ws.closed is not None for ws in idle)
            async with trio.open_nursery() as closing:
                for ws in idle:
                    closing.start_soon(_close, ws)
        return self.result

    def _take(self) -> str | None:
        if self.taken >= self.plan.requests:
            return None
        frame = self.plan.frames[self.taken % len(self.plan.frames)]
        self.taken += 1
        return frame

    async def _connection(self, index: int) -> None:
        connected = False
        try:
            async with _open(self.plan.url) as ws:
                connected = True
                try:
                    await ws.get_message()  # the welcome
                    while (frame := self._take()) is not None:
                        record = Record(connection=index, sent=self.clock())
                        self.result.records.append(record)
                        await ws.send_message(frame)
                        await self._exchange(ws, record)
                        if self.progress is not None:
                            self.progress.advance(record.completed)
                except ConnectionClosed as closed:
                    # The request in flight, if any, stays without an end: a lost reply.
                    self.result.connection_errors.append(f"closed by the server: {closed.reason}")
        except (HandshakeError, OSError) as exc:
            stage = "close" if connected else "connect"
            self.result.connection_errors.append(f"{stage}: {exc!r}")

    async def _exchange(self, ws: WebSocketConnection, record: Record) -> None:
        """Read the replies to one request until its ``end`` or its error."""
        while True:
            message = await ws.get_message()
            now = self.clock()
            if isinstance(message, bytes):
                record.audio(now, message)
                continue
            try:
                reply = _decode_reply(message)
            except msgspec.MsgspecError:
                record.error, record.end = f"unreadable reply: {message[:80]!r}", now
                return
            if reply.status == "error":
                record.error, record.end = reply.message or "error", now
                return
            if reply.type == "queued":
                record.queued = now
            elif reply.type == "start":
                record.start = now
                if reply.sample_rate:
                    record.fmt = PcmFormat(sample_rate=reply.sample_rate)
            elif reply.type == "end":
                record.end = now
                return

    async def _warm_up(self) -> None:
        """A few requests before the clock starts, so first-call costs do not count."""
        with trio.move_on_after(self.plan.duration_limit):
            try:
                async with _open(self.plan.url) as ws:
                    await ws.get_message()
                    for index in range(self.plan.warmup):
                        await ws.send_message(self.plan.frames[index % len(self.plan.frames)])
                        await self._exchange(ws, Record(connection=-1, sent=self.clock()))
            except (HandshakeError, OSError, ConnectionClosed) as exc:
                self.result.connection_errors.append(f"warm-up: {exc!r}")

    async def _open_idle(self, held: trio.Nursery) -> list[WebSocketConnection]:
        """Open ``plan.idle`` connections whose reader tasks live in ``held``; read each welcome."""
        opened: list[WebSocketConnection] = []
        limiter = trio.CapacityLimiter(HANDSHAKES_AT_ONCE)

        async def open_one() -> None:
            async with limiter:
                try:
                    with trio.fail_after(CONNECT_TIMEOUT):
                        ws = await connect_websocket_url(held, self.plan.url, receive_buffer_size=None)
                        await ws.get_message()
                except (HandshakeError, OSError, ConnectionClosed, trio.TooSlowError) as exc:
                    self.result.connection_errors.append(f"idle connect: {exc!r}")
                    return
            opened.append(ws)

        async with trio.open_nursery() as opening:
            for _ in range(self.plan.idle):
                opening.start_soon(open_one)
        return opened


def _open(url: str) -> AbstractAsyncContextManager[WebSocketConnection]:
    """A load connection: big messages allowed, bounded handshake and close."""
    return open_websocket_url(
        url,
        max_message_size=CLIENT_MAX_MESSAGE,
        receive_buffer_size=None,
        connect_timeout=CONNECT_TIMEOUT,
        disconnect_timeout=DISCONNECT_TIMEOUT,
    )


async def _close(ws: WebSocketConnection) -> None:
    with trio.move_on_after(DISCONNECT_TIMEOUT):
        await ws.aclose()
