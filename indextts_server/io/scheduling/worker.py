"""The inference task: takes tasks from the global FIFO and runs its engine in a worker thread.

Theory of operation: who may change what.

- ``Task.state`` moves only through ``TaskBoard.move`` (one log line, the metrics, the state
  table's check). Waiting tasks are moved by the board (cancel, disconnect, drain); a task a
  worker has taken is moved only by that worker, from ``running`` to its final state.
- ``Task.stop_reason`` is set by the transport (a client's ``cancel``) and by the drain
  (``InferenceWorker.stop``); it is read only by the worker, between segments. Once set it is
  never cleared or replaced, and it becomes the task's final error message.
- ``Recipient.open`` is cleared only by the session itself (closed, overflowed, dropped, or its
  connection gone). The worker reads it between segments: a task whose session is closed stops
  there, ending ``cancelled`` with the session's ``close_reason`` (or "disconnected").
- The worker's cancel scope around a task is cancelled only by its deadline
  (``--task-timeout``) or by ``InferenceWorker.abort`` (the drain, once a stop did not take).
  Either way the thread inside the engine is abandoned: it keeps the engine's limiter until it
  returns, then closes the engine's iterator itself, and the worker takes no new task before that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Final, TypeVar

import trio

from ...core import texts
from ...core.contract import replies
from ...core.cues import Timeline
from ...core.engine import PCM, Engine, Segment, SynthesisJob
from ...core.plan import silences
from ...core.tasks import Delivery, Task
from ..audio.encoding import SegmentFiles
from ..engines.plan import synthesize
from ..engines.thread import home_thread
from .board import TaskBoard, Ticket
from .recipient import Recipient

log = logging.getLogger("indextts_server")

T = TypeVar("T")

INLINE_SAMPLES: Final = 1 << 18
"""Audio up to this many samples (~12 s) is assembled and encoded on the event loop; longer audio
in a thread, so work that grows with audio length never holds the loop."""
CLOSE_TIMEOUT: Final = 5.0
"""Seconds the worker waits for an engine iterator to close before leaving it to its thread."""


def timeline(job: SynthesisJob, delivery: Delivery) -> Timeline:
    """Where a task's segments fall in the audio its client receives.

    A ``speed`` below 1 that the engine renders as a time-stretch lengthens its pauses too: they
    may then last up to ``interval_silence / speed``.
    """
    between, opening, closing = silences(job)  # with SSML, its breaks too
    return Timeline(
        between, speed=delivery.speed, sample_rate=delivery.sample_rate, opening=opening, closing=closing
    )


def announce(task: Task, session: Recipient, cues: Timeline, segment: Segment, index: int) -> None:
    """Keep the segment's cue with the task, and send it first when the request asked for cues."""
    cue = cues.add(index, segment.text, segment.pcm, last=segment.last)
    task.cues.append(cue)
    if task.delivery.timestamps:
        session.send(replies.cue(task.task_id, session.session_id, cue))


async def deliver(ticket: Ticket, files: SegmentFiles, chunks: list[PCM], *, last: bool) -> None:
    """Encode ``chunks`` as one file of the task's format and hand it to its session."""
    task, session = ticket
    if files.cheap and sum(len(chunk) for chunk in chunks) <= INLINE_SAMPLES:
        data = files.file(chunks, last=last)
    else:
        data = await trio.to_thread.run_sync(partial(files.file, chunks, last=last), abandon_on_cancel=True)
    if task.first_audio_at is None:
        task.first_audio_at = trio.current_time()
    session.deliver(data, len(data))


class EngineRun:
    """One task's pass through the engine, shared by the event loop and the thread inside it.

    ``step`` runs in a worker thread and advances the engine by one segment. If the event loop
    gives up on that thread (``hand_off``: a timeout or an abort), the thread closes the engine's
    iterator itself when it returns, still holding the engine, so the iterator is never closed
    concurrently with another use of the model nor left to the garbage collector.
    """

    def __init__(self, engine: Engine, job: SynthesisJob):
        self._engine = engine
        self._job = job
        self._segments: Iterator[Segment] | None = None
        self._lock = threading.Lock()
        self._inside = False
        self._handed_off = False

    def step(self) -> Segment | None:
        """In a thread holding the engine: the next segment, or ``None`` when there are no more."""
        with self._lock:
            if self._handed_off:
                return None
            self._inside = True
        try:
            if self._segments is None:
                self._segments = synthesize(self._engine, self._job)
            return next(self._segments, None)
        finally:
            with self._lock:
                self._inside = False
                handed_off = self._handed_off
            if handed_off:
                self.close()

    def hand_off(self) -> bool:
        """The event loop is done with this run: True if a thread inside will close it on return."""
        with self._lock:
            self._handed_off = True
            return self._inside

    def close(self) -> None:
        """In a thread holding the engine: stop the engine's iterator (idempotent)."""
        segments, self._segments = self._segments, None
        close: Callable[[], object] | None = getattr(segments, "close", None)
        if close is not None:
            close()


class EngineTask:
    """What every inference task shares: its engine behind a ``CapacityLimiter(1)`` and its own
    thread (`home_thread`), the FIFO it takes tickets from, and the liveness the watchdog reads."""

    def __init__(
        self,
        engine: Engine,
        board: TaskBoard,
        receive: trio.MemoryReceiveChannel[Ticket],
        *,
        task_timeout: float = 0.0,
        name: str = "worker-0",
    ):
        self.engine = engine
        self.thread = home_thread(engine)
        self.board = board
        self.receive = receive
        self.task_timeout = task_timeout
        self.name = name
        self.limiter = trio.CapacityLimiter(1)
        self.last_progress = 0.0
        self.running = False
        self.waiting_for_engine = False  # an abandoned thread is still inside the engine

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_progress = trio.current_time()
        self.running = True
        task_status.started()
        try:
            await self._serve()
        finally:
            self.running = False

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _engine_free(self) -> None:
        """Wait until no abandoned thread is inside the engine."""
        if not self.limiter.borrowed_tokens:
            return
        self.waiting_for_engine = True
        try:
            async with self.limiter:
                pass
        finally:
            self.waiting_for_engine = False

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the engine's thread, waited for in a worker thread holding the limiter;
        abandoned if the caller is cancelled (the call still finishes on the engine's thread)."""
        return await trio.to_thread.run_sync(
            self.thread.call, fn, *args, limiter=self.limiter, abandon_on_cancel=True
        )


class InferenceWorker(EngineTask):
    """Runs one task at a time, in queue order, whoever sent it.

    The engine is blocking, so every call into it goes through ``trio.to_thread.run_sync``
    under a ``CapacityLimiter(1)``, and that pool thread hands the call to the engine's own
    thread (`home_thread`): one thread, always the same one, ever touches the model. The engine is
    advanced one segment per call, so a task that is cancelled, or whose client has gone, stops
    at the next segment boundary.

    A task that outlives ``task_timeout`` fails at once; the thread still inside the engine is
    abandoned but keeps the limiter until it returns, and the worker takes the next task only
    then, so the next task's time starts when it holds the engine.
    """

    # Set per task (class-level defaults: none yet).
    current: Ticket | None = None
    _scope: trio.CancelScope | None = None
    _abort_reason: str | None = None

    @property
    def tasks(self) -> list[Ticket]:
        """The running task, if any."""
        return [] if self.current is None else [self.current]

    @property
    def busy(self) -> bool:
        """Running a task, or waiting for an abandoned one to leave the engine."""
        return self.current is not None or self.waiting_for_engine

    def stop(self, reason: str) -> None:
        """Ask the running task (if any) to stop at its next segment boundary with ``reason``."""
        if self.current is not None and self.current.task.stop_reason is None:
            self.current.task.stop_reason = reason

    def abort(self, reason: str) -> None:
        """Fail the running task now with ``reason``, abandoning the thread inside the engine."""
        if self.current is not None and self._scope is not None:
            self._abort_reason = reason
            self._scope.cancel()

    async def _serve(self) -> None:
        async with self.receive:
            while True:
                await self._engine_free()
                try:
                    ticket = await self.receive.receive()
                except trio.EndOfChannel:
                    return
                if ticket.task.state != "pending":
                    continue  # cancelled while it waited
                self.current = ticket
                try:
                    await self._process(ticket)
                finally:
                    self.current = None
                    self.last_progress = trio.current_time()

    async def _process(self, ticket: Ticket) -> None:
        task, session = ticket
        self.board.move(task, "running", session)
        session.send(replies.start(task.task_id, session.session_id, task.delivery))
        self._abort_reason = None
        failure: str | None = None
        result: tuple[int, float] | None = None
        with trio.CancelScope() as scope:
            if self.task_timeout > 0:
                scope.deadline = trio.current_time() + self.task_timeout
            self._scope = scope
            try:
                result = await self._synthesize(ticket)
            except Exception as exc:
                failure = texts.engine_failed(str(exc) or type(exc).__name__)
                log.exception("engine failed session=%s task=%s", session.session_id, task.task_id)
            finally:
                self._scope = None
        if scope.cancelled_caught:
            if self._abort_reason is not None:
                failure = self._abort_reason
                log.warning("task abandoned session=%s task=%s", session.session_id, task.task_id)
            else:
                failure = texts.task_timed_out(self.task_timeout)
                log.warning("task timed out session=%s task=%s", session.session_id, task.task_id)
            self.board.move(task, "failed", session, failure)
            session.send(replies.error(session.session_id, failure, task.task_id))
            return
        if failure is not None:
            self.board.move(task, "failed", session, failure, engine_error=True)
            session.send(replies.error(session.session_id, failure, task.task_id))
            return
        if result is None:
            reason = task.stop_reason or session.close_reason or texts.DISCONNECTED
            self.board.move(task, "cancelled", session, reason)
            session.send(replies.error(session.session_id, reason, task.task_id))
            return
        samples, compute = result
        self.board.move(task, "completed", session, samples=samples, compute=compute)
        timing = task.timing(samples, compute)
        session.send(replies.end(task.task_id, session.session_id, task.delivery, timing, task.cues))

    async def _synthesize(self, ticket: Ticket) -> tuple[int, float] | None:
        """Run the engine and deliver the audio; ``None`` if the task was stopped first.

        Returns the number of samples delivered and the seconds spent inside the engine.
        """
        task, session = ticket
        stream = task.delivery.stream
        run = EngineRun(self.engine, task.job)
        files = SegmentFiles(task.delivery.format, task.delivery.sample_rate)
        cues = timeline(task.job, task.delivery)
        chunks: list[PCM] = []
        samples, compute = 0, 0.0
        finished = False
        try:
            while not finished:
                if task.stop_reason is not None or not session.open:
                    return None
                began = trio.current_time()
                segment = await self._call(run.step)
                compute += trio.current_time() - began
                self.last_progress = trio.current_time()
                if segment is None:
                    finished = True
                    break
                finished = segment.last
                announce(task, session, cues, segment, len(task.cues))
                samples += len(segment.pcm)
                if stream:
                    await deliver(ticket, files, [segment.pcm], last=finished)
                else:
                    chunks.append(segment.pcm)
        finally:
            if not finished and not run.hand_off():
                with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                    await self._call(run.close)
        if not stream:
            await deliver(ticket, files, chunks, last=True)
        return samples, compute
