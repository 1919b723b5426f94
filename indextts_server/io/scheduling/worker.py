"""The inference task: takes tasks from the global FIFO and runs its engine in a worker thread."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import trio

from ...core.engine import PCM, SAMPLE_RATE, Engine, Segment, SynthesisJob
from ...core.protocol import DISCONNECTED_MESSAGE, End, Error, Start
from ..audio.encoding import encode_audio
from .board import TaskBoard, Ticket

log = logging.getLogger("indextts_server")

T = TypeVar("T")


def engine_error(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"音频生成失败: {detail}"


def task_timed_out(seconds: float) -> str:
    return f"任务超时：超过 {seconds:g} 秒未完成"


def _begin(engine: Engine, job: SynthesisJob) -> tuple[Iterator[Segment], Segment | None]:
    segments = engine.synthesize(job)
    return segments, next(segments, None)


class TaskTimeout(Exception):
    """The task ran past ``--task-timeout``."""


class InferenceWorker:
    """Runs one task at a time, in queue order, whoever sent it.

    The engine is blocking, so every call into it goes through ``trio.to_thread.run_sync``
    under a ``CapacityLimiter(1)``: one thread at a time ever touches the model. The engine is
    advanced one segment per call, so a task that is cancelled, or whose client has gone, stops
    at the next segment boundary.

    A task that outlives ``task_timeout`` fails at once and the worker moves on to the next
    task; the thread still inside the engine is abandoned but keeps the limiter until it
    returns, so the model is never entered twice at the same time.
    """

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
        self.board = board
        self.receive = receive
        self.task_timeout = task_timeout
        self.name = name
        self.limiter = trio.CapacityLimiter(1)
        self.current: Ticket | None = None
        self.last_progress = 0.0
        self.running = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_progress = trio.current_time()
        self.running = True
        task_status.started()
        try:
            await self._serve()
        finally:
            self.running = False

    async def _serve(self) -> None:
        async with self.receive:
            async for ticket in self.receive:
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
        start = Start(task_id=task.task_id, session_id=session.session_id)
        if task.delivery.extended:
            start.format = task.delivery.format
            start.sample_rate = SAMPLE_RATE
            start.stream = task.delivery.stream
        session.send(start)
        try:
            result = await self._synthesize(ticket)
        except Exception as exc:
            if isinstance(exc, TaskTimeout):
                message = task_timed_out(self.task_timeout)
                log.warning("task timed out session=%s task=%s", session.session_id, task.task_id)
            else:
                message = engine_error(exc)
                log.exception("engine failed session=%s task=%s", session.session_id, task.task_id)
            self.board.move(task, "failed", session, message, engine_error=not isinstance(exc, TaskTimeout))
            session.send(Error(task_id=task.task_id, session_id=session.session_id, message=message))
            return
        if result is None:
            reason = task.stop_reason or DISCONNECTED_MESSAGE
            self.board.move(task, "cancelled", session, reason)
            session.send(Error(task_id=task.task_id, session_id=session.session_id, message=reason))
            return
        samples, compute = result
        self.board.move(task, "completed", session, samples=samples, compute=compute)
        end = End(task_id=task.task_id, session_id=session.session_id)
        if task.delivery.extended:
            end.timing = task.timing(samples, compute)
        session.send(end)

    async def _synthesize(self, ticket: Ticket) -> tuple[int, float] | None:
        """Run the engine and deliver the audio; ``None`` if the task was stopped first.

        Returns the number of samples delivered and the seconds spent inside the engine.
        """
        task, session = ticket
        stream = task.delivery.stream
        deadline = math.inf
        if self.task_timeout > 0:
            deadline = trio.current_time() + self.task_timeout
        segments: Iterator[Segment] | None = None
        chunks: list[PCM] = []
        samples, compute = 0, 0.0
        finished = abandoned = False
        try:
            while not finished:
                if task.stop_reason is not None or not session.open:
                    return None
                began = trio.current_time()
                try:
                    if segments is None:
                        # Starting the engine and its first segment share one thread hop.
                        segments, segment = await self._call(deadline, _begin, self.engine, task.job)
                    else:
                        segment = await self._call(deadline, next, segments, None)
                except TaskTimeout:
                    abandoned = True
                    raise
                compute += trio.current_time() - began
                self.last_progress = trio.current_time()
                if segment is None:
                    break
                finished = segment.last
                samples += len(segment.pcm)
                if stream:
                    await self._deliver(ticket, segment.pcm)
                else:
                    chunks.append(segment.pcm)
        finally:
            close: Callable[[], object] | None = getattr(segments, "close", None)
            if close is not None and not finished and not abandoned:
                with trio.CancelScope(shield=True):
                    await self._call(math.inf, close)
        if not stream:
            whole = chunks[0] if len(chunks) == 1 else np.concatenate(chunks or [np.zeros(0, np.int16)])
            await self._deliver(ticket, whole)
        return samples, compute

    async def _deliver(self, ticket: Ticket, pcm: PCM) -> None:
        task, session = ticket
        audio_format = task.delivery.format
        if audio_format in ("wav", "pcm"):
            data = encode_audio(pcm, audio_format)
        else:
            data = await trio.to_thread.run_sync(encode_audio, pcm, audio_format)
        if task.first_audio_at is None:
            task.first_audio_at = trio.current_time()
        session.deliver(data)

    async def _call(self, deadline: float, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread; past ``deadline`` the thread is abandoned."""
        if deadline == math.inf:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        with trio.move_on_at(deadline):
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter, abandon_on_cancel=True)
        raise TaskTimeout
