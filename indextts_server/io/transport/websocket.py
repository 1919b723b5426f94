"""The WebSocket server: a nursery per connection, the inference task(s), the sweeper, the drain."""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final, Protocol
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from ...core import texts
from ...core.config import ServerConfig
from ...core.contract import replies
from ...core.contract.decode import RequestError, decode_request
from ...core.contract.jobs import audio_fields, delivery_from, job_from
from ...core.contract.protocol import Cancel, TaskStatusQuery, TtsStream
from ...core.engine import Engine
from ...core.voices import VoiceError
from ..audio.paths import AudioPathError, AudioPaths, resolve_roots
from ..audio.sources import AudioSources
from ..audio.voices import VoiceLibrary
from ..scheduling.board import TaskBoard, TaskObserver
from ..scheduling.scheduler import EmbeddedScheduler, Scheduler
from ..scheduling.worker import InferenceWorker
from ..service.session import Close, OutboxBudget, Session
from .containment import ContainedWebSocketServer, Containment

log = logging.getLogger("indextts_server")


GOING_AWAY: Final = 1001


def endpoint_url(endpoint: object) -> str:
    address = str(getattr(endpoint, "address", endpoint))
    port = getattr(endpoint, "port", "?")
    host = f"[{address}]" if ":" in address else address
    return f"ws://{host}:{port}"


def remote(peer: WebSocketRequest | WebSocketConnection) -> str:
    """The peer's address for the log; the client may already be gone (reset after its handshake),
    and then trio-websocket's ``remote`` raises."""
    try:
        return str(peer.remote)
    except OSError as error:
        return f"gone ({error.strerror})"


class ServerMetrics(TaskObserver, Protocol):
    """What the server reports to the metrics, beyond finished tasks."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def task_refused(self) -> None: ...

    def unexpected_error(self) -> None: ...


class Server:
    """The service. ``run`` serves until ``drain`` (or cancellation) ends it.

    One engine per inference task: the contract's one-at-a-time behaviour is one engine; several
    engines (one per device) take tasks from the same FIFO.
    """

    def __init__(
        self,
        config: ServerConfig,
        engines: Engine | Sequence[Engine] = (),
        *,
        metrics: ServerMetrics | None = None,
        listeners: Sequence[trio.SocketListener] = (),
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
        self.listening = False
        self.port = config.port  # the bound port once listening (``--port 0`` picks one)
        self._adopted = list(listeners)
        self._listen_scope = trio.CancelScope()
        self._stop_scope = trio.CancelScope()
        self._sessions_gone = trio.Event()  # set when the last session closes while draining
        self.drain_started = trio.Event()
        self.containment = Containment("session", metrics)

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

    async def run(self, *, task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED) -> None:
        with self._stop_scope:
            async with trio.open_nursery() as services:
                await services.start(self.scheduler.run)
                async with trio.open_nursery() as connections:
                    server = await connections.start(self._listen, connections)
                    task_status.started(server)
                if self.draining:
                    # The WebSocket connections are gone, but HTTP requests may still have tasks
                    # running: the drain ends this (``_stop_scope``) once every task is done.
                    await trio.sleep_forever()
                services.cancel_scope.cancel()

    async def _listen(
        self,
        connections: trio.Nursery,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # The listener runs in a nursery of its own, so the drain can close it (cancelling this
        # scope) while the connections it accepted, which live in ``connections``, carry on.
        with self._listen_scope:
            async with trio.open_nursery() as listener:
                sockets = self._adopted or await trio.open_tcp_listeners(
                    self.config.port, host=self.config.host
                )
                server = ContainedWebSocketServer(
                    self._serve_connection,
                    sockets,
                    self.containment,
                    handler_nursery=connections,
                    max_message_size=self.config.max_message_bytes,
                )
                await listener.start(server.run)
                for endpoint in server.listeners:
                    engine = self.scheduler.engine_name
                    log.info("listening on %s (engine %s)", endpoint_url(endpoint), engine)
                self.port = next((p for e in server.listeners if (p := getattr(e, "port", None))), self.port)
                self.listening = True
                task_status.started(server)
        self.listening = False

    async def drain(self) -> None:
        """Graceful shutdown: stop accepting, finish the running tasks, tell everyone, close.

        Running tasks get ``drain_timeout`` seconds, then stop at their next segment boundary.
        Waiting tasks are cancelled with a clear error. Every connection is closed with 1001.
        """
        if self.draining:
            return
        self.draining = True
        self.drain_started.set()
        self._listen_scope.cancel()
        await self.scheduler.drain(self.config.drain_timeout)
        for session in list(self.sessions.values()):
            session.close(GOING_AWAY, texts.CLOSE_SHUTTING_DOWN)
        with trio.move_on_after(5):
            if self.sessions:
                await self._sessions_gone.wait()
        self._stop_scope.cancel()

    @asynccontextmanager
    async def hosting(self, session: Session) -> AsyncIterator[None]:
        """Count ``session`` among the server's while the block runs (a WebSocket connection, or
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

    @property
    def busy_workers(self) -> int:
        return self.scheduler.busy

    async def _serve_connection(self, request: WebSocketRequest, session_id: str) -> None:
        refusal = self._refusal(request)
        if refusal is not None:
            status, body = refusal
            log.info("handshake refused (%d) remote=%s", status, remote(request))
            await request.reject(
                status, extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")], body=body.encode()
            )
            return
        ws = await request.accept()
        session = Session(session_id, self.budget)
        if self.metrics is not None:
            self.metrics.connection_opened()
        log.info("session opened session=%s remote=%s", session.session_id, remote(ws))
        try:
            async with self.hosting(session):
                async with trio.open_nursery() as nursery:
                    session.bind(nursery.cancel_scope)
                    # Not reading: its tasks end now, not when its connection is finally cut.
                    closed = self.scheduler.session_closed
                    session.on_overflow = lambda gone: nursery.start_soon(closed, gone)
                    nursery.start_soon(self._write, ws, session)
                    nursery.start_soon(self._heartbeat, ws, session)
                    session.send(replies.welcome(session.session_id))
                    await self._read(ws, session)
                    nursery.cancel_scope.cancel()
        finally:
            if self.metrics is not None:
                self.metrics.connection_closed()
            log.info("session closed session=%s", session.session_id)

    def _refusal(self, request: WebSocketRequest) -> tuple[int, str] | None:
        """Why the handshake must be refused (status, body), or ``None`` to accept it."""
        headers = {name.lower(): value for name, value in request.headers}
        if self.config.allowed_origins:
            origin = headers.get(b"origin", b"").decode("latin-1")
            if origin not in self.config.allowed_origins and "*" not in self.config.allowed_origins:
                return 403, texts.ORIGIN_REFUSED + "\n"
        token = self.config.auth_token
        if token:
            offered = None
            authorization = headers.get(b"authorization", b"").decode("latin-1")
            if authorization.lower().startswith("bearer "):
                offered = authorization[7:].strip()
            else:
                query = parse_qs(urlsplit(request.path).query)
                offered = query.get("token", [None])[0]
            if offered is None or not hmac.compare_digest(offered.encode(), token.encode()):
                return 401, texts.TOKEN_REFUSED + "\n"
        return None

    async def _write(self, ws: WebSocketConnection, session: Session) -> None:
        try:
            while True:
                message, cost = await session.next_message()
                if isinstance(message, Close):
                    await ws.aclose(message.code, message.reason)
                    return
                assert isinstance(message, str | bytes)  # a WebSocket session queues only these
                await ws.send_message(message)
                session.written(cost)
        except ConnectionClosed:
            session.drop()

    async def _heartbeat(self, ws: WebSocketConnection, session: Session) -> None:
        """Ping idle peers and drop dead ones; close sessions idle past ``idle_timeout``."""
        interval, timeout = self.config.ping_interval, self.config.idle_timeout
        period = min(p for p in (interval, timeout, math.inf) if p > 0)
        if period == math.inf:
            return
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            if timeout > 0 and not session.tasks and now - session.last_activity >= timeout:
                log.info("session idle for %gs; closing session=%s", timeout, session.session_id)
                session.close(GOING_AWAY, texts.CLOSE_IDLE)
                return
            if interval > 0:
                with trio.move_on_after(self.config.ping_timeout) as waited:
                    try:
                        await ws.ping()
                    except ConnectionClosed:
                        return
                if waited.cancelled_caught:
                    log.info(
                        "no pong in %gs; dropping session=%s", self.config.ping_timeout, session.session_id
                    )
                    session.drop()
                    return

    async def _read(self, ws: WebSocketConnection, session: Session) -> None:
        while True:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                return
            session.last_activity = trio.current_time()
            if session.open:  # a closing session still reads, for the close handshake
                await self._handle(frame, session)

    async def _handle(self, frame: str | bytes, session: Session) -> None:
        if isinstance(frame, bytes):
            self._error(session, texts.BINARY_FRAME)
            return
        try:
            request = decode_request(frame, max_text_chars=self.config.max_text_chars)
        except RequestError as error:
            self._error(session, str(error))
            return
        match request:
            case TtsStream():
                await self._submit(request, session)
            case TaskStatusQuery(task_id=task_id):
                await self.scheduler.status(task_id, session)
            case Cancel(task_id=task_id):
                await self.scheduler.cancel(task_id, session)

    async def _submit(self, request: TtsStream, session: Session) -> None:
        limit = self.config.max_pending_per_session
        if self.draining:
            self._error(session, texts.SHUTTING_DOWN)
            return
        if limit and len(session.tasks) >= limit:
            self._error(session, texts.too_many_in_flight(limit))
            return
        try:
            resolved = await self.sources.resolve(audio_fields(request))
        except (AudioPathError, VoiceError) as error:
            self._error(session, str(error))
            return
        job, delivery = job_from(request, resolved), delivery_from(request)
        refusal = await self.scheduler.submit(session, job, delivery)
        if refusal is not None:
            if self.metrics is not None and refusal != texts.SHUTTING_DOWN:
                self.metrics.task_refused()
            self._error(session, refusal)

    def _error(self, session: Session, message: str, task_id: str | None = None) -> None:
        session.send(replies.error(session.session_id, message, task_id))
