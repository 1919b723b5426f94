"""The contract's WebSocket transport: a nursery per connection, frames in and out of the service."""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from ...core import texts
from ...core.contract import replies
from ...core.contract.decode import RequestError, decode_request
from ...core.contract.jobs import audio_fields, delivery_from, job_from
from ...core.contract.protocol import Cancel, TaskStatusQuery, TtsStream
from ...core.origins import judge_origin
from ...core.voices import VoiceError
from ..audio.paths import AudioPathError
from ..service.service import GOING_AWAY, Refused, Service
from ..service.session import CLOSE_GRACE, Close, Session
from .containment import ContainedWebSocketServer, Containment, Cutoff

log = logging.getLogger("indextts_server")


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


class WebSocketTransport:
    """The contract's WebSocket port over `Service`: a nursery per connection, frames both ways.

    ``run`` listens until the service's drain starts, then waits for the connections the drain
    closes. A connection's session is hosted by the service; its requests become service calls.
    """

    def __init__(self, service: Service, listeners: Sequence[trio.SocketListener] = ()):
        self.service = service
        self.config = service.config
        self.port = service.config.port  # the bound port once listening (``--port 0`` picks one)
        self.containment = Containment("session", service.metrics)
        self.page_port: int | None = None  # the HTTP port: its page is the server's own (`judge_origin`)
        self._adopted = list(listeners)

    async def run(self, *, task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as connections:
            server = await connections.start(self._listen, connections)
            task_status.started(server)

    async def _listen(
        self,
        connections: trio.Nursery,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # The listener runs in a nursery of its own, so the drain can close it while the
        # connections it accepted, which live in ``connections``, carry on.
        async with trio.open_nursery() as listener:
            sockets = self._adopted or await trio.open_tcp_listeners(self.config.port, host=self.config.host)
            server = ContainedWebSocketServer(
                self._serve_connection,
                sockets,
                self.containment,
                handler_nursery=connections,
                max_message_size=self.config.max_message_bytes,
                disconnect_timeout=CLOSE_GRACE,
            )
            await listener.start(server.run)
            for endpoint in server.listeners:
                engine = self.service.scheduler.engine_name
                log.info("listening on %s (engine %s)", endpoint_url(endpoint), engine)
            self.port = next((p for e in server.listeners if (p := getattr(e, "port", None))), self.port)
            self.service.listening = True
            task_status.started(server)
            await self.service.drain_started.wait()
            listener.cancel_scope.cancel()
        self.service.listening = False

    async def _serve_connection(self, request: WebSocketRequest, session_id: str, cutoff: Cutoff) -> None:
        refusal = self._refusal(request)
        if refusal is not None:
            status, body = refusal
            log.info("handshake refused (%d) remote=%s", status, remote(request))
            await request.reject(
                status, extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")], body=body.encode()
            )
            return
        ws = await request.accept()
        session = Session(session_id, self.service.budget)
        metrics = self.service.metrics
        if metrics is not None:
            metrics.connection_opened()
        log.info("session opened session=%s remote=%s", session.session_id, remote(ws))
        try:
            async with self.service.hosting(session):
                async with trio.open_nursery() as nursery:
                    session.bind(nursery.cancel_scope, cutoff)
                    # Not reading: its tasks end now, not when its connection is finally cut.
                    closed = self.service.scheduler.session_closed
                    session.on_overflow = lambda gone: nursery.start_soon(closed, gone)
                    nursery.start_soon(self._read, ws, session, nursery.cancel_scope)
                    nursery.start_soon(self._heartbeat, ws, session)
                    session.send(replies.welcome(session.session_id))
                    await self._write(ws, session, cutoff)
                    nursery.cancel_scope.cancel()
        finally:
            if metrics is not None:
                metrics.connection_closed()
            log.info("session closed session=%s", session.session_id)

    def _refusal(self, request: WebSocketRequest) -> tuple[int, str] | None:
        """Why the handshake must be refused (status, body), or ``None`` to accept it."""
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        origin = headers.get("origin")
        pages = (self.page_port,) if self.page_port else ()
        host = request._event.host  # wsproto keeps Host out of the headers trio-websocket shows
        verdict = judge_origin(origin, host, self.config.allowed_origins, page_ports=pages)
        if verdict == "foreign" and origin is not None:
            return 403, texts.origin_refused(origin) + "\n"
        token = self.config.auth_token
        if token:
            offered = None
            authorization = headers.get("authorization", "")
            if authorization.lower().startswith("bearer "):
                offered = authorization[7:].strip()
            else:
                query = parse_qs(urlsplit(request.path).query)
                offered = query.get("token", [None])[0]
            if offered is None or not hmac.compare_digest(offered.encode(), token.encode()):
                return 401, texts.TOKEN_REFUSED + "\n"
        return None

    async def _write(self, ws: WebSocketConnection, session: Session, cutoff: Cutoff) -> None:
        """Send the outbox until the session's close handshake is done, or the connection is gone
        (then the peer's closing handshake, if it started one, finishes without us)."""
        try:
            while True:
                message, cost = await session.next_message()
                if isinstance(message, Close):
                    # The peer has the grace to answer; one that does not is reset.
                    cutoff.at(trio.current_time() + CLOSE_GRACE)
                    await ws.aclose(message.code, message.reason)
                    return
                assert isinstance(message, str | bytes)  # a WebSocket session queues only these
                await ws.send_message(message)
                session.written(cost)
        except ConnectionClosed:
            return

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
                    session.abort()
                    return

    async def _read(self, ws: WebSocketConnection, session: Session, scope: trio.CancelScope) -> None:
        """Handle the client's frames until it closes; a close the server started is the writer's
        to finish."""
        while True:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                if session.open:
                    scope.cancel()
                return
            session.last_activity = trio.current_time()
            if session.open:
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
                await self.service.scheduler.status(task_id, session)
            case Cancel(task_id=task_id):
                await self.service.scheduler.cancel(task_id, session)

    async def _submit(self, request: TtsStream, session: Session) -> None:
        try:
            self.service.admit(session)
            resolved = await self.service.sources.resolve(audio_fields(request))
            plan = await self.service.sources.plan(request.text, request.text_format, request.lang)
            await self.service.submit(session, job_from(request, resolved, plan), delivery_from(request))
        except (Refused, AudioPathError, VoiceError) as error:
            self._error(session, str(error))

    def _error(self, session: Session, message: str, task_id: str | None = None) -> None:
        session.send(replies.error(session.session_id, message, task_id))
