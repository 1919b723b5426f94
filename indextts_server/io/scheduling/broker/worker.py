"""A cluster worker: takes tasks from the fleet's queue one at a time and runs them on its engine."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import TypeVar

import msgspec
import trio

from ....core.contract.protocol import Cue, TaskState
from ....core.engine import PCM, Engine, Segment, SynthesisJob
from ....core.fleet import ReplyEvent, WorkerActivity, encode_activity
from ....core.texts import SHUTTING_DOWN, engine_failed, task_timed_out
from ...audio.encoding import SegmentFiles
from ...engines.plan import synthesize
from ...engines.thread import home_thread
from ..worker import timeline
from .store import BrokerDown, Started, Store, Taken

log = logging.getLogger("indextts_server")

T = TypeVar("T")

RETRY_PAUSE = 0.25
"""Seconds between attempts while the broker is unreachable."""


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}-{os.getpid()}-w{index}"


def _begin(engine: Engine, job: SynthesisJob) -> tuple[Iterator[Segment], Segment | None]:
    segments = synthesize(engine, job)
    return segments, next(segments, None)


class TaskTimeout(Exception):
    """The task ran past ``--task-timeout``."""


class Stopped(Exception):
    """The task must stop: ``reason`` for the client, or ``None`` when it is no longer ours."""

    def __init__(self, reason: str | None):
        super().__init__(reason)
        self.reason = reason


class BrokerWorker:
    """Runs fleet tasks on one engine, like `InferenceWorker` but fed and answered by the broker.

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
        self.engine = engine
        self.thread = home_thread(engine)
        self.store = store
        self.name = name
        self.task_timeout = task_timeout
        self.on_engine_error = on_engine_error
        self.limiter = trio.CapacityLimiter(1)
        self.current: str | None = None
        self.last_progress = 0.0
        self.running = False
        self.connected = False
        self.done = 0
        self.stopping = False  # draining: take nothing new
        self.stop_reason: str | None = None  # drain timeout: stop the current task
        self.changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_progress = trio.current_time()
        self.running = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._beat)
                task_status.started()
                await self._serve()
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

    async def _serve(self) -> None:
        while not self.stopping:
            try:
                taken = await self.store.call(self.store.take, self.name)
                self.connected = True
            except BrokerDown as exc:
                if self.connected:
                    log.warning("broker unreachable (%s); worker %s retrying", exc, self.name)
                self.connected = False
                await trio.sleep(RETRY_PAUSE)
                continue
            if taken is None:
                continue
            if self.stopping:
                await self._persist(partial(self.store.call, self.store.requeue, taken, attempt=0, worker=""))
                break
            try:
                await self._run_task(taken)
            finally:
                self.current = None
                self.stop_reason = None
                self.last_progress = trio.current_time()
                self.changed.set()
                self.changed = trio.Event()

    async def _persist(self, step: Callable[[], Awaitable[T]]) -> T:
        """Retry ``step`` until the broker answers (a broker restart fences whatever it was for)."""
        while True:
            try:
                return await step()
            except BrokerDown:
                self.connected = False
                await trio.sleep(RETRY_PAUSE)

    async def _run_task(self, taken: Taken) -> None:
        started = await self._persist(lambda: self.store.call(self.store.start, self.name, taken))
        if started is None:
            return  # cancelled while it waited, or its gateway is gone
        self.current = taken.task_id
        self.changed.set()
        self.changed = trio.Event()
        log.info("task running task=%s worker=%s attempt=%d", taken.task_id, self.name, started.attempt)
        run = _Run(self, taken, started)
        try:
            samples, compute = await run.synthesize()
        except Stopped as stop:
            if stop.reason is None:
                log.info("task taken over elsewhere task=%s worker=%s", taken.task_id, self.name)
                return
            if stop.reason == SHUTTING_DOWN and not run.audio_sent:
                handed = await self._persist(
                    lambda: self.store.call(
                        self.store.requeue, taken, attempt=started.attempt, worker=self.name
                    )
                )
                log.info("task handed back task=%s worker=%s (%s)", taken.task_id, self.name, handed)
                return
            await run.finish("cancelled", stop.reason)
            return
        except TaskTimeout:
            log.warning("task timed out task=%s worker=%s", taken.task_id, self.name)
            await run.finish("failed", task_timed_out(self.task_timeout))
            return
        except Exception as exc:
            log.exception("engine failed task=%s worker=%s", taken.task_id, self.name)
            if self.on_engine_error is not None:
                self.on_engine_error()
            await run.finish("failed", engine_failed(str(exc) or type(exc).__name__))
            return
        await run.finish("completed", None, samples=samples, compute=compute)
        self.done += 1


class _Run:
    """One attempt at one task on a worker."""

    def __init__(self, worker: BrokerWorker, taken: Taken, started: Started):
        self.worker = worker
        self.store = worker.store
        self.taken = taken
        self.started = started
        self.task_id = taken.task_id
        self.seq = 1  # the start reply, sent when the task was started
        self.audio_sent = False
        self.last_audio: ReplyEvent | None = None  # held back to go out with the end
        self.cues: list[Cue] = []

    def _event(self, **fields: object) -> ReplyEvent:
        self.seq += 1
        return ReplyEvent(task=self.task_id, attempt=self.started.attempt, seq=self.seq, **fields)  # type: ignore[arg-type] # fields are ReplyEvent's own

    async def _progress(
        self, event: ReplyEvent | None = None, *, audio: bool = False, cues: bytes = b""
    ) -> None:
        """Publish ``event`` (or only check in) and learn whether to go on; `Stopped` if not."""
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
        if answer == "fenced":
            raise Stopped(None)
        if answer != "ok":
            raise Stopped(answer)
        if audio:
            self.audio_sent = True
        if self.worker.stop_reason is not None:
            raise Stopped(self.worker.stop_reason)

    async def finish(
        self, state: TaskState, message: str | None, *, samples: int = 0, compute: float = 0.0
    ) -> None:
        events: list[ReplyEvent] = []
        if state == "completed":
            if self.last_audio is not None:
                events.append(self.last_audio)
            events.append(self._event(kind="end", samples=samples, compute=compute))
        else:
            events.append(self._event(kind="error", state=state, message=message))
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
        log.info(
            "task %s task=%s worker=%s%s",
            state,
            self.task_id,
            self.worker.name,
            "" if done else " (not ours)",
        )

    async def synthesize(self) -> tuple[int, float]:
        delivery = self.started.order.delivery
        deadline = math.inf
        if self.worker.task_timeout > 0:
            deadline = trio.current_time() + self.worker.task_timeout
        segments: Iterator[Segment] | None = None
        files = SegmentFiles(delivery.format, delivery.sample_rate)
        cues = timeline(self.started.order.job, delivery)
        chunks: list[PCM] = []
        samples, compute = 0, 0.0
        finished = abandoned = False
        try:
            while not finished:
                began = trio.current_time()
                try:
                    if segments is None:
                        job = self.started.order.job
                        segments, segment = await self._call(deadline, _begin, self.worker.engine, job)
                    else:
                        segment = await self._call(deadline, next, segments, None)
                except TaskTimeout:
                    abandoned = True
                    raise
                compute += trio.current_time() - began
                self.worker.last_progress = trio.current_time()
                if segment is None:
                    break
                finished = segment.last
                samples += len(segment.pcm)
                await self._cue(cues.add(len(self.cues), segment.text, segment.pcm, last=finished))
                if delivery.stream:
                    await self._send_audio(files, [segment.pcm], last=finished)
                else:
                    chunks.append(segment.pcm)
        finally:
            close: Callable[[], object] | None = getattr(segments, "close", None)
            if close is not None and not finished and not abandoned:
                with trio.CancelScope(shield=True):
                    await self._call(math.inf, close)
        if not delivery.stream:
            await self._send_audio(files, chunks, last=True)
        return samples, compute

    async def _cue(self, cue: Cue) -> None:
        """Publish a segment's cue before its audio, and keep the cues so far with the task."""
        self.cues.append(cue)
        event = self._event(kind="cue", data=msgspec.json.encode(cue))
        await self._progress(event, cues=msgspec.json.encode(self.cues))

    async def _send_audio(self, files: SegmentFiles, chunks: list[PCM], *, last: bool) -> None:
        """Publish one audio reply; the last one is held back and goes out with the end."""
        if files.cheap:
            data = files.file(chunks, last=last)
        else:
            data = await trio.to_thread.run_sync(partial(files.file, chunks, last=last))
        event = self._event(kind="audio", data=data)
        if last:
            self.last_audio = event
        else:
            await self._progress(event, audio=True)

    async def _call(self, deadline: float, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the engine's own thread; past ``deadline`` the waiting thread is abandoned."""
        limiter, call = self.worker.limiter, self.worker.thread.call
        if deadline == math.inf:
            return await trio.to_thread.run_sync(call, fn, *args, limiter=limiter)
        with trio.move_on_at(deadline):
            return await trio.to_thread.run_sync(call, fn, *args, limiter=limiter, abandon_on_cancel=True)
        raise TaskTimeout
