"""The HTTP port: hypercorn's Trio worker serving the ASGI application, with a graceful stop."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

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
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` (0: any free port) until cancelled, or until ``shutdown``
    returns: then the listener closes at once and requests in flight get ``graceful_timeout``
    seconds. ``task_status.started`` gets the bound URLs (``http://host:port``).
    """
    config = hypercorn_config(host, port, graceful_timeout=graceful_timeout)
    await serve(app, config, shutdown_trigger=shutdown, task_status=task_status, mode="asgi")


def bound_port(urls: list[str]) -> int:
    return int(urls[0].rsplit(":", 1)[1])
