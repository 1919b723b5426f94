"""A cluster worker: takes tasks from the fleet's queue one at a time and runs them on its engine."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, TypeVar

import msgspec
import trio

from ....core.contract.protocol import Cue, TaskState
from ....core.engine import Engine
from ....core.fleet import ReplyEvent, WorkerActivity, encode_activity
from ....core.texts import SHUTTING_DOWN
from ..runner import Ending, Row, TaskRunner
from .store import BrokerDown, Started, Store, Taken

log = logging.getLogger("indextts_server")

T = TypeVar("T")

RETRY_PAUSE = 0.25
"""Seconds between attempts while the broker is unreachable."""
FENCED: Final = "\0fenced"
"""`BrokerSink.stopped`'s reason when the attempt is no longer this worker's: nothing more is said."""


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-w{index}"


class BrokerSink:
    """One attempt at one fleet task: its events published through the broker to its gateway."""

    def __init__(self, worker: BrokerWorker, taken: Taken, started: Started):
        self.worker = worker
        self.store = worker.store
        self.taken = taken
        self.started = started
        self.task_id = taken.task_id
        self.label = f"task={self.task_id} worker={worker.name}"
        self.seq = 1  # the start reply, sent when the task was started
        self.audio_sent = False
        self.last_audio: ReplyEvent | None = None  # held back to go out with the end
        self.cues: list[Cue] = []
        self.stop: str | None = None  # the broker's answer, once it says stop

    def stopped(self) -> str | None:
        return self.stop or self.worker.stop_reason

    def _event(self, **fields: object) -> ReplyEvent:
        self.seq += 1
        return ReplyEvent(task=self.task_id, attempt=self.started.attempt, seq=self.seq, **fields)  # type: ignore[arg-type] # fields are ReplyEvent's own

    async def _progress(self, event: ReplyEvent, *, audio: bool = False, cues: bytes = b"") -> bool:
        """Publish ``event`` and learn whether to go on."""
        answer = await self.worker._persist(
            lambda: self.store.call(
                self.store.progress,
                self.task_id,
                self.started.attempt,
                self.started.gateway,
                event,
                audio=audio,
                cues=cues,
            )
        )
        if answer != "ok":
            self.stop = FENCED if answer == "fenced" else answer
            return False
        if audio:
            self.audio_sent = True
        return self.worker.stop_reason is None

    async def cue(self, cue: Cue) -> bool:
        """Publish a segment's cue before its audio, and keep the cues so far with the task."""
        self.cues.append(cue)
        event = self._event(kind="cue", data=msgspec.json.encode(cue))
        return await self._progress(event, cues=msgspec.json.encode(self.cues))

    async def audio(self, data: bytes, *, last: bool) -> bool:
        """Publish one audio reply; the last one is held back and goes out with the end."""
        event = self._event(kind="audio", data=data)
        if last:
            self.last_audio = event
            return True
        return await self._progress(event, audio=True)

    async def end(self, samples: int, compute: float) -> None:
        events: list[ReplyEvent] = [] if self.last_audio is None else [self.last_audio]
        events.append(self._event(kind="end", samples=samples, compute=compute))
        await self._finish("completed", None, events)
        self.worker.done += 1
        self.worker._ended()

    async def fail(self, state: Ending, reason: str, *, engine_error: bool = False) -> None:
        worker, attempt = self.worker, self.started.attempt
        if reason == FENCED:
            log.info("task taken over elsewhere %s", self.label)
        elif reason == SHUTTING_DOWN and state == "cancelled" and not self.audio_sent:
            handed = await worker._persist(
                lambda: self.store.call(self.store.requeue, self.taken, attempt=attempt, worker=worker.name)
            )
            log.info("task handed back %s (%s)", self.label, handed)
        else:
            if engine_error and worker.on_engine_error is not None:
                worker.on_engine_error()
            await self._finish(state, reason, [self._event(kind="error", state=state, message=reason)])
        worker._ended()

    async def _finish(self, state: TaskState, message: str | None, events: list[ReplyEvent]) -> None:
        done = await self.worker._persist(
            lambda: self.store.call(
                self.store.finish,
                self.task_id,
                self.started.attempt,
                self.started.gateway,
                state,
                *events,
                error=message,
                taken=self.taken,
            )
        )
        log.info("task %s %s%s", state, self.label, "" if done else " (not ours)")


class BrokerWorker(TaskRunner[BrokerSink]):
    """Runs fleet tasks on one engine, one at a time, like `InferenceWorker` but fed and answered
    by the broker.

    Its lease (a key with a ``lease``-second expiry, renewed three times per lease) tells the
    fleet it lives; once it lapses, any process hands its task to another worker or fails it.
    Every write names the task's attempt, so a worker presumed dead can change nothing.
    """

    def __init__(
        self,
        engine: Engine,
        store: Store,
        *,
        name: str,
        task_timeout: float = 0.0,
        on_engine_error: Callable[[], None] | None = None,
    ):
        super().__init__(engine, task_timeout=task_timeout, name=name)
        self.store = store
        self.on_engine_error = on_engine_error
        self.current: str | None = None
        self.connected = False
        self.done = 0
        self.stopping = False  # draining: take nothing new
        self.stop_reason: str | None = None  # drain timeout: stop the current task
        self.changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._beat)
                await super().run(task_status=task_status)
                nursery.cancel_scope.cancel()
        finally:
            self.running = False
            self.changed.set()
            with trio.move_on_after(2, shield=True):
                try:
                    await self.store.call(self.store.worker_leave, self.name)
                except BrokerDown:
                    pass

    async def _beat(self) -> None:
        while True:
            activity = encode_activity(
                WorkerActivity(
                    task=self.current,
                    done=self.done,
                    engine=self.engine.name,
                    capabilities=self.engine.capabilities,
                )
            )
            try:
                await self.store.call(self.store.worker_beat, self.name, activity.decode())
                self.connected = True
            except BrokerDown:
                self.connected = False
            await trio.sleep(self.store.lease / 3)

    async def _take(self, *, wait: bool, bulk: bool = True) -> Row[BrokerSink] | None:
        """The fleet's next task, started on this worker (``None``: it must not run after all).

        The fleet's queue is one FIFO, realtime tasks included: every row here is a bulk row."""
        if not bulk:
            raise trio.WouldBlock
        if self.stopping:
            raise trio.EndOfChannel
        try:
            taken = await self.store.call(self.store.take, self.name)
            self.connected = True
        except BrokerDown as exc:
            if self.connected:
                log.warning("broker unreachable (%s); worker %s retrying", exc, self.name)
            self.connected = False
            await trio.sleep(RETRY_PAUSE)
            return None
        if taken is None:
            return None
        if self.stopping:
            await self._persist(partial(self.store.call, self.store.requeue, taken, attempt=0, worker=""))
            raise trio.EndOfChannel
        started = await self._persist(lambda: self.store.call(self.store.start, self.name, taken))
        if started is None:
            return None  # cancelled while it waited, or its gateway is gone
        self.current = taken.task_id
        self._changed()
        log.info("task running task=%s worker=%s attempt=%d", taken.task_id, self.name, started.attempt)
        order = started.order
        return self._row(order.job, order.delivery, BrokerSink(self, taken, started))

    async def _persist(self, step: Callable[[], Awaitable[T]]) -> T:
        """Retry ``step`` until the broker answers (a broker restart fences whatever it was for)."""
        while True:
            try:
                return await step()
            except BrokerDown:
                self.connected = False
                await trio.sleep(RETRY_PAUSE)

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _ended(self) -> None:
        """The current task has ended (its row may still wait for the engine's step)."""
        self.current = None
        self.stop_reason = None
        self.last_progress = trio.current_time()
        self._changed()
