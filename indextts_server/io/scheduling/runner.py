"""The one task runner: up to N tasks on one engine, a segment each a step, told to each task's sink.

Theory of operation: who may change what.

- A task's events (its cues, its audio, its ``end`` or its error) go to its *sink*: the local board
  and session (`worker.InferenceWorker`), or the broker (`broker.worker.BrokerWorker`). The runner
  decides what happens; the sink says it to whoever listens, and says whether the task must stop
  (``Sink.stopped``: a cancel, a closed session, the drain, a broker that fenced the attempt).
- Rows join between steps (``TaskRunner._take``, the feed's own admission) while fewer than
  ``batch_size`` rows are in, waiting for one only when none is.
- Realtime tasks (``Delivery.realtime``: a voice agent's sentence) have lanes of their own: up to
  ``batch_size`` of them join at the next step however many bulk rows are in, and a step advances
  them first, then as many bulk rows as ``batch_size`` leaves room for. At ``batch_size`` 1 a
  realtime task therefore goes ahead of a running bulk task at its next segment boundary, and that
  task waits, still running, until the realtime one has ended; above 1 it joins the running batch,
  pausing the bulk row that joined last while the batch is full. A waiting row's deadline runs on.
- Each step runs in one worker thread holding the engine (``CapacityLimiter(1)``), handed on to the
  engine's own thread (`home_thread`): it creates the iterators of rows that have just joined
  (``engine.synthesize``) and advances every row by one segment. At ``batch_size`` 1 that is plain
  ``next()``, the library's own path; above it, the engine's ``advance`` when it has one (its rows
  together), else one after another. Whatever a row raises is that row's outcome; the others go on.
- A row whose iterator has no more to give (its last segment, its end, its error) has it closed
  in that same step. Between steps the runner ends rows whose sink says stop (``cancelled``, with
  the sink's reason) and closes their iterators in the engine's thread. A row past its
  ``--task-timeout`` fails at once, even mid-step (the step runs on, its result for that row is
  dropped); its slot is free at the next step, so the next task's time starts when it holds the
  engine.
- A row ends exactly once (``Row.ended``, set before its sink is told): by its last segment, its
  engine error, a stop, its deadline or ``abort``.
- ``abort`` (the drain, once a stop did not take) fails every running row and abandons the step's
  thread: it keeps the limiter until it returns, then closes the rows' iterators itself, and no
  new row joins before that.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Final, Generic, Literal, Protocol, TypeVar, cast

import trio

from ...core import texts
from ...core.contract.protocol import Cue
from ...core.cues import Timeline
from ...core.engine import PCM, Engine, Segment, SynthesisJob
from ...core.plan import silences
from ...core.tasks import Delivery
from ..audio.encoding import SegmentFiles
from ..engines.plan import batched, synthesize
from ..engines.thread import home_thread

log = logging.getLogger("indextts_server")

T = TypeVar("T")

INLINE_SAMPLES: Final = 1 << 18
"""Audio up to this many samples (~12 s) is assembled and encoded on the event loop; longer audio
in a thread, so work that grows with audio length never holds the loop."""
CLOSE_TIMEOUT: Final = 5.0
"""Seconds the runner waits for engine iterators to close before leaving them to their thread."""

Outcome = Segment | BaseException | None
"""What a step gives one row: its next segment, the error it raised, or ``None``: no more."""

Advance = Callable[[Sequence[Iterator[Segment]]], list[Outcome]]
"""An engine's optional ``advance``: several of its iterators one segment on, in one call
(`IndexTTS2Engine.advance` batches them); without it each row is advanced in turn."""

Ending = Literal["failed", "cancelled"]


def advance_each(rows: Sequence[Iterator[Segment]]) -> list[Outcome]:
    """Each row in turn with plain ``next()``, its exception its own."""
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


def timeline(job: SynthesisJob, delivery: Delivery) -> Timeline:
    """Where a task's segments fall in the audio its client receives.

    A ``speed`` below 1 that the engine renders as a time-stretch lengthens its pauses too: they
    may then last up to ``interval_silence / speed``. SSML's breaks are silences too, outside the
    cues, at either end as well (`core.plan.silences`).
    """
    between, opening, closing = silences(job)
    return Timeline(
        between, speed=delivery.speed, sample_rate=delivery.sample_rate, opening=opening, closing=closing
    )


async def encode(files: SegmentFiles, chunks: list[PCM], *, last: bool) -> bytes:
    """``chunks`` as one file of the task's format: on the event loop when cheap and short, else
    in a thread."""
    if files.cheap and sum(len(chunk) for chunk in chunks) <= INLINE_SAMPLES:
        return files.file(chunks, last=last)
    return await trio.to_thread.run_sync(partial(files.file, chunks, last=last), abandon_on_cancel=True)


class Sink(Protocol):
    """Where one task's events go, and whether it must stop."""

    label: str
    """How the log names the task (``session=… task=…``)."""

    def stopped(self) -> str | None:
        """Why the task must stop before its next segment (the reason its client gets), or ``None``."""
        ...

    async def cue(self, cue: Cue) -> bool:
        """A segment's cue, before its audio; False: the task must stop now (see ``stopped``)."""
        ...

    async def audio(self, data: bytes, *, last: bool) -> bool:
        """One encoded file of the task's audio; False: the task must stop now."""
        ...

    async def end(self, samples: int, compute: float) -> None:
        """The task completed: ``samples`` delivered, ``compute`` seconds inside the engine."""
        ...

    async def fail(self, state: Ending, reason: str, *, engine_error: bool = False) -> None:
        """The task ended without completing, with ``reason`` for its client."""
        ...


S = TypeVar("S", bound=Sink)


class Row(Generic[S]):
    """One running task: its sink, its iterator (once made), its audio so far and its deadline."""

    def __init__(self, job: SynthesisJob, delivery: Delivery, sink: S, deadline: float):
        self.job = job
        self.stream = delivery.stream
        self.urgent = False  # a realtime task's, in a feed that gives it precedence (`TaskRunner._row`)
        self.sink = sink
        self.deadline = deadline
        self.files = SegmentFiles(delivery.format, delivery.sample_rate)
        self.cues = timeline(job, delivery)
        self.segments: Iterator[Segment] | BaseException | None = None
        self.made = 0  # segments made so far
        self.chunks: list[PCM] = []
        self.samples = 0
        self.compute = 0.0
        self.ended = False  # its sink was told its end; the row leaves at the next step


class _Step:
    """One step's thread work, shared by the event loop and that thread.

    If the event loop gives up on the thread (``hand_off``: an abort, or the runner cancelled),
    the thread closes the rows' iterators itself when it returns, still holding the engine, so an
    iterator is never closed concurrently with another use of the model nor left to the garbage
    collector.
    """

    def __init__(self, engine: Engine, rows: Sequence[Row[S]], advance: Advance):
        self._engine = engine
        self._rows = rows
        self._advance = advance
        self._lock = threading.Lock()
        self._inside = False
        self._handed_off = False
        self._iterators: list[Iterator[Segment]] = []

    def run(self) -> list[Outcome]:
        with self._lock:
            if self._handed_off:
                return []
            self._inside = True
        try:
            for row in self._rows:
                if row.segments is None:
                    try:
                        row.segments = synthesize(self._engine, row.job)  # a plan's spans chained
                    except Exception as exc:
                        row.segments = exc
            iterators = [row.segments for row in self._rows if isinstance(row.segments, Iterator)]
            self._iterators = iterators
            try:
                outcomes = iter(self._advance(iterators))
            except Exception as exc:  # an engine that cannot say whose it is: every row's
                outcomes = iter([exc] * len(iterators))
            results = [
                next(outcomes) if isinstance(row.segments, Iterator) else row.segments for row in self._rows
            ]
            for row, result in zip(self._rows, results, strict=True):
                more = isinstance(result, Segment) and not result.last
                if isinstance(row.segments, Iterator) and not more:  # closed now, in this call
                    close_rows([row.segments])
                    row.segments = None
            return results
        finally:
            with self._lock:
                self._inside = False
                handed_off = self._handed_off
            if handed_off:
                close_rows(self._iterators)

    def hand_off(self) -> bool:
        """The event loop is done with this step: True if a thread inside will close its rows."""
        with self._lock:
            self._handed_off = True
            return self._inside


class TaskRunner(Generic[S]):
    """Runs up to ``batch_size`` tasks on one engine; a feed (the subclass's ``_take``) admits them.

    The engine is blocking, so every call into it goes through ``trio.to_thread.run_sync`` under a
    ``CapacityLimiter(1)``, and that pool thread hands the call to the engine's own thread
    (`home_thread`): one thread, always the same one, ever touches the model.
    """

    def __init__(
        self, engine: Engine, *, batch_size: int = 1, task_timeout: float = 0.0, name: str = "worker-0"
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.engine = engine
        self.thread = home_thread(engine)
        self.batch_size = batch_size
        self.task_timeout = task_timeout
        self.name = name
        self.limiter = trio.CapacityLimiter(1)
        self.rows: list[Row[S]] = []
        self.last_progress = 0.0
        self.running = False
        self.waiting_for_engine = False  # an abandoned thread is still inside the engine
        advance = cast("Advance | None", getattr(engine, "advance", None))  # an optional capability
        # One row is the library's own path, plain next(); several go through the engine's advance.
        # A plan's span joins the batch as its text alone would (`plan.batched`).
        self._advance: Advance = batched(advance) if advance is not None and batch_size > 1 else advance_each
        self._scope: trio.CancelScope | None = None
        self._abort_reason: str | None = None
        self._stepping: list[Row[S]] = []  # the rows of the step in progress
        self._expiry = trio.CancelScope()  # `_expire` sleeps in it until a row's deadline

    @property
    def live(self) -> list[Row[S]]:
        """The rows whose task has not ended."""
        return [row for row in self.rows if not row.ended]

    @property
    def busy(self) -> bool:
        """Running a task, or waiting for an abandoned step to leave the engine."""
        return bool(self.rows) or self.waiting_for_engine

    def abort(self, reason: str) -> None:
        """Fail every running task now with ``reason``, abandoning a step in progress."""
        if not self.live:
            return
        self._abort_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_progress = trio.current_time()
        self.running = True
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire)
                await self._serve()
                nursery.cancel_scope.cancel()
        finally:
            self.running = False

    async def _take(self, *, wait: bool, bulk: bool = True) -> Row[S] | None:
        """The feed: the next task to join, started (``None``: nothing after all, ask again).
        Realtime tasks come first; ``bulk`` False: only a realtime one may join now.

        Raises ``trio.WouldBlock`` when none may join now without waiting (``wait`` False), and
        ``trio.EndOfChannel`` once no task will ever come again.
        """
        raise NotImplementedError

    def _row(self, job: SynthesisJob, delivery: Delivery, sink: S, *, urgent: bool = False) -> Row[S]:
        """A row for a task that starts now; ``urgent``: in the realtime lane."""
        deadline = trio.current_time() + self.task_timeout if self.task_timeout > 0 else math.inf
        row = Row(job, delivery, sink, deadline)
        row.urgent = urgent
        return row

    async def _serve(self) -> None:
        feeding = True
        while feeding or self.rows:
            await self._aborted()
            await self._engine_free()
            await self._leave()
            feeding = await self._join(feeding)
            if self.rows:
                await self._step()

    async def _join(self, feeding: bool) -> bool:
        """Let tasks join while slots are free (``batch_size`` for bulk tasks, as many again for
        realtime ones); False once the feed has ended."""
        while feeding:
            urgent = sum(row.urgent for row in self.rows)
            bulk = len(self.rows) - urgent < self.batch_size
            if not bulk and urgent >= self.batch_size:
                break
            try:
                row = await self._take(wait=not self.rows, bulk=bulk)
            except trio.WouldBlock:
                break
            except trio.EndOfChannel:
                return False
            if row is not None:
                self.rows.append(row)
        return feeding

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

    async def _leave(self) -> None:
        """End rows that must stop or are past their deadline; let ended rows go, closing their
        iterators in the engine's thread."""
        now = trio.current_time()
        for row in self.live:
            reason = row.sink.stopped()
            if reason is not None:
                await self._end(row, "cancelled", reason)
            elif row.deadline <= now:
                await self._time_out(row)
        gone = [row for row in self.rows if row.ended]
        if not gone:
            return
        self.rows = [row for row in self.rows if not row.ended]
        iterators = [row.segments for row in gone if isinstance(row.segments, Iterator)]
        if iterators:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await self._call(close_rows, iterators)
        self.last_progress = trio.current_time()

    def _active(self) -> list[Row[S]]:
        """The rows the next step advances: realtime ones first, then bulk ones in the order they
        joined, ``batch_size`` in all; the rest wait, running, for a step with room."""
        urgent = [row for row in self.rows if row.urgent]
        if not urgent:
            return list(self.rows)
        bulk = [row for row in self.rows if not row.urgent]
        return urgent + bulk[: max(0, self.batch_size - len(urgent))]

    async def _step(self) -> None:
        rows = self._active()
        began = trio.current_time()
        self._stepping = rows
        self._expiry.deadline = min(row.deadline for row in rows)  # `_expire` wakes then
        try:
            outcomes = await self._advance_rows(rows)
        finally:
            self._stepping = []
            self._expiry.deadline = math.inf
        spent = trio.current_time() - began
        self.last_progress = trio.current_time()
        if outcomes is not None:
            with trio.CancelScope() as self._scope:
                for row, outcome in zip(rows, outcomes, strict=True):
                    row.compute += spent
                    if not row.ended:
                        await self._settle(row, outcome)
            self._scope = None
        await self._aborted()

    async def _advance_rows(self, rows: list[Row[S]]) -> list[Outcome] | None:
        """One step in the engine's thread: each row's outcome, or ``None`` if ``abort`` gave up on it."""
        step = _Step(self.engine, rows, self._advance)
        outcomes: list[Outcome] | None = None
        with trio.CancelScope() as self._scope:
            if self._abort_reason is not None:  # aborted since the last step
                self._scope.cancel()
            try:
                outcomes = await self._call(step.run)
            finally:
                self._scope = None
                if outcomes is None and step.hand_off():  # the thread closes them on its way out
                    for row in rows:
                        row.segments = None
        return outcomes

    async def _expire(self) -> None:
        """For the runner's life: fail each row of the step in progress at its deadline, while the
        step runs on (one long-lived task, so a step costs no task of its own)."""
        while True:
            deadline = min((row.deadline for row in self._stepping if not row.ended), default=math.inf)
            with trio.CancelScope(deadline=deadline) as self._expiry:
                await trio.sleep_forever()
            now = trio.current_time()
            for row in list(self._stepping):
                if not row.ended and row.deadline <= now:
                    await self._time_out(row)

    async def _time_out(self, row: Row[S]) -> None:
        log.warning("task timed out %s", row.sink.label)
        await self._end(row, "failed", texts.task_timed_out(self.task_timeout))

    async def _aborted(self) -> None:
        """After ``abort``: fail the rows still running with its reason."""
        reason, self._abort_reason = self._abort_reason, None
        if reason is None:
            return
        for row in self.live:
            log.warning("task abandoned %s", row.sink.label)
            await self._end(row, "failed", reason)

    async def _settle(self, row: Row[S], outcome: Outcome) -> None:
        """Tell a row's sink what its step made: a segment (cue, then audio), its end, or its error."""
        sink = row.sink
        if isinstance(outcome, BaseException):
            log.error("engine failed %s", sink.label, exc_info=outcome)
            failure = texts.engine_failed(str(outcome) or type(outcome).__name__)
            await self._end(row, "failed", failure, engine_error=True)
            return
        if outcome is not None:
            cue = row.cues.add(row.made, outcome.text, outcome.pcm, last=outcome.last)
            row.made += 1
            row.samples += len(outcome.pcm)
            if not await sink.cue(cue):
                await self._stop(row)
                return
            if row.stream:
                data = await encode(row.files, [outcome.pcm], last=outcome.last)
                if not await sink.audio(data, last=outcome.last):
                    await self._stop(row)
                    return
            else:
                row.chunks.append(outcome.pcm)
            if not outcome.last:
                return
        if not row.stream:
            await sink.audio(await encode(row.files, row.chunks, last=True), last=True)
        if not row.ended:
            row.ended = True
            await sink.end(row.samples, row.compute)

    async def _stop(self, row: Row[S]) -> None:
        await self._end(row, "cancelled", row.sink.stopped() or texts.CANCELLED)

    async def _end(self, row: Row[S], state: Ending, reason: str, *, engine_error: bool = False) -> None:
        """The row's task ends without completing; its sink is told even if the runner is cancelled."""
        if row.ended:
            return
        row.ended = True
        with trio.CancelScope(shield=True):
            await row.sink.fail(state, reason, engine_error=engine_error)
