"""The WebSocket server: a nursery per connection, one inference task, one sweeper."""

from __future__ import annotations

import logging
import uuid
from functools import partial

import msgspec
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
    serve_websocket,
)

from ..core.decode import BINARY_FRAME, RequestError, decode_request
from ..core.engine import Engine, SynthesisJob
from ..core.protocol import (
    CANCELLED_MESSAGE,
    CANCELLING_MESSAGE,
    Cancel,
    CancelReply,
    Error,
    Queued,
    TaskStatusQuery,
    TtsStream,
    Welcome,
)
from ..core.tasks import Delivery
from .audio import AudioPathError, check_audio_path, resolve_roots
from .board import TaskBoard
from .session import OUTBOX_SIZE, Outgoing, Session
from .worker import InferenceWorker

log = logging.getLogger("indextts_server")


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "0.0.0.0"
    port: int = 8770
    max_queue: int = 100
    task_ttl: float = 300.0
    max_text_chars: int = 2000
    max_message_bytes: int = 1 << 20
    audio_roots: tuple[str, ...] = (".",)


def endpoint_url(endpoint: object) -> str:
    address = str(getattr(endpoint, "address", endpoint))
    port = getattr(endpoint, "port", "?")
    host = f"[{address}]" if ":" in address else address
    return f"ws://{host}:{port}"


def queue_full(max_queue: int) -> str:
    return f"服务器繁忙：队列已满（最多 {max_queue} 个等待任务），请稍后重试"


def unknown_task(task_id: str) -> str:
    return f"任务不存在或已过期: {task_id}"


def not_your_task(task_id: str) -> str:
    return f"只能取消本会话创建的任务: {task_id}"


def already_finished(task_id: str, state: str) -> str:
    return f"任务已结束（{state}），无法取消: {task_id}"


class Server:
    def __init__(self, config: ServerConfig, engine: Engine):
        self.config = config
        self.engine = engine
        self.board = TaskBoard(ttl=config.task_ttl, max_queue=config.max_queue)
        self.worker = InferenceWorker(engine, self.board)
        self.roots = resolve_roots(config.audio_roots)
        self.sessions: dict[str, Session] = {}

    async def run(self, *, task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.worker.run)
            await nursery.start(self.board.sweep)
            server: WebSocketServer = await nursery.start(
                partial(
                    serve_websocket,
                    self._serve_connection,
                    self.config.host,
                    self.config.port,
                    None,
                    max_message_size=self.config.max_message_bytes,
                )
            )
            for endpoint in server.listeners:
                log.info("listening on %s (engine %s)", endpoint_url(endpoint), self.engine.name)
            task_status.started(server)

    async def _serve_connection(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        outbox, pending = trio.open_memory_channel[Outgoing](OUTBOX_SIZE)
        session = Session(str(uuid.uuid4()), outbox)
        self.sessions[session.session_id] = session
        log.info("session opened session=%s remote=%s", session.session_id, ws.remote)
        try:
            async with trio.open_nursery() as nursery:
                session.bind(nursery.cancel_scope)
                nursery.start_soon(self._write, ws, pending, session)
                session.send(Welcome(session_id=session.session_id))
                await self._read(ws, session)
                nursery.cancel_scope.cancel()
        finally:
            session.open = False
            del self.sessions[session.session_id]
            self.board.cancel_pending(session)
            if session.overflowed:
                with trio.move_on_after(1, shield=True):
                    await ws.aclose(1008, "客户端接收过慢")
            log.info("session closed session=%s", session.session_id)

    async def _write(
        self, ws: WebSocketConnection, pending: trio.MemoryReceiveChannel[Outgoing], session: Session
    ) -> None:
        try:
            async for message in pending:
                await ws.send_message(message)
        except ConnectionClosed:
            session.drop()

    async def _read(self, ws: WebSocketConnection, session: Session) -> None:
        while True:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                return
            await self._handle(frame, session)

    async def _handle(self, frame: str | bytes, session: Session) -> None:
        if isinstance(frame, bytes):
            self._error(session, BINARY_FRAME)
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
                task = self.board.registry.get(task_id)
                if task is None:
                    self._error(session, unknown_task(task_id), task_id)
                else:
                    session.send(task.status_reply(session.session_id))
            case Cancel(task_id=task_id):
                self._cancel(task_id, session)

    def _cancel(self, task_id: str, session: Session) -> None:
        task = self.board.registry.get(task_id)
        if task is None:
            self._error(session, unknown_task(task_id), task_id)
        elif task.session_id != session.session_id:
            self._error(session, not_your_task(task_id), task_id)
        elif task.finished:
            self._error(session, already_finished(task_id, task.state), task_id)
        elif task.state == "pending":
            self.board.move(task, "cancelled", session, CANCELLED_MESSAGE)
            session.send(
                CancelReply(
                    task_id=task_id,
                    session_id=session.session_id,
                    status="cancelled",
                    message=CANCELLED_MESSAGE,
                )
            )
            self._error(session, CANCELLED_MESSAGE, task_id)
        elif not task.cancel_requested:
            task.cancel_requested = True  # the worker stops at the next segment boundary
            session.send(
                CancelReply(
                    task_id=task_id,
                    session_id=session.session_id,
                    status="cancelling",
                    message=CANCELLING_MESSAGE,
                )
            )

    async def _submit(self, request: TtsStream, session: Session) -> None:
        try:
            job = await trio.to_thread.run_sync(self._job, request)
        except AudioPathError as error:
            self._error(session, str(error))
            return
        delivery = Delivery(
            stream=bool(request.stream),
            format=request.format or "wav",
            extended=request.extended,
        )
        task = self.board.submit(session, job, delivery)
        if task is None:
            self._error(session, queue_full(self.config.max_queue))
            return
        queued = Queued(task_id=task.task_id, session_id=session.session_id)
        if delivery.extended:
            queued.position = self.board.queue_depth
        session.send(queued)

    def _job(self, request: TtsStream) -> SynthesisJob:
        """The engine's view of a request: defaults applied, audio paths checked and resolved."""
        mode = request.emo_mode or "none"
        prompt = check_audio_path("prompt_audio", request.prompt_audio, self.roots)
        emo_audio = None
        if mode == "audio":
            assert request.emo_audio is not None
            emo_audio = check_audio_path("emo_audio", request.emo_audio, self.roots)
        return SynthesisJob(
            text=request.text,
            prompt_audio=prompt,
            emo_mode=mode,
            emo_audio=emo_audio,
            emo_alpha=1.0 if request.emo_alpha is None else request.emo_alpha,
            emo_vector=tuple(request.emo_vector) if mode == "vector" and request.emo_vector else None,
            emo_text=request.emo_text if mode == "text" else None,
            interval_silence=200 if request.interval_silence is None else request.interval_silence,
            max_tokens=120 if request.max_tokens is None else request.max_tokens,
            use_random=bool(request.use_random),
            seed=request.seed,
            quick_first=request.quick_first or 0,
        )

    def _error(self, session: Session, message: str, task_id: str | None = None) -> None:
        session.send(Error(task_id=task_id, session_id=session.session_id, message=message))
