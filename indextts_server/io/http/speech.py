"""``POST /v1/audio/speech``: one request, one task on the shared board; its audio whole or streamed."""

from __future__ import annotations

import base64
import logging
import uuid
from typing import Final

import msgspec
import numpy as np
import trio
from hypercorn.typing import ASGISendCallable

from ...core import texts
from ...core.contract.protocol import End, Error, Queued, Reply
from ...core.engine import PCM
from ...core.openai import (
    ApiError,
    SpeechRequest,
    decode_speech,
    error_body,
    speech_audio_fields,
    speech_job,
)
from ...core.tasks import Delivery
from ...core.texts import SHUTTING_DOWN
from ...core.voices import VoiceError
from ..audio.encoding import Transcoder, media_type
from ..audio.paths import AudioPathError
from ..transport.http import CutResponse
from ..transport.session import OUTBOX_SIZE, Session
from ..transport.websocket import Server
from .asgi import BodyTooLarge, Request, body, encode_json, respond, start

log = logging.getLogger("indextts_server")

PCM_DELIVERY: Final = Delivery(stream=True, format="pcm")
"""What the worker hands an HTTP request: raw samples per segment; encoding happens here."""
RETRY_AFTER: Final = "1"
SSE: Final = "text/event-stream"

Event = Reply | bytes


class MidStreamFailure(CutResponse):
    """The task failed after the audio had started: the connection is cut so the client sees it."""


class HttpSession(Session):
    """One HTTP request seen as a session: the worker's replies and audio arrive here as objects."""

    def __init__(self) -> None:
        super().__init__(str(uuid.uuid4()))
        self._events, self.events = trio.open_memory_channel[Event](OUTBOX_SIZE)

    def send(self, reply: Reply) -> None:
        self._put(reply)

    def deliver(self, message: str | bytes, size: int | None = None) -> None:
        if isinstance(message, bytes):
            self._put(message)

    def _put(self, event: Event) -> None:
        if not self.open:
            return
        try:
            self._events.send_nowait(event)
        except trio.WouldBlock:
            self.overflow()  # the request is not reading: its task stops like a slow WebSocket's


def task_error(message: str) -> ApiError:
    """The HTTP status of a task that ended with ``message`` instead of its audio."""
    if message == SHUTTING_DOWN:
        return ApiError(503, message, code="shutting_down")
    return ApiError(500, message, code="synthesis_failed")


def sse_event(value: object) -> bytes:
    return b"data: " + encode_json(value) + b"\n\n"


class Delta(msgspec.Struct, kw_only=True):
    type: str = "speech.audio.delta"
    audio: str


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class Done(msgspec.Struct, kw_only=True):
    type: str = "speech.audio.done"
    usage: Usage


class Speech:
    """The speech endpoint, submitting through the server's task board like a WebSocket session."""

    def __init__(self, server: Server):
        self.server = server

    async def handle(self, request: Request, send: ASGISendCallable) -> None:
        config = self.server.config
        try:
            raw = await request.body(config.max_message_bytes)
        except BodyTooLarge:
            raise ApiError(
                413, texts.body_too_large(config.max_message_bytes), code="request_too_large"
            ) from None
        speech = decode_speech(raw, max_text_chars=config.max_text_chars)
        if self.server.draining:
            raise ApiError(503, SHUTTING_DOWN, code="shutting_down")
        try:
            resolved = await self.server.sources.resolve(speech_audio_fields(speech))
        except VoiceError as error:
            raise ApiError(error.status, str(error), param=error.param, code=error.code) from None
        except AudioPathError as error:
            raise ApiError(400, str(error), param="emo_audio", code="invalid_audio") from None
        job = speech_job(speech, resolved)
        session = HttpSession()
        async with self.server.hosting(session):
            refusal = await self.server.scheduler.submit(session, job, PCM_DELIVERY)
            if refusal is not None:
                if self.server.metrics is not None:
                    self.server.metrics.task_refused()
                raise ApiError(429, refusal, code="queue_full", headers=(("retry-after", RETRY_AFTER),))
            queued = await session.events.receive()  # the scheduler answers at once
            assert isinstance(queued, Queued)
            failure: ApiError | MidStreamFailure | None = None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, request, session, nursery.cancel_scope)
                try:
                    await self._respond(queued.task_id, session, speech, send)
                except (ApiError, MidStreamFailure) as error:
                    failure = error  # raised outside the nursery, not wrapped in an exception group
                nursery.cancel_scope.cancel()
            if isinstance(failure, ApiError):
                failure.headers = (*failure.headers, ("x-task-id", queued.task_id))
            if failure is not None:
                raise failure

    async def _watch(self, request: Request, session: HttpSession, scope: trio.CancelScope) -> None:
        """A client that goes away stops its task, as a closed WebSocket does."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                log.info("HTTP client went away session=%s", session.session_id)
                session.drop()
                scope.cancel()
                return

    async def _respond(
        self, task_id: str, session: HttpSession, speech: SpeechRequest, send: ASGISendCallable
    ) -> None:
        headers = [("x-task-id", task_id), ("cache-control", "no-store")]
        transcoder = Transcoder(speech.format, speed=speech.speed or 1.0, streaming=speech.streaming)
        if not speech.streaming:
            chunks: list[PCM] = []
            async for event in session.events:
                if isinstance(event, bytes):
                    chunks.append(_samples(event))
                elif isinstance(event, End):
                    break
                elif isinstance(event, Error):
                    raise task_error(event.message)
            if transcoder.cheap:
                data = _whole(transcoder, chunks)
            else:
                data = await trio.to_thread.run_sync(_whole, transcoder, chunks)
            await respond(send, 200, data, media_type(speech.format), headers)
            return
        started = False
        async for event in session.events:
            if isinstance(event, bytes):
                pcm = _samples(event)
                data = (
                    transcoder.feed(pcm)
                    if transcoder.cheap
                    else await trio.to_thread.run_sync(transcoder.feed, pcm)
                )
                if not started:
                    await start(send, 200, SSE if speech.sse else media_type(speech.format), headers)
                    started = True
                await self._send(send, speech, data)
            elif isinstance(event, End):
                tail = (
                    transcoder.finish()
                    if transcoder.cheap
                    else await trio.to_thread.run_sync(transcoder.finish)
                )
                if not started:
                    await start(send, 200, SSE if speech.sse else media_type(speech.format), headers)
                if speech.sse:
                    await self._send(send, speech, tail)
                    usage = Usage(
                        input_tokens=len(speech.input), output_tokens=0, total_tokens=len(speech.input)
                    )
                    await body(send, sse_event(Done(usage=usage)), more=False)
                else:
                    await body(send, tail, more=False)
                return
            elif isinstance(event, Error):
                error = task_error(event.message)
                if not started:
                    raise error
                if speech.sse:
                    await body(
                        send,
                        sse_event({"type": "error", **msgspec.to_builtins(error_body(error))}),
                        more=False,
                    )
                    return
                raise MidStreamFailure(event.message)

    async def _send(self, send: ASGISendCallable, speech: SpeechRequest, data: bytes) -> None:
        if not data:
            return
        if speech.sse:
            data = sse_event(Delta(audio=base64.b64encode(data).decode("ascii")))
        await body(send, data, more=True)


def _samples(data: bytes) -> PCM:
    return np.frombuffer(data, dtype="<i2")


def _whole(transcoder: Transcoder, chunks: list[PCM]) -> bytes:
    head = b"".join(transcoder.feed(chunk) for chunk in chunks)
    return head + transcoder.finish()
