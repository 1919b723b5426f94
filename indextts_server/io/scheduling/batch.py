"""The batched inference task (``--batch-size N``): up to N running tasks advance a segment a step.

Theory of operation: who may change what (as in `worker`, per row).

- A task joins at the next step from the head of the FIFO while a slot is free: it moves to
  ``running`` and gets ``start`` then, so ``start`` goes out in queue order and ``queued``
  positions (the board's waiting tickets) count only tasks that have not started.
- Each step runs in one worker thread holding the engine (``CapacityLimiter(1)``): it creates
  the iterators of rows that have just joined (``engine.synthesize``) and advances every row by
  one segment, together when the engine can (``advance``), else one after another. Whatever a
  row raises is that row's outcome; the other rows go on.
- Between steps the worker ends rows whose task was cancelled (``stop_reason``) or whose session
  closed, and closes their iterators in the engine's thread. A row past its ``--task-timeout``
  fails at once, even mid-step (the step runs on; its result for that row is dropped), and its
  slot is free at the next step.
- ``abort`` (the drain, once a stop did not take) fails every running row and abandons the step's
  thread: it keeps the limiter until it returns, then closes the rows' iterators itself, and no
  new task joins before that.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, cast

import trio

from ...core import texts
from ...core.contract import replies
from ...core.engine import PCM, Engine, Segment
from ..audio.encoding import SegmentFiles
from ..engines.plan import batched, synthesize
from .board import TaskBoard, Ticket
from .worker import CLOSE_TIMEOUT, EngineTask, announce, deliver, timeline

log = logging.getLogger("indextts_server")

Outcome = Segment | BaseException | None
"""What a step gives one row: its next segment, the error it raised, or ``None``: no more."""


Advance = Callable[[Sequence[Iterator[Segment]]], list[Outcome]]
"""An engine's optional ``advance``: several of its iterators one segment on, in one call
(`IndexTTS2Engine.advance` batches them); without it each row is advanced in turn."""


def advance_each(rows: Sequence[Iterator[Segment]]) -> list[Outcome]:
    """For engines without ``advance``: each row in turn, its exception its own."""
    outcomes: list[Outcome] = []
    for row in rows:
        try:
            outcomes.append(next(row))
        except StopIteration:
            outcomes.append(None)
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def close_rows(rows: Sequence[Iterator[Segment]]) -> None:
    """In a thread holding the engine: stop these iterators (each ``close`` is idempotent)."""
    for row in rows:
        close: Callable[[], object] | None = getattr(row, "close", None)
        if close is not None:
            close()


class _Row:
    """One running task: its iterator (once made), its audio so far and its deadline."""

    def __init__(self, ticket: Ticket, deadline: float):
        self.ticket = ticket
        self.deadline = deadline
        task = ticket.task
        self.files = SegmentFiles(task.delivery.format, task.delivery.sample_rate)
        self.cues = timeline(task.job, task.delivery)
        self.segments: Iterator[Segment] | BaseException | None = None
        self.chunks: list[PCM] = []
        self.samples = 0
        self.compute = 0.0
        self.ended = False  # a final state was sent; the row leaves at the next step


class _Step:
    """One step's thread work, shared by the event loop and that thread (see `worker.EngineRun`)."""

    def __init__(self, engine: Engine, rows: list[_Row]):
        self._engine = engine
        self._rows = rows
        self._lock = threading.Lock()
        self._inside = False
        self._handed_off = False

    def run(self) -> list[Outcome]:
        with self._lock:
            if self._handed_off:
                return []
            self._inside = True
        try:
            for row in self._rows:
                if row.segments is None:
                    try:
                        row.segments = synthesize(self._engine, row.ticket.task.job)
                    except Exception as exc:
                        row.segments = exc
            iterators = [row.segments for row in self._rows if isinstance(row.segments, Iterator)]
            advance = cast("Advance | None", getattr(self._engine, "advance", None))  # an optional capability
            step = advance_each if advance is None else batched(advance)  # a plan's span joins the batch
            try:
                outcomes = iter(step(iterators))
            except Exception as exc:  # an engine that cannot say whose it is: every row's
                outcomes = iter([exc] * len(iterators))
            return [
                next(outcomes) if isinstance(row.segments, Iterator) else row.segments for row in self._rows
            ]
        finally:
            with self._lock:
                self._inside = False
                handed_off = self._handed_off
            if handed_off:
                close_rows([row.segments for row in self._rows if isinstance(row.segments, Iterator)])

    def hand_off(self) -> bool:
        with self._lock:
            self._handed_off = True
            return self._inside


class BatchWorker(EngineTask):
    """Runs up to ``batch_size`` tasks together, joining them in queue order, whoever sent them."""

    def __init__(
        self,
        engine: Engine,
        board: TaskBoard,
        receive: trio.MemoryReceiveChannel[Ticket],
        *,
        batch_size: int,
        task_timeout: float = 0.0,
        name: str = "worker-0",
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__(engine, board, receive, task_timeout=task_timeout, name=name)
        self.batch_size = batch_size
        self.rows: list[_Row] = []
        self._step_scope: trio.CancelScope | None = None

    @property
    def tasks(self) -> list[Ticket]:
        """The running tasks (not yet in a final state)."""
        return [row.ticket for row in self.rows if not row.ended]

    @property
    def busy(self) -> bool:
        return bool(self.rows) or self.waiting_for_engine

    def stop(self, reason: str) -> None:
        """Ask every running task to stop at its next segment boundary with ``reason``."""
        for task, _ in self.tasks:
            if task.stop_reason is None:
                task.stop_reason = reason

    def abort(self, reason: str) -> None:
        """Fail every running task now with ``reason``, abandoning a step in progress."""
        for row in self.rows:
            if not row.ended:
                task, session = row.ticket
                log.warning("task abandoned session=%s task=%s", session.session_id, task.task_id)
                self._end(row, "failed", reason)
        if self._step_scope is not None:
            self._step_scope.cancel()

    async def _serve(self) -> None:
        async with self.receive:
            open_channel = True
            while open_channel or self.rows:
                await self._engine_free()
                await self._leave()
                open_channel = await self._join(open_channel)
                if self.rows:
                    await self._step()

    async def _join(self, open_channel: bool) -> bool:
        """Start tasks from the head of the FIFO while slots are free; False once it is closed."""
        while open_channel and len(self.rows) < self.batch_size:
            try:
                ticket = self.receive.receive_nowait() if self.rows else await self.receive.receive()
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                return False
            task, session = ticket
            if task.state != "pending":
                continue  # cancelled while it waited
            self.board.move(task, "running", session)
            session.send(replies.start(task.task_id, session.session_id, task.delivery))
            now = trio.current_time()
            self.rows.append(_Row(ticket, now + self.task_timeout if self.task_timeout > 0 else float("inf")))
        return open_channel

    async def _leave(self) -> None:
        """End rows that were stopped, and let ended rows go, closing their iterators."""
        now = trio.current_time()
        for row in self.rows:
            task, session = row.ticket
            if row.ended:
                continue
            if task.stop_reason is not None or not session.open:
                self._end(row, "cancelled", task.stop_reason or session.close_reason or texts.DISCONNECTED)
            elif row.deadline <= now:
                self._time_out(row)
        gone = [row for row in self.rows if row.ended]
        if not gone:
            return
        self.rows = [row for row in self.rows if not row.ended]
        iterators = [row.segments for row in gone if isinstance(row.segments, Iterator)]
        if iterators:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._call(close_rows, iterators)
        self.last_progress = trio.current_time()

    async def _step(self) -> None:
        rows = list(self.rows)
        step = _Step(self.engine, rows)
        began = trio.current_time()
        outcomes: list[Outcome] | None = None
        closing = False
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire, rows)
            with trio.CancelScope() as scope:
                self._step_scope = scope
                try:
                    outcomes = await self._call(step.run)
                finally:
                    self._step_scope = None
                    closing = outcomes is None and step.hand_off()
            nursery.cancel_scope.cancel()
        spent = trio.current_time() - began
        self.last_progress = trio.current_time()
        if outcomes is None:  # aborted: every row has ended
            if closing:  # the thread closes them on its way out
                for row in rows:
                    row.segments = None
            return
        for row, outcome in zip(rows, outcomes, strict=True):
            row.compute += spent
            if not row.ended:
                await self._settle(row, outcome)

    async def _expire(self, rows: list[_Row]) -> None:
        """Fail each row at its deadline, while the step runs on."""
        for row in sorted(rows, key=lambda row: row.deadline):
            await trio.sleep_until(row.deadline)
            if not row.ended:
                self._time_out(row)

    def _time_out(self, row: _Row) -> None:
        task, session = row.ticket
        log.warning("task timed out session=%s task=%s", session.session_id, task.task_id)
        self._end(row, "failed", texts.task_timed_out(self.task_timeout))

    async def _settle(self, row: _Row, outcome: Outcome) -> None:
        task, session = row.ticket
        if isinstance(outcome, BaseException):
            failure = texts.engine_failed(str(outcome) or type(outcome).__name__)
            log.error("engine failed session=%s task=%s", session.session_id, task.task_id, exc_info=outcome)
            self._end(row, "failed", failure, engine_error=True)
            return
        if outcome is not None:
            announce(task, session, row.cues, outcome, len(task.cues))
            row.samples += len(outcome.pcm)
            if task.delivery.stream:
                await deliver(row.ticket, row.files, [outcome.pcm], last=outcome.last)
            else:
                row.chunks.append(outcome.pcm)
            if not outcome.last:
                return
        if not task.delivery.stream:
            await deliver(row.ticket, row.files, row.chunks, last=True)
        if not row.ended:  # a deadline may have passed while the audio was encoded
            self.board.move(task, "completed", session, samples=row.samples, compute=row.compute)
            timing = task.timing(row.samples, row.compute)
            session.send(replies.end(task.task_id, session.session_id, task.delivery, timing, task.cues))
            row.ended = True

    def _end(
        self, row: _Row, state: Literal["failed", "cancelled"], reason: str, *, engine_error: bool = False
    ) -> None:
        task, session = row.ticket
        row.ended = True
        if state == "failed":
            self.board.move(task, "failed", session, reason, engine_error=engine_error)
        else:
            self.board.move(task, "cancelled", session, reason)
        session.send(replies.error(session.session_id, reason, task.task_id))
