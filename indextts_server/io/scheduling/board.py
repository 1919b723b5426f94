"""The task board: the registry, the global FIFO queue feeding the inference task, and the sweeper."""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from datetime import datetime
from typing import Literal, NamedTuple, Protocol

import trio

from ...core import texts
from ...core.contract.protocol import TaskState
from ...core.engine import SAMPLE_RATE, SynthesisJob
from ...core.tasks import CONTRACT_DELIVERY, Delivery, Task, TaskRegistry
from .recipient import Recipient

log = logging.getLogger("indextts_server")


class TaskObserver(Protocol):
    """Where finished tasks are counted (the metrics)."""

    def task_finished(
        self,
        outcome: str,
        *,
        latency: float,
        queue_wait: float | None,
        audio_seconds: float,
        compute_seconds: float,
    ) -> None: ...

    def engine_error(self) -> None: ...


def new_task(session: Recipient, job: SynthesisJob, delivery: Delivery) -> Task:
    """A task accepted now for ``session``: a fresh id, the wall-clock and monotonic times."""
    return Task(
        str(uuid.uuid4()),
        session.session_id,
        job,
        datetime.now(),
        delivery=delivery,
        accepted_at=trio.current_time(),
    )


def report_finished(
    metrics: TaskObserver | None, task: Task, *, now: float, samples: int, compute: float
) -> None:
    """Count a task that reached a final state at ``now`` (monotonic seconds)."""
    if metrics is None:
        return
    started = task.started_at
    metrics.task_finished(
        task.state,
        latency=now - task.accepted_at,
        queue_wait=None if started is None else started - task.accepted_at,
        audio_seconds=samples / SAMPLE_RATE,
        compute_seconds=compute,
    )


class Ticket(NamedTuple):
    """A queued task and the session its messages go to."""

    task: Task
    session: Recipient


Refusal = Literal["full", "closed"]
"""Why ``TaskBoard.submit`` did not queue a task: the queue is full, or admission has closed."""


class TaskBoard:
    """Where tasks are admitted, moved between states (one log line each) and finally forgotten.

    The queue is a bounded memory channel and admission never waits: a full queue is answered
    at once instead of making the client wait.
    """

    def __init__(self, *, ttl: float, max_queue: int):
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.registry = TaskRegistry(ttl)
        self.max_queue = max_queue
        # Admission counts waiting tasks; the channel has room for cancelled leftovers too, and
        # refuses (busy) only if they ever pile up beyond that.
        self._send, self.receive = trio.open_memory_channel[Ticket](2 * max_queue)
        self._sweep_scope: trio.CancelScope | None = None
        # Tasks still waiting, in queue order (cancelled ones leave at once, unlike the channel).
        self._tickets: dict[str, Ticket] = {}
        self.done = 0
        self.metrics: TaskObserver | None = None
        # Set (and replaced) on every transition: wait on it to see the board change.
        self.changed = trio.Event()
        # Cleared once, when the drain starts: from then on nothing enters the queue.
        self.admitting = True
        # Realtime tasks (a voice agent's sentence) waiting, in their order: a worker takes them
        # ahead of the FIFO at its next step. They go through the FIFO too, so that an idle worker
        # wakes for them; whichever copy a worker meets first starts the task, the other is skipped.
        self.urgent: deque[Ticket] = deque()

    @property
    def queue_depth(self) -> int:
        """Tasks waiting to run (not counting a running one or cancelled leftovers)."""
        return len(self._tickets)

    def submit(
        self, session: Recipient, job: SynthesisJob, delivery: Delivery = CONTRACT_DELIVERY
    ) -> Task | Refusal:
        """Queue a new task for ``job``, or say why not.

        Right after a submit, ``queue_depth`` is the new task's position (1: next to run).
        """
        if not self.admitting:
            return "closed"
        if len(self._tickets) >= self.max_queue:
            return "full"
        task = new_task(session, job, delivery)
        try:
            self._send.send_nowait(Ticket(task, session))
        except trio.WouldBlock:
            return "full"
        self.registry.add(task)
        self._tickets[task.task_id] = Ticket(task, session)
        if delivery.realtime:
            self.urgent.append(Ticket(task, session))
        session.tasks.add(task.task_id)
        log.info("task queued session=%s task=%s", session.session_id, task.task_id)
        return task

    def move(
        self,
        task: Task,
        state: TaskState,
        session: Recipient,
        error: str | None = None,
        *,
        samples: int = 0,
        compute: float = 0.0,
        engine_error: bool = False,
    ) -> None:
        now = trio.current_time()
        self.registry.move(task, state, wall=datetime.now(), now=now, error=error)
        self._tickets.pop(task.task_id, None)
        suffix = f" error={error!r}" if error else ""
        log.info("task %s session=%s task=%s%s", state, task.session_id, task.task_id, suffix)
        if task.finished:
            session.tasks.discard(task.task_id)
            self.done += 1
            self._wake_sweeper()
            report_finished(self.metrics, task, now=now, samples=samples, compute=compute)
            if engine_error and self.metrics is not None:
                self.metrics.engine_error()
        self.changed.set()
        self.changed = trio.Event()

    def next_urgent(self) -> Ticket | None:
        """The first realtime task still waiting (dropping those started or cancelled meanwhile)."""
        while self.urgent:
            ticket = self.urgent.popleft()
            if ticket.task.state == "pending":
                return ticket
        return None

    def cancel_waiting(self, reason: str) -> list[Ticket]:
        """Close admission and cancel every waiting task (shutdown); return them to be told."""
        self.admitting = False
        gone = list(self._tickets.values())
        for task, session in gone:
            self.move(task, "cancelled", session, reason)
        return gone

    def cancel_pending(self, session: Recipient) -> None:
        """A session is closed: its waiting tasks will never run. A running one stops in the worker.

        They end with the session's ``close_reason`` ("disconnected" unless it says otherwise).
        """
        reason = session.close_reason or texts.DISCONNECTED
        for task_id in list(session.tasks):
            task = self.registry.get(task_id)
            if task is not None and task.state == "pending":
                self.move(task, "cancelled", session, reason)

    def close(self) -> None:
        self._send.close()

    async def sweep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Forget finished tasks once their ttl is up; sleeps until the next one is due."""
        task_status.started()
        while True:
            due = self.registry.next_expiry()
            with trio.CancelScope(deadline=math.inf if due is None else due) as scope:
                self._sweep_scope = scope
                await trio.sleep_forever()
            self._sweep_scope = None
            for task in self.registry.expire(trio.current_time()):
                log.debug("task expired session=%s task=%s", task.session_id, task.task_id)

    def _wake_sweeper(self) -> None:
        due = self.registry.next_expiry()
        if self._sweep_scope is not None and due is not None:
            self._sweep_scope.deadline = min(self._sweep_scope.deadline, due)
