"""A small HTTP/1.1 server (h11 on Trio) for operations: metrics, liveness and readiness."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial

import h11
import trio

from ..operations.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger("indextts_server")

Response = tuple[int, str, bytes]
"""Status code, content type, body."""

Route = Callable[[], Response]
Routes = Mapping[str, Route]

TEXT = "text/plain; charset=utf-8"
MAX_REQUEST_BYTES = 8192
CONNECTION_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
_RECEIVE_SIZE = 4096


async def serve_http(
    host: str | None,
    port: int,
    routes: Routes,
    *,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    connection_timeout: float = CONNECTION_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve GET and HEAD for ``routes`` on ``host``:``port`` until cancelled.

    One request per connection (the response says ``Connection: close``). A request head
    larger than ``max_request_bytes`` or a connection open longer than ``connection_timeout``
    is cut off, and beyond ``max_connections`` at once new connections are closed unanswered,
    so no client can hold the server. ``task_status.started`` gets the bound ports (port 0
    picks a free one).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    ports = [listener.socket.getsockname()[1] for listener in listeners]
    limiter = trio.CapacityLimiter(max_connections)
    handler = partial(
        _serve_connection,
        routes=routes,
        limiter=limiter,
        max_request_bytes=max_request_bytes,
        connection_timeout=connection_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(ports)


async def _serve_connection(
    stream: trio.SocketStream,
    *,
    routes: Routes,
    limiter: trio.CapacityLimiter,
    max_request_bytes: int,
    connection_timeout: float,
) -> None:
    try:
        limiter.acquire_nowait()
    except trio.WouldBlock:
        await stream.aclose()
        return
    try:
        with trio.move_on_after(connection_timeout):
            await _exchange(stream, routes, max_request_bytes)
            await _linger(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    except Exception:
        # An exception here would end serve_listeners and the whole server with it.
        log.exception("HTTP connection failed")
    finally:
        limiter.release()
        await stream.aclose()


async def _exchange(stream: trio.SocketStream, routes: Routes, max_request_bytes: int) -> None:
    """Read one request and write one response."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_request_bytes)
    try:
        event = await _next_event(stream, conn)
    except h11.RemoteProtocolError as error:
        log.debug("bad HTTP request: %s", error)
        status = error.error_status_hint
        await _send(stream, conn, (status, TEXT, _reason(status)), head=False)
        return
    if isinstance(event, h11.Request):
        await _send(stream, conn, respond(event.method, event.target, routes), head=event.method == b"HEAD")


def respond(method: bytes, target: bytes, routes: Routes) -> Response:
    """The response to ``method target``: the route's, or 404, 405 or 500."""
    path = target.split(b"?", 1)[0].decode("ascii", "replace")
    route = routes.get(path)
    if route is None:
        return 404, TEXT, b"not found\n"
    if method not in (b"GET", b"HEAD"):
        return 405, TEXT, b"method not allowed\n"
    try:
        return route()
    except Exception:
        log.exception("HTTP route %s failed", path)
        return 500, TEXT, b"internal server error\n"


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))


async def _send(stream: trio.SocketStream, conn: h11.Connection, response: Response, *, head: bool) -> None:
    status, content_type, body = response
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
    ]
    if status == 405:
        headers.append(("Allow", "GET, HEAD"))
    data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    if not head:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client still sends until it closes too.

    Closing a socket with unread input makes the kernel reset the connection, which can destroy
    the response before the client reads it.
    """
    try:
        await stream.send_eof()
        with trio.move_on_after(1):
            while await stream.receive_some(_RECEIVE_SIZE):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _reason(status: int) -> bytes:
    reasons = {400: b"bad request\n", 413: b"request too large\n", 431: b"request header too large\n"}
    return reasons.get(status, b"bad request\n")


def ops_routes(metrics: Metrics, ready: Callable[[], bool]) -> dict[str, Route]:
    """``/metrics`` (Prometheus text), ``/healthz`` (alive) and ``/readyz`` (``ready()``: 200 or 503)."""

    def readyz() -> Response:
        if ready():
            return 200, TEXT, b"ready\n"
        return 503, TEXT, b"not ready\n"

    return {
        "/metrics": lambda: (200, CONTENT_TYPE, metrics.render()),
        "/healthz": lambda: (200, TEXT, b"ok\n"),
        "/readyz": readyz,
    }
