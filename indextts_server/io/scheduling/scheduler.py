"""The scheduling port: admit, cancel, look up and drain tasks; the in-memory board implements it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

import trio

from ...core import texts
from ...core.contract import replies
from ...core.contract.protocol import Cue
from ...core.engine import Capabilities, Engine, SynthesisJob, common_capabilities
from ...core.tasks import Delivery
from .board import TaskBoard, TaskObserver
from .recipient import Recipient
from .worker import InferenceWorker

log = logging.getLogger("indextts_server")

STOP_GRACE: Final = 5.0
"""Seconds a running task asked to stop by the drain has to reach a segment boundary."""


class Scheduler(Protocol):
    """Where a transport hands its tasks: admission, status, cancel, disconnects and the drain.

    Every method answers the session itself (``queued``, ``task_status``, ``cancel`` replies and
    their errors); the task's later replies (``start``, audio, ``end``/error) reach the session
    from wherever the task runs. ``submit`` returns a refusal (the text of the error the client
    gets) instead of queueing when the task cannot be accepted.
    """

    engine_name: str
    capabilities: Capabilities | None
    """What the engines behind it can do (every one of them); None while not known (a gateway
    that has seen no worker yet). The service refuses a job outside it before submitting it."""

    @property
    def queue_depth(self) -> int:
        """Tasks waiting to run (fleet-wide where there is a fleet)."""
        ...

    @property
    def busy(self) -> int:
        """Tasks this process is running or relaying."""
        ...

    @property
    def ready(self) -> bool: ...

    def status_line(self) -> str: ...

    def alive(self, stall_limit: float) -> bool:
        """For the watchdog: the inference tasks run, and a busy one made progress lately."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...

    async def submit(self, session: Recipient, job: SynthesisJob, delivery: Delivery) -> str | None: ...

    async def status(self, task_id: str, session: Recipient) -> None: ...

    async def cancel(self, task_id: str, session: Recipient) -> None: ...

    async def cues(self, task_id: str) -> list[Cue] | None:
        """The task's cues so far (one per segment made), or ``None`` for an unknown task."""
        ...

    async def session_closed(self, session: Recipient) -> None:
        """The session is gone: cancel its waiting tasks, stop its running ones at the next segment."""
        ...

    async def drain(self, grace: float) -> None:
        """Refuse new tasks, cancel the waiting ones, give the running ones ``grace`` seconds,
        then stop them; returns once none of this process's tasks is left."""
        ...


class EmbeddedScheduler:
    """The default: one process, the in-memory FIFO (`TaskBoard`) and its inference tasks.

    Each engine has its `InferenceWorker`: ``batch_size`` 1 (the contract's behaviour) runs one
    task at a time on it; more advances up to that many together.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        *,
        ttl: float,
        max_queue: int,
        task_timeout: float,
        metrics: TaskObserver | None = None,
        batch_size: int = 1,
    ):
        if not engines:
            raise ValueError("at least one engine is needed")
        self.engine_name = engines[0].name
        self.capabilities = common_capabilities([engine.capabilities for engine in engines])
        self.board = TaskBoard(ttl=ttl, max_queue=max_queue)
        self.board.metrics = metrics
        self.workers = [
            InferenceWorker(
                engine,
                self.board,
                self.board.receive.clone(),
                batch_size=batch_size,
                task_timeout=task_timeout,
                name=f"worker-{index}",
            )
            for index, engine in enumerate(engines)
        ]
        self.draining = False
        self.stop_grace = STOP_GRACE

    @property
    def queue_depth(self) -> int:
        return self.board.queue_depth

    @property
    def busy(self) -> int:
        return sum(len(worker.tasks) for worker in self.workers)

    @property
    def ready(self) -> bool:
        return not self.draining

    def status_line(self) -> str:
        return f"{self.busy} running, {self.board.queue_depth} waiting, {self.board.done} done"

    def alive(self, stall_limit: float) -> bool:
        now = trio.current_time()
        return all(
            worker.running and (not worker.busy or now - worker.last_progress < stall_limit)
            for worker in self.workers
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                await nursery.start(worker.run)
            self.board.receive.close()  # each worker holds its own clone
            await nursery.start(self.board.sweep)
            task_status.started()

    async def submit(self, session: Recipient, job: SynthesisJob, delivery: Delivery) -> str | None:
        task = self.board.submit(session, job, delivery)
        if task == "closed":  # the drain began while the request's paths were being checked
            return texts.SHUTTING_DOWN
        if task == "full":
            return texts.queue_full(self.board.max_queue)
        session.send(replies.queued(task.task_id, session.session_id, delivery, self.board.queue_depth))
        return None

    async def status(self, task_id: str, session: Recipient) -> None:
        task = self.board.registry.get(task_id)
        if task is None:
            session.send(replies.error(session.session_id, texts.unknown_task(task_id), task_id))
        else:
            session.send(replies.task_status(task, session.session_id))

    async def cancel(self, task_id: str, session: Recipient) -> None:
        task = self.board.registry.get(task_id)
        if task is None:
            session.send(replies.error(session.session_id, texts.unknown_task(task_id), task_id))
        elif task.session_id != session.session_id:
            session.send(replies.error(session.session_id, texts.not_your_task(task_id), task_id))
        elif task.finished:
            message = texts.already_finished(task_id, task.state)
            session.send(replies.error(session.session_id, message, task_id))
        elif task.state == "pending":
            self.board.move(task, "cancelled", session, texts.CANCELLED)
            session.send(replies.cancelled(task_id, session.session_id))
            session.send(replies.error(session.session_id, texts.CANCELLED, task_id))
        else:
            if task.stop_reason is None:  # a second cancel gets the same answer
                task.stop_reason = texts.CANCELLED  # the worker stops at the next segment boundary
            session.send(replies.cancelling(task_id, session.session_id))

    async def cues(self, task_id: str) -> list[Cue] | None:
        task = self.board.registry.get(task_id)
        return None if task is None else list(task.cues)

    async def session_closed(self, session: Recipient) -> None:
        self.board.cancel_pending(session)

    async def drain(self, grace: float) -> None:
        self.draining = True
        log.info("draining: %d running, %d waiting", self.busy, self.board.queue_depth)
        for task, session in self.board.cancel_waiting(texts.SHUTTING_DOWN):
            session.send(replies.error(session.session_id, texts.SHUTTING_DOWN, task.task_id))
        with trio.move_on_after(grace):
            await self._idle()
        for worker in self.workers:
            for ticket in worker.tasks:
                log.warning("drain timeout: stopping task=%s", ticket.task.task_id)
            worker.stop(texts.SHUTTING_DOWN)
        # A task inside one long (or stuck) segment gets ``stop_grace`` more, then fails: the drain
        # ends even with --task-timeout 0.
        with trio.move_on_after(self.stop_grace):
            await self._idle()
        for worker in self.workers:
            for ticket in worker.tasks:
                task_id = ticket.task.task_id
                log.warning("task did not stop in %gs: failing task=%s", self.stop_grace, task_id)
            if worker.tasks:
                worker.abort(texts.STUCK_AT_SHUTDOWN)
        await self._idle()

    async def _idle(self) -> None:
        while self.busy:
            await self.board.changed.wait()
