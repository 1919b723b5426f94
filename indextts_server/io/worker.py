"""The single inference task: takes tasks from the global FIFO and runs the engine in a thread."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import trio

from ..core.engine import PCM, SAMPLE_RATE, Engine
from ..core.protocol import CANCELLED_MESSAGE, DISCONNECTED_MESSAGE, End, Error, Start
from .audio import encode_audio
from .board import TaskBoard, Ticket

log = logging.getLogger("indextts_server")

T = TypeVar("T")


def engine_error(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"音频生成失败: {detail}"


class InferenceWorker:
    """Runs one task at a time, in queue order, whoever sent it.

    The engine is blocking, so every call into it goes through ``trio.to_thread.run_sync``
    under a ``CapacityLimiter(1)``: one thread at a time ever touches the model. The engine is
    advanced one segment per call, so a task whose client has gone stops at the next segment.
    """

    def __init__(self, engine: Engine, board: TaskBoard):
        self.engine = engine
        self.board = board
        self.limiter = trio.CapacityLimiter(1)
        self.current: Ticket | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for ticket in self.board.receive:
            if ticket.task.state != "pending":
                continue  # cancelled while it waited
            self.current = ticket
            try:
                await self._process(ticket)
            finally:
                self.current = None

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
            log.exception("engine failed session=%s task=%s", session.session_id, task.task_id)
            message = engine_error(exc)
            self.board.move(task, "failed", session, message)
            session.send(Error(task_id=task.task_id, session_id=session.session_id, message=message))
            return
        if result is None:
            reason = CANCELLED_MESSAGE if task.cancel_requested else DISCONNECTED_MESSAGE
            self.board.move(task, "cancelled", session, reason)
            session.send(Error(task_id=task.task_id, session_id=session.session_id, message=reason))
            return
        samples, compute = result
        self.board.move(task, "completed", session)
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
        segments: Iterator[PCM] = await self._call(self.engine.synthesize, task.job)
        chunks: list[PCM] = []
        samples, compute = 0, 0.0
        try:
            while True:
                if task.cancel_requested or not session.open:
                    return None
                began = trio.current_time()
                chunk = await self._call(next, segments, None)
                compute += trio.current_time() - began
                if chunk is None:
                    break
                samples += len(chunk)
                if stream:
                    await self._deliver(ticket, chunk)
                else:
                    chunks.append(chunk)
        finally:
            close: Callable[[], object] | None = getattr(segments, "close", None)
            if close is not None:
                with trio.CancelScope(shield=True):
                    await self._call(close)
        if not stream:
            await self._deliver(ticket, np.concatenate(chunks) if chunks else np.zeros(0, np.int16))
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

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
