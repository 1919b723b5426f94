"""The operations endpoints alone (``/metrics``, ``/healthz``, ``/readyz``), for a worker-only node."""

from __future__ import annotations

from collections.abc import Callable

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from ..operations.metrics import CONTENT_TYPE, Metrics
from .asgi import TEXT, respond, serve_lifespan


class OpsApi:
    """The operations endpoints alone (``/metrics``, ``/healthz``, ``/readyz``), for a worker node."""

    def __init__(self, ready: Callable[[], bool], metrics: Metrics):
        self.ready = ready
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = [("cache-control", "no-store")]
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            await respond(send, 405, b"method not allowed\n", TEXT, [*headers, ("allow", "GET, HEAD")])
        elif path == "/metrics":
            body = await trio.to_thread.run_sync(self.metrics.render)  # off the event loop
            await respond(send, 200, body, CONTENT_TYPE, headers)
        elif path == "/healthz":
            await respond(send, 200, b"ok\n", TEXT, headers)
        elif path == "/readyz":
            ready = self.ready()
            await respond(send, 200 if ready else 503, b"ready\n" if ready else b"not ready\n", TEXT, headers)
        else:
            await respond(send, 404, b"not found\n", TEXT, headers)
