"""The single inference task: takes tasks from the global FIFO and runs the engine in a thread."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import numpy as np
import trio

from ..core.engine import PCM, Engine
from ..core.protocol import End, Error, Start
from .audio import wav_bytes
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
        session.send(Start(task_id=task.task_id, session_id=session.session_id))
        try:
            pcm = await self._synthesize(ticket)
        except Exception as exc:
            log.exception("engine failed session=%s task=%s", session.session_id, task.task_id)
            message = engine_error(exc)
            self.board.move(task, "failed", session, message)
            session.send(Error(task_id=task.task_id, session_id=session.session_id, message=message))
            return
        if pcm is None:
            self.board.move(task, "cancelled", session, "客户端已断开连接")
            return
        self.board.move(task, "completed", session)
        session.deliver(wav_bytes(pcm))
        session.send(End(task_id=task.task_id, session_id=session.session_id))

    async def _synthesize(self, ticket: Ticket) -> PCM | None:
        """The whole utterance, or ``None`` if the session went away before it was done."""
        segments: Iterator[PCM] = await self._call(self.engine.synthesize, ticket.task.job)
        chunks: list[PCM] = []
        try:
            while ticket.session.open:
                chunk = await self._call(next, segments, None)
                if chunk is None:
                    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
                chunks.append(chunk)
            return None
        finally:
            close: Callable[[], object] | None = getattr(segments, "close", None)
            if close is not None:
                with trio.CancelScope(shield=True):
                    await self._call(close)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
