"""A worker-only node (``--role worker``): no client port, only the fleet's workers and recovery."""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from ...http.asgi import TEXT, respond, serve_lifespan
from ...operations.metrics import CONTENT_TYPE, Metrics
from .gateway import BrokerScheduler

log = logging.getLogger("indextts_server")


class WorkerNode:
    """What the CLI serves for ``--role worker``: its workers, until a drain has stopped them."""

    def __init__(self, scheduler: BrokerScheduler, *, drain_timeout: float, task_timeout: float):
        self.scheduler = scheduler
        self.drain_timeout = drain_timeout
        self.task_timeout = task_timeout
        self.draining = False
        self.stopped = trio.Event()

    @property
    def ready(self) -> bool:
        return self.scheduler.ready

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.scheduler.run)
            names = ", ".join(worker.name for worker in self.scheduler.workers)
            url, engine = self.scheduler.store.url, self.scheduler.engine_name
            log.info("worker ready on %s: %s (engine %s)", url, names, engine)
            task_status.started()

    async def drain(self) -> None:
        """Take nothing new; the running tasks finish within the drain timeout, else are handed back."""
        if self.draining:
            return
        self.draining = True
        await self.scheduler.drain(self.drain_timeout)
        for worker in self.scheduler.workers:
            while worker.running:
                await worker.changed.wait()
        self.stopped.set()


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
