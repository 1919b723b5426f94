"""The HTTP port: hypercorn's Trio worker serving the ASGI application, with a graceful stop."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Final

import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.typing import ASGIFramework

from .containment import Containment, Cutoff, ErrorCounter

log = logging.getLogger("indextts_server")

KEEP_ALIVE_TIMEOUT: Final = 30.0
"""Seconds an idle keep-alive connection is held open (the openai SDK reuses its connections)."""
MAX_HEAD_BYTES: Final = 16 * 1024
"""Largest request head (line and headers); bigger ones get 431 from hypercorn."""


class CutResponse(Exception):
    """Raised by the application to cut a response short (the client must see it incomplete).

    hypercorn then drops the connection; its log line for this one is left out, since whoever
    raised it has already said why.
    """


class _NoCutTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], CutResponse))


_ERROR_LOG: Final = logging.getLogger("indextts_server.http")
_ERROR_LOG.addFilter(_NoCutTracebacks())


_CONTAINMENT: Final = ContextVar[Containment | None]("http_containment", default=None)
"""The containment of the `serve_http` call a connection belongs to (tasks inherit it)."""
_CUTOFF: Final = ContextVar[Cutoff | None]("http_cutoff", default=None)
"""The `Cutoff` of the connection a request came on (hypercorn starts its requests from the
connection's task, so they inherit it)."""


def connection_cutoff() -> Cutoff | None:
    """How to cut the HTTP connection the calling request came on (``None`` outside `serve_http`)."""
    return _CUTOFF.get()


class _ContainedTCPServer(TCPServer):
    """hypercorn's per-connection task, run under the containment of its `serve_http` call, with
    a `Cutoff` its requests can reach (`connection_cutoff`).

    hypercorn catches what the application raises (500, or a cut response), but not what its
    own connection handling raises: that would leave ``trio.serve_listeners`` and stop the port
    with everything else in the process. hypercorn's Trio worker looks ``TCPServer`` up in its
    module when a connection arrives, which is the seam used here (see `serve_http`).

    hypercorn writes shielded from cancellation and closes a connection with a FIN queued behind
    what it could not send, so a client that stops reading would hold the socket and its buffers.
    A connection the server has given up on (its cutoff has a deadline) is therefore reset when
    the deadline comes or when hypercorn closes it, whichever is first.
    """

    _cutoff: Cutoff | None = None

    async def run(self) -> None:
        containment = _CONTAINMENT.get()
        if containment is None:
            await self._serve()
            return
        await containment.run(f"remote={_peer(self.stream)}", self._serve)

    async def _serve(self) -> None:
        async with trio.open_nursery() as nursery:
            self._cutoff = Cutoff(self.stream, nursery.cancel_scope)
            _CUTOFF.set(self._cutoff)
            nursery.start_soon(self._cutoff.run)
            await super().run()
            nursery.cancel_scope.cancel()

    async def _close(self) -> None:
        if self._cutoff is not None and self._cutoff.deadline < math.inf:
            self._cutoff.now()
        await super()._close()


def _peer(stream: trio.abc.Stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return "?"
    return f"{host}:{port}"


setattr(hypercorn.trio.run, "TCPServer", _ContainedTCPServer)  # noqa: B010 - not exported


def hypercorn_config(host: str, port: int, *, graceful_timeout: float) -> Config:
    config = Config()
    bracketed = f"[{host}]" if ":" in host else host
    config.bind = [f"{bracketed}:{port}"]
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.h11_max_incomplete_size = MAX_HEAD_BYTES
    config.graceful_timeout = graceful_timeout
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = _ERROR_LOG
    return config


async def serve_http(
    app: ASGIFramework,
    host: str,
    port: int,
    *,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 5.0,
    errors: ErrorCounter | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (0: any free port) until cancelled, or until ``shutdown``
    returns: then the listener closes at once and requests in flight get ``graceful_timeout``
    seconds. ``task_status.started`` gets the bound URLs (``http://host:port``).

    What one connection's handling raises ends that connection only (logged, counted in
    ``errors``), as on the WebSocket port.
    """
    config = hypercorn_config(host, port, graceful_timeout=graceful_timeout)
    _CONTAINMENT.set(Containment("http connection", errors))
    await serve(app, config, shutdown_trigger=shutdown, task_status=task_status, mode="asgi")


def bound_port(urls: list[str]) -> int:
    return int(urls[0].rsplit(":", 1)[1])
