"""Per-connection containment: what one connection's tasks raise never reaches the others or the server."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import trio
from trio_websocket import WebSocketConnection, WebSocketRequest, WebSocketServer
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, Ping, TextMessage

log = logging.getLogger("indextts_server")

TRACEBACK_EVERY: Final = 60.0
"""Seconds between two tracebacks of the same exception type (one line each in between)."""
_RESET: Final = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a zero timeout: closing the socket sends RST and drops its buffers."""


class ErrorCounter(Protocol):
    def unexpected_error(self) -> None: ...


class Containment:
    """Runs each connection's work and swallows what escapes it, after one log line.

    Cancellation (the connection's or the server's) passes through untouched; any other exception,
    bare or in a group, from any task of the connection, is logged with the connection's label and
    the exception's type, counted, and stops there: the connection is gone (its nursery was
    cancelled when the exception left it, which closed its stream), the server carries on. At most
    one traceback per exception type per ``TRACEBACK_EVERY`` seconds.
    """

    def __init__(self, what: str, metrics: ErrorCounter | None = None):
        self.what = what
        self.metrics = metrics
        self.caught = 0
        self._last_traceback: dict[str, float] = {}

    async def run(self, label: str, work: Callable[[], Awaitable[object]]) -> None:
        try:
            await work()
        except* Exception as group:
            self.caught += 1
            if self.metrics is not None:
                self.metrics.unexpected_error()
            self._report(label, group)

    def _report(self, label: str, group: BaseExceptionGroup[Exception]) -> None:
        leaves = list(_leaves(group))
        kinds = sorted({_kind(error) for error in leaves})
        now = trio.current_time()
        fresh = [k for k in kinds if now - self._last_traceback.get(k, -math.inf) >= TRACEBACK_EVERY]
        for kind in fresh:
            self._last_traceback[kind] = now
        error = leaves[0] if len(leaves) == 1 else group
        log.error(
            "unexpected error on %s %s: %s; connection closed",
            self.what,
            label,
            ", ".join(kinds),
            exc_info=error if fresh else None,
        )


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _kind(error: BaseException) -> str:
    kind = type(error)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


class Cutoff:
    """The end of a connection the server gives up on: a TCP reset, now or at a deadline.

    A reset is what nginx's ``reset_timedout_connection`` does: ``SO_LINGER`` (1, 0), then close.
    The kernel sends RST and frees the socket's buffers at once, instead of keeping them (in
    FIN_WAIT1) for a peer that never reads, and nothing the peer keeps sending (pings) holds the
    connection open. Every task blocked on the socket wakes with `trio.ClosedResourceError`, and
    ``scope`` (the connection's) is cancelled for the rest.

    ``now`` resets at once; ``at`` at a deadline (the earliest asked for), which ``run`` keeps.
    A socket already closed is left alone.
    """

    def __init__(self, stream: trio.abc.Stream, scope: trio.CancelScope | None = None):
        self._socket: trio.socket.SocketType | None = getattr(stream, "socket", None)
        self.scope = scope
        self.deadline = math.inf
        self.done = False
        self._moved = trio.Event()

    def at(self, deadline: float) -> None:
        if deadline < self.deadline:
            self.deadline = deadline
            self._moved.set()

    def now(self) -> None:
        if self.done:
            return
        self.done = True
        if self._socket is not None and self._socket.fileno() != -1:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self._socket.close()
        if self.scope is not None:
            self.scope.cancel()

    async def run(self) -> None:
        """Reset the connection when its deadline comes (until cancelled with it)."""
        while not self.done:
            self._moved = trio.Event()
            with trio.move_on_at(self.deadline) as waiting:
                await self._moved.wait()
            if waiting.cancelled_caught:
                self.now()


class ClosingSafeConnection(WebSocketConnection):
    """trio-websocket's connection, minus its crashes during a server-initiated close.

    The seam for trio-websocket issue #184 (fix proposed in its PR #198, unmerged as of 0.12.2):
    its reader task answers every Ping with a Pong, but once a Close has been sent wsproto is in
    ``LOCAL_CLOSING`` and refuses to send one, so ``LocalProtocolError`` escaped the reader task and
    took the whole server down. RFC 6455 (5.5.1) lets an endpoint that has sent Close ignore what
    follows, so a Ping is answered only while the connection is open. The same holds for the Close
    (1009) it sends when a message is too large: after our own Close it is discarded instead. Drop
    this class once a trio-websocket release carries the fix.
    """

    async def _handle_ping_event(self, event: Ping) -> None:
        if self._wsproto.state == ConnectionState.OPEN:
            await super()._handle_ping_event(event)

    async def _handle_message_event(self, event: BytesMessage | TextMessage) -> None:
        if self._wsproto.state == ConnectionState.OPEN:
            await super()._handle_message_event(event)


Handler = Callable[[WebSocketRequest, str, Cutoff], Awaitable[None]]


class ContainedWebSocketServer(WebSocketServer):
    """trio-websocket's server with each connection (its reader task included) run under a
    `Containment`, on a `ClosingSafeConnection`. ``handler`` gets the request, the session id the
    connection is logged under, and the connection's `Cutoff`.

    Once the handler is done, what is left of the closing handshake (the peer's Close, after which
    trio-websocket closes the TCP connection) gets ``disconnect_timeout`` seconds. A connection
    trio-websocket has not closed by the time its task ends (the peer vanished, the handler failed
    or gave up on it, the server stopped) is reset, never left half-closed with data queued.
    """

    def __init__(
        self,
        handler: Handler,
        listeners: Sequence[trio.SocketListener],
        containment: Containment,
        *,
        handler_nursery: trio.Nursery,
        max_message_size: int,
        disconnect_timeout: float,
    ):
        super().__init__(
            _unused,
            listeners,
            handler_nursery=handler_nursery,
            max_message_size=max_message_size,
            disconnect_timeout=disconnect_timeout,
        )
        self._contained_handler = handler
        self._containment = containment

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        session_id = str(uuid.uuid4())
        await self._containment.run(session_id, lambda: self._connection(stream, session_id))

    async def _connection(self, stream: trio.abc.Stream, session_id: str) -> None:
        connection = ClosingSafeConnection(
            stream,
            WSConnection(ConnectionType.SERVER),
            message_queue_size=self._message_queue_size,
            max_message_size=self._max_message_size,
            receive_buffer_size=self._receive_buffer_size,
        )
        cutoff = Cutoff(stream)
        read = trio.Event()

        async def reader() -> None:
            try:
                await connection._reader_task()
            finally:
                read.set()

        try:
            async with trio.open_nursery() as nursery:
                cutoff.scope = nursery.cancel_scope
                nursery.start_soon(cutoff.run)
                nursery.start_soon(reader)
                request = None
                with trio.move_on_after(self._connect_timeout):
                    request = await connection._get_request()
                if request is not None:
                    await self._contained_handler(request, session_id, cutoff)
                    cutoff.at(trio.current_time() + self._disconnect_timeout)
                    await read.wait()
                nursery.cancel_scope.cancel()
        finally:
            cutoff.now()


async def _unused(request: WebSocketRequest) -> None:  # pragma: no cover - never called
    raise AssertionError("ContainedWebSocketServer calls its own handler")
