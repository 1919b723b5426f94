"""The service: what every transport shares (settings, audio sources, scheduling, sessions, drain)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final, Protocol

import trio

from ...core import texts
from ...core.config import ServerConfig
from ...core.contract.jobs import unfit
from ...core.engine import Engine, SynthesisJob
from ...core.tasks import Delivery
from ..audio.paths import AudioPaths, resolve_roots
from ..audio.sources import AudioSources
from ..audio.voices import VoiceLibrary
from ..scheduling.board import TaskBoard, TaskObserver
from ..scheduling.recipient import Recipient
from ..scheduling.scheduler import EmbeddedScheduler, Scheduler
from ..scheduling.worker import InferenceWorker
from .session import OutboxBudget, Session

log = logging.getLogger("indextts_server")

GOING_AWAY: Final = 1001
"""The close code of a session the service ends (drain, idle): the contract's "going away"."""
SESSIONS_GRACE: Final = 5.0
"""Seconds the drain waits for closed sessions to finish their goodbyes before the service stops."""


class ServiceMetrics(TaskObserver, Protocol):
    """What the service and its transports report to the metrics, beyond finished tasks."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def task_refused(self) -> None: ...

    def unexpected_error(self) -> None: ...


class Refused(Exception):
    """A request the service turns away before it becomes a task; ``str()`` is the client's text."""


class Unfit(Refused):
    """A request for what the model cannot do (`core.contract.jobs.unfit`); ``field`` names the
    request field, ``str()`` is the client's text."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Service:
    """The speech service behind every transport. ``run`` runs it until ``drain`` has ended it.

    It owns the settings, the audio files and voices clients may name (`sources`), the
    scheduler (the embedded board and its inference tasks, or the cluster's broker gateway), the
    sessions of every transport (`hosting`), readiness and the drain. A transport (the contract's
    WebSocket, the HTTP API) turns its clients' requests into calls on it and its sessions'
    outboxes into frames or responses; it never needs another transport.

    One engine per inference task: the contract's one-at-a-time behaviour is one engine; several
    engines (one per device) take tasks from the same FIFO.
    """

    def __init__(
        self,
        config: ServerConfig,
        engines: Engine | Sequence[Engine] = (),
        *,
        metrics: ServiceMetrics | None = None,
        scheduler: Scheduler | None = None,
    ):
        self.config = config
        if scheduler is None:
            scheduler = EmbeddedScheduler(
                [engines] if not isinstance(engines, Sequence) else list(engines),
                ttl=config.task_ttl,
                max_queue=config.max_queue,
                task_timeout=config.task_timeout,
                metrics=metrics,
                batch_size=config.batch_size,
            )
        self.scheduler = scheduler
        self.metrics = metrics
        self.budget = OutboxBudget(config.max_session_buffer, config.max_total_buffer)
        self.sources = AudioSources(
            AudioPaths(resolve_roots(config.audio_roots)),
            VoiceLibrary(config.voices_dir, config.voice_limits, config.default_voice),
        )
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self.drain_started = trio.Event()
        self.listening = False  # the contract's port is open (set by its transport)
        self._sessions_gone = trio.Event()  # set when the last session closes while draining
        self._stopped = trio.Event()

    @property
    def paths(self) -> AudioPaths:
        """The audio paths clients may name (read through `sources`, their one owner)."""
        return self.sources.paths

    @property
    def voices(self) -> VoiceLibrary:
        """The voice library (read through `sources`, its one owner)."""
        return self.sources.voices

    @property
    def board(self) -> TaskBoard:
        """The in-memory board (embedded scheduling only)."""
        assert isinstance(self.scheduler, EmbeddedScheduler)
        return self.scheduler.board

    @property
    def workers(self) -> list[InferenceWorker]:
        """This process's inference tasks (embedded scheduling only)."""
        assert isinstance(self.scheduler, EmbeddedScheduler)
        return self.scheduler.workers

    @property
    def ready(self) -> bool:
        return self.listening and not self.draining and self.scheduler.ready

    @property
    def busy_workers(self) -> int:
        return self.scheduler.busy

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the scheduler; return once the drain has finished (or when cancelled)."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.scheduler.run)
            task_status.started()
            await self._stopped.wait()
            nursery.cancel_scope.cancel()

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, finish the running tasks, tell everyone, stop.

        Transports close their listeners when `drain_started` is set. Running tasks get
        ``drain_timeout`` seconds, then stop at their next segment boundary. Waiting tasks are
        cancelled with a clear error. Every session is closed with 1001.
        """
        if self.draining:
            return
        self.draining = True
        self.drain_started.set()
        await self.scheduler.drain(self.config.drain_timeout)
        for session in list(self.sessions.values()):
            session.close(GOING_AWAY, texts.CLOSE_SHUTTING_DOWN)
        with trio.move_on_after(SESSIONS_GRACE):
            if self.sessions:
                await self._sessions_gone.wait()
        self._stopped.set()

    @asynccontextmanager
    async def hosting(self, session: Session) -> AsyncIterator[None]:
        """Count ``session`` among the service's while the block runs (a WebSocket connection, or
        one HTTP request); when it ends, its waiting tasks are cancelled and a running one stops."""
        self.sessions[session.session_id] = session
        try:
            yield
        finally:
            session.release()
            del self.sessions[session.session_id]
            if self.draining and not self.sessions:
                self._sessions_gone.set()
            with trio.move_on_after(5, shield=True):
                await self.scheduler.session_closed(session)

    def admit(self, session: Session) -> None:
        """Whether ``session`` may ask for one more task now; `Refused` says why not."""
        if self.draining:
            raise Refused(texts.SHUTTING_DOWN)
        limit = self.config.max_pending_per_session
        if limit and len(session.tasks) >= limit:
            raise Refused(texts.too_many_in_flight(limit))

    async def submit(self, session: Recipient, job: SynthesisJob, delivery: Delivery) -> None:
        """Queue ``job`` for ``session`` (its ``queued`` reply goes to the session); `Refused` if
        not, `Unfit` first if the model cannot do what it asks.

        ``session`` is whatever scheduling delivers to: a session, or one voice-agent sentence."""
        problem = unfit(job, self.scheduler.capabilities)
        if problem is not None:
            raise Unfit(problem.field, problem.message)
        refusal = await self.scheduler.submit(session, job, delivery)
        if refusal is None:
            return
        if self.metrics is not None and refusal != texts.SHUTTING_DOWN:
            self.metrics.task_refused()
        raise Refused(refusal)
