"""The broker scheduler: a gateway's admission, status, cancel and reply relay, and/or a node's workers."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Final

import msgspec
import trio

from ....core import texts
from ....core.contract import replies
from ....core.contract.protocol import Cue, TaskState
from ....core.engine import SynthesisJob, common_capabilities
from ....core.fleet import (
    FleetEngine,
    ReplyEvent,
    TaskOrder,
    WorkerActivity,
    decode_activity,
    fleet_engine,
)
from ....core.tasks import Delivery, Task, iso, transition
from ..board import TaskObserver, new_task, report_finished
from ..recipient import Recipient
from .recovery import run_recovery
from .store import BrokerDown, Store
from .worker import BrokerWorker

log = logging.getLogger("indextts_server")

UNKNOWN_ENGINE: Final = "broker"
"""A gateway's engine name before any worker has said what it runs."""


@dataclass
class _Local:
    """A task this gateway admitted, as its client sees it (timings are this gateway's clock)."""

    task: Task
    session: Recipient
    announced: bool = False  # ``queued`` sent: replies before it wait in ``backlog``
    backlog: list[ReplyEvent] = field(default_factory=list)
    attempt: int = 0
    seq: int = 0


@dataclass
class FleetSnapshot:
    """The fleet as last seen, for the metrics: queue depth and each worker's activity."""

    queue_depth: int = 0
    workers: dict[str, tuple[bool, str | None, int]] = field(default_factory=dict)  # alive, task, done


class BrokerScheduler:
    """Scheduling on a Redis broker, for ``--role gateway``, ``worker`` or ``all``.

    As a gateway (``gateway=True``) it admits tasks into the fleet's one queue, answers status
    and cancel for any task in the fleet, and relays the replies workers send to its reply stream
    (one reader per process) to the sessions. With ``workers`` it also runs them. Every process
    takes part in recovery (lost workers and gateways).
    """

    def __init__(
        self,
        store: Store,
        *,
        gateway: bool = True,
        workers: Sequence[BrokerWorker] = (),
        max_deliveries: int = 3,
        metrics: TaskObserver | None = None,
    ):
        self.store = store
        self.gateway = gateway
        self.workers = list(workers)
        self.max_deliveries = max_deliveries
        self.metrics = metrics
        self.name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Until a worker has said what it runs (`_snapshot_workers`), this process's own workers'
        # engine, or none known: then every request within the contract's bounds is admitted.
        self.engine_name = self.workers[0].engine.name if self.workers else UNKNOWN_ENGINE
        self.capabilities = common_capabilities([worker.engine.capabilities for worker in self.workers])
        self.local: dict[str, _Local] = {}
        self.connected = False
        self.draining = False
        self.fleet = FleetSnapshot()
        self.done = 0
        self._run_id: str | None = None
        self._last_contact = 0.0
        self._to_abandon: dict[str, str] = {}  # task -> reason, for when the broker is back
        self._changed = trio.Event()

    # --- the Scheduler port ----------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return self.fleet.queue_depth

    @property
    def busy(self) -> int:
        return len(self.local) + sum(worker.current is not None for worker in self.workers)

    @property
    def ready(self) -> bool:
        connected = self.connected if self.gateway else all(worker.connected for worker in self.workers)
        return connected and not self.draining

    def status_line(self) -> str:
        running = sum(worker.current is not None for worker in self.workers)
        broker = "broker up" if self.connected else "broker DOWN"
        return (
            f"{broker}, {len(self.local)} relaying, {running} running here, "
            f"{self.fleet.queue_depth} waiting in the fleet, {self.done} done"
        )

    def alive(self, stall_limit: float) -> bool:
        now = trio.current_time()
        return all(
            worker.running and (worker.current is None or now - worker.last_progress < stall_limit)
            for worker in self.workers
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.gateway:
                await self._beat_once()
                await self._snapshot_workers()
                nursery.start_soon(self._beat)
                nursery.start_soon(self._read)
            else:
                nursery.start_soon(self._watch_fleet)
            for worker in self.workers:
                await nursery.start(worker.run)
            recovery = partial(run_recovery, self.store, self.name, max_deliveries=self.max_deliveries)
            await nursery.start(recovery)
            task_status.started()

    async def submit(self, session: Recipient, job: SynthesisJob, delivery: Delivery) -> str | None:
        if not self.connected:
            return texts.BROKER_UNAVAILABLE
        task = new_task(session, job, delivery)
        local = _Local(task, session)
        self.local[task.task_id] = local
        session.tasks.add(task.task_id)
        order = TaskOrder(job=job, delivery=delivery)
        try:
            position = await self.store.call(
                self.store.admit, task.task_id, session.session_id, self.name, order, iso(task.created_at)
            )
        except BrokerDown as exc:
            # It may have been queued all the same (the answer was lost): cancel it once reachable.
            self._to_abandon[task.task_id] = texts.BROKER_UNAVAILABLE
            self._forget(local)
            self._lost_contact(exc)
            return texts.BROKER_UNAVAILABLE
        if position == 0:
            self._forget(local)
            return texts.queue_full(self.store.max_queue)
        log.info("task queued session=%s task=%s position=%d", session.session_id, task.task_id, position)
        session.send(replies.queued(task.task_id, session.session_id, delivery, position))
        local.announced = True
        for event in local.backlog:
            self._relay(event)
        local.backlog.clear()
        return None

    async def status(self, task_id: str, session: Recipient) -> None:
        try:
            record = await self.store.call(self.store.record, task_id)
        except BrokerDown as exc:
            self._lost_contact(exc)
            session.send(replies.error(session.session_id, texts.BROKER_UNAVAILABLE, task_id))
            return
        if record is None:
            session.send(replies.error(session.session_id, texts.unknown_task(task_id), task_id))
        else:
            session.send(record.status_reply(session.session_id))

    async def cues(self, task_id: str) -> list[Cue] | None:
        """A task's cues so far, as its worker keeps them with the task; ``None`` if unknown."""
        try:
            return await self.store.call(self.store.cues, task_id)
        except BrokerDown as exc:
            self._lost_contact(exc)
            return None

    async def cancel(self, task_id: str, session: Recipient) -> None:
        try:
            outcome = await self.store.call(
                self.store.abandon, task_id, texts.CANCELLED, session=session.session_id
            )
        except BrokerDown as exc:
            self._lost_contact(exc)
            session.send(replies.error(session.session_id, texts.BROKER_UNAVAILABLE, task_id))
            return
        if outcome == "unknown":
            session.send(replies.error(session.session_id, texts.unknown_task(task_id), task_id))
        elif outcome == "other":
            session.send(replies.error(session.session_id, texts.not_your_task(task_id), task_id))
        elif outcome.startswith("finished:"):
            state = outcome.split(":", 1)[1]
            session.send(replies.error(session.session_id, texts.already_finished(task_id, state), task_id))
        elif outcome == "cancelled":
            local = self.local.get(task_id)
            if local is not None:
                self._end(local, "cancelled", texts.CANCELLED)
            session.send(replies.cancelled(task_id, session.session_id))
            session.send(replies.error(session.session_id, texts.CANCELLED, task_id))
        elif outcome == "cancelling":
            session.send(replies.cancelling(task_id, session.session_id))

    async def session_closed(self, session: Recipient) -> None:
        for task_id in list(session.tasks):
            local = self.local.get(task_id)
            if local is None:
                continue
            try:
                outcome = await self.store.call(self.store.abandon, task_id, texts.DISCONNECTED)
            except BrokerDown:
                self._to_abandon[task_id] = texts.DISCONNECTED
                self._end(local, "cancelled", texts.DISCONNECTED)
                continue
            if outcome != "cancelling" and outcome != "stopping":
                self._end(local, "cancelled", texts.DISCONNECTED)
            # A running task ends (and is counted) when its worker stops it at the next segment.

    async def drain(self, grace: float) -> None:
        self.draining = True
        log.info("draining: %d tasks of this gateway in flight, %d running here", len(self.local), self.busy)
        for worker in self.workers:
            worker.stopping = True
        for local in list(self.local.values()):
            if local.task.state != "pending":
                continue
            try:
                outcome = await self.store.call(
                    self.store.abandon, local.task.task_id, texts.SHUTTING_DOWN, running_too=False
                )
            except BrokerDown:
                outcome = "cancelled"
            if outcome == "cancelled":
                self._end(local, "cancelled", texts.SHUTTING_DOWN, tell=True)
        with trio.move_on_after(grace):
            await self._quiet()
        for worker in self.workers:
            if worker.current is not None:
                log.warning("drain timeout: stopping task=%s", worker.current)
                worker.stop_reason = texts.SHUTTING_DOWN
        for local in list(self.local.values()):
            log.warning("drain timeout: stopping task=%s", local.task.task_id)
            try:
                await self.store.call(self.store.abandon, local.task.task_id, texts.SHUTTING_DOWN)
            except BrokerDown:
                self._end(local, "cancelled", texts.SHUTTING_DOWN, tell=True)
        with trio.move_on_after(max(5.0, 3 * self.store.lease)):
            await self._quiet()
        for local in list(self.local.values()):
            self._end(local, "failed", texts.SHUTTING_DOWN, tell=True)
        if self.gateway:
            with trio.move_on_after(2, shield=True):
                try:
                    await self.store.call(self.store.gateway_leave, self.name)
                except BrokerDown:
                    pass

    async def _quiet(self) -> None:
        while self.busy:
            self._changed = trio.Event()
            with trio.move_on_after(0.5):  # a worker's own changes are not signalled here
                await self._changed.wait()

    # --- relaying replies ------------------------------------------------------------------

    async def _read(self) -> None:
        """The one reader of this gateway's reply stream, for every session."""
        while True:
            try:
                events = await self.store.call(self.store.read_replies, self.name)
            except BrokerDown as exc:
                self._lost_contact(exc)
                await trio.sleep(0.25)
                continue
            for event in events:
                self._relay(event)

    def _relay(self, event: ReplyEvent) -> None:
        local = self.local.get(event.task)
        if local is None:
            return  # ended already (its client left, or the task was given up)
        if not local.announced:
            local.backlog.append(event)
            return
        if (event.attempt, event.seq) <= (local.attempt, local.seq):
            return  # a re-sent event, or one of an attempt that was taken over
        task, session = local.task, local.session
        if event.attempt != local.attempt:
            task.cues.clear()  # a lost worker's task runs again from its first segment
        local.attempt, local.seq = event.attempt, event.seq
        now = trio.current_time()
        match event.kind:
            case "start":
                if task.state != "pending":
                    return  # run again elsewhere: the client saw its start already
                transition(task, "running", wall=datetime.now(), now=now)
                session.send(replies.start(task.task_id, session.session_id, task.delivery))
            case "cue":
                cue = msgspec.json.decode(event.data, type=Cue)
                task.cues.append(cue)
                if task.delivery.timestamps:
                    session.send(replies.cue(task.task_id, session.session_id, cue))
            case "audio":
                if task.first_audio_at is None:
                    task.first_audio_at = now
                session.deliver(event.data)
            case "end":
                self._end(local, "completed", None, samples=event.samples, compute=event.compute)
                timing = task.timing(event.samples, event.compute)
                session.send(replies.end(task.task_id, session.session_id, task.delivery, timing, task.cues))
            case "error":
                message = event.message or ""
                self._end(local, event.state or "failed", message, tell=True)

    def _end(
        self,
        local: _Local,
        state: TaskState,
        message: str | None,
        *,
        tell: bool = False,
        samples: int = 0,
        compute: float = 0.0,
    ) -> None:
        """The task's final state, as this gateway counts it; ``tell`` sends the client its error."""
        task = local.task
        if self.local.pop(task.task_id, None) is None:
            return
        local.session.tasks.discard(task.task_id)
        now, wall = trio.current_time(), datetime.now()
        if state == "completed" and task.state == "pending":  # its start never reached this gateway
            transition(task, "running", wall=wall, now=now)
        transition(task, state, wall=wall, now=now, error=message)
        self.done += 1
        log.info(
            "task %s session=%s task=%s%s",
            state,
            task.session_id,
            task.task_id,
            f" error={message!r}" if message else "",
        )
        if tell and message is not None:
            local.session.send(replies.error(task.session_id, message, task.task_id))
        report_finished(self.metrics, task, now=now, samples=samples, compute=compute)
        self._changed.set()

    def _forget(self, local: _Local) -> None:
        self.local.pop(local.task.task_id, None)
        local.session.tasks.discard(local.task.task_id)

    # --- the broker's health ---------------------------------------------------------------

    def _lost_contact(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("broker unreachable (%s); refusing new tasks until it is back", exc)
        self.connected = False

    async def _beat_once(self) -> None:
        try:
            run_id = await self.store.call(self.store.gateway_beat, self.name)
            depth = await self.store.call(self.store.queue_depth)
        except BrokerDown as exc:
            self._lost_contact(exc)
            if trio.current_time() - self._last_contact > self.store.lease:
                self._fail_all(texts.BROKER_LOST)
            return
        if self._run_id is not None and run_id != self._run_id:
            log.warning("the broker restarted and forgot its tasks; failing the ones in flight here")
            self._fail_all(texts.BROKER_LOST)
        if not self.connected:
            log.info("broker reachable at %s", self.store.url)
        self._run_id = run_id
        self.connected = True
        self._last_contact = trio.current_time()
        self.fleet.queue_depth = depth
        for task_id, reason in list(self._to_abandon.items()):
            try:
                await self.store.call(self.store.abandon, task_id, reason)
            except BrokerDown:
                break
            del self._to_abandon[task_id]

    def _fail_all(self, reason: str) -> None:
        for local in list(self.local.values()):
            if local.announced:
                self._to_abandon[local.task.task_id] = reason
                self._end(local, "failed", reason, tell=True)

    async def _beat(self) -> None:
        while True:
            await trio.sleep(self.store.lease / 3)
            await self._beat_once()
            await self._snapshot_workers()

    async def _watch_fleet(self) -> None:
        """Workers-only nodes: keep the fleet snapshot for the metrics."""
        while True:
            try:
                self.fleet.queue_depth = await self.store.call(self.store.queue_depth)
                self.connected = True
                await self._snapshot_workers()
            except BrokerDown:
                self.connected = False
            await trio.sleep(max(1.0, self.store.lease / 3))

    async def _snapshot_workers(self) -> None:
        try:
            workers = await self.store.call(self.store.workers)
        except BrokerDown:
            return
        snapshot: dict[str, tuple[bool, str | None, int]] = {}
        live: list[WorkerActivity] = []
        for name, (alive, raw) in workers.items():
            activity = decode_activity(raw)
            snapshot[name] = (alive, activity.task, activity.done)
            if alive:
                live.append(activity)
        self.fleet.workers = snapshot
        if self.gateway:
            self._learn_engine(fleet_engine(live))

    def _learn_engine(self, engine: FleetEngine | None) -> None:
        """Serve what the live workers run; with none alive, what the last ones ran (the tasks
        wait for workers like them)."""
        if engine is None or (engine.name, engine.capabilities) == (self.engine_name, self.capabilities):
            return
        self.engine_name, self.capabilities = engine
        caps = engine.capabilities
        log.info(
            "fleet engine %s (%s): lang %s, emo_mode %s, speed %g-%g",
            engine.name,
            caps.model,
            "/".join(lang for lang in caps.langs if lang not in caps.missing_tokenizers),
            "/".join(caps.emo_modes),
            *caps.speed,
        )
