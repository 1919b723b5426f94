"""A worker-only node (``--role worker``): no client port, only the fleet's workers and recovery."""

from __future__ import annotations

import logging

import trio

from ..scheduling.broker.gateway import BrokerScheduler

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
