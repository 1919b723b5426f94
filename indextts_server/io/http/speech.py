"""``POST /v1/audio/speech``: one request, one task on the shared board; its audio whole or streamed."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from typing import Final

import msgspec
import numpy as np
import trio
from hypercorn.typing import ASGISendCallable, ASGISendEvent

from ...core import texts
from ...core.contract.protocol import End, Error, Queued, Reply
from ...core.engine import PCM
from ...core.openai import (
    ApiError,
    SpeechRequest,
    decode_speech,
    error_body,
    model_ids,
    speech_audio_fields,
    speech_delivery,
    speech_job,
    unfit_param,
)
from ...core.texts import SHUTTING_DOWN
from ...core.voices import VoiceError
from ..audio.encoding import Transcoder, media_type
from ..audio.paths import AudioPathError
from ..service.service import Refused, Service, Unfit
from ..service.session import Close, OutboxBudget, Session
from ..transport.http import CutResponse, connection_cutoff
from .asgi import BodyTooLarge, Request, chunk, encode_json, head

log = logging.getLogger("indextts_server")

RETRY_AFTER: Final = "1"
PIECE_SAMPLES: Final = 16384
"""A streamed segment is encoded and written in pieces of this many samples (under a second), so
a response waiting on its client holds one piece, not a segment's worth of encoded audio."""
SSE: Final = "text/event-stream"


class MidStreamFailure(CutResponse):
    """The response cannot be finished (the task failed after the audio had started, or the client
    stopped reading): the connection is cut so the client sees it incomplete."""


class HttpSession(Session):
    """One HTTP request seen as a session, under the WebSocket's byte bounds.

    The worker's replies (as objects) and audio (the engine's samples) wait in the outbox; the
    samples count against the server's `OutboxBudget` until the bytes made of them have been
    written to the socket, as a WebSocket message counts until it is written. A request that
    leaves more unread than a WebSocket may is closed the same way (`Session.overflow`): its task
    ends ``cancelled`` with the same text, and its response is cut.
    """

    def __init__(self, budget: OutboxBudget | None = None) -> None:
        super().__init__(str(uuid.uuid4()), budget)

    def send(self, reply: Reply) -> None:
        if self.open:
            self._push(reply, 0)


class Wire:
    """Writes a response from tasks the request need not wait for.

    hypercorn writes to the socket shielded from cancellation, so a request blocked on a client
    that does not read could never stop. Each write runs in ``writers`` (a nursery that outlives
    requests) while the request waits for it and may give up: once the request returns, hypercorn
    closes the connection, and the abandoned write ends with it. Without ``writers`` the request
    writes itself.
    """

    def __init__(self, send: ASGISendCallable, writers: trio.Nursery | None):
        self._send = send
        self._writers = writers

    async def __call__(self, message: ASGISendEvent) -> None:
        if self._writers is None:
            await self._send(message)
            return
        done = trio.Event()
        failure: list[BaseException] = []

        async def write() -> None:
            try:
                await self._send(message)
            except Exception as exc:
                failure.append(exc)
            finally:
                done.set()

        self._writers.start_soon(write)
        await done.wait()
        if failure:
            raise failure[0]


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
    """The speech endpoint: each request a session of the service, as a WebSocket connection is.

    ``writers`` is where responses are written from (see `Wire`); the application sets it.
    """

    def __init__(self, service: Service):
        self.service = service
        self.writers: trio.Nursery | None = None

    async def handle(self, request: Request, send: ASGISendCallable) -> None:
        config = self.service.config
        try:
            raw = await request.body(config.max_message_bytes)
        except BodyTooLarge:
            raise ApiError(
                413, texts.body_too_large(config.max_message_bytes), code="request_too_large"
            ) from None
        models = model_ids(self.service.scheduler.engine_name)
        speech = decode_speech(raw, max_text_chars=config.max_text_chars, models=models)
        if self.service.draining:
            raise ApiError(503, SHUTTING_DOWN, code="shutting_down")
        try:
            resolved = await self.service.sources.resolve(speech_audio_fields(speech))
            plan = await self.service.sources.plan(speech.input, speech.text_format, speech.lang)
        except VoiceError as error:
            raise ApiError(error.status, str(error), param=error.param, code=error.code) from None
        except AudioPathError as error:
            raise ApiError(400, str(error), param="emo_audio", code="invalid_audio") from None
        job = speech_job(speech, resolved, plan)
        session = HttpSession(self.service.budget)
        async with self.service.hosting(session):
            try:
                await self.service.submit(session, job, speech_delivery(speech))
            except Unfit as unfit:
                param = unfit_param(speech, unfit.field)
                raise ApiError(400, str(unfit), param=param, code="unsupported_value") from None
            except Refused as refusal:
                if str(refusal) == SHUTTING_DOWN:
                    raise task_error(SHUTTING_DOWN) from None
                headers = (("retry-after", RETRY_AFTER),)
                raise ApiError(429, str(refusal), code="queue_full", headers=headers) from None
            queued, _ = await session.next_message()  # the scheduler answers at once
            assert isinstance(queued, Queued)
            failure: ApiError | MidStreamFailure | None = None
            async with trio.open_nursery() as nursery:
                # A session closed for not reading is cut in time (reset: see `Cutoff`).
                session.bind(nursery.cancel_scope, connection_cutoff())
                nursery.start_soon(self._watch, request, session, nursery.cancel_scope)
                try:
                    await self._respond(queued.task_id, session, speech, Wire(send, self.writers))
                except (ApiError, MidStreamFailure) as error:
                    failure = error  # raised outside the nursery, not wrapped in an exception group
                nursery.cancel_scope.cancel()
            if failure is None and session.overflowed:
                failure = MidStreamFailure(texts.NOT_READING)
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

    async def _respond(self, task_id: str, session: HttpSession, speech: SpeechRequest, wire: Wire) -> None:
        headers = [("x-task-id", task_id), ("cache-control", "no-store")]
        transcoder = Transcoder(
            speech.format, streaming=speech.streaming, rate=speech.rate
        )  # speed: in the job
        content_type = SSE if speech.sse else media_type(speech.format, transcoder.rate)
        if not speech.streaming:
            await self._whole(session, transcoder, content_type, headers, wire)
            return
        started = False
        while True:
            event, cost = await session.next_message()
            if isinstance(event, bytes):
                samples = _samples(event)
                for offset in range(0, len(samples), PIECE_SAMPLES):
                    piece = samples[offset : offset + PIECE_SAMPLES]
                    data = await _run(transcoder, transcoder.feed, piece)
                    if not started:
                        await wire(head(200, content_type, headers))
                        started = True
                    await self._send(wire, speech, data)
                session.written(cost)  # its bytes are out: it no longer counts
            elif isinstance(event, End):
                tail = await _run(transcoder, transcoder.finish)
                if not started:
                    await wire(head(200, content_type, headers))
                if speech.sse:
                    await self._send(wire, speech, tail)
                    usage = Usage(
                        input_tokens=len(speech.input), output_tokens=0, total_tokens=len(speech.input)
                    )
                    await wire(chunk(sse_event(Done(usage=usage)), more=False))
                else:
                    await wire(chunk(tail, more=False))
                return
            elif isinstance(event, Error):
                error = task_error(event.message)
                if not started:
                    raise error
                if speech.sse:
                    failed = {"type": "error", **msgspec.to_builtins(error_body(error))}
                    await wire(chunk(sse_event(failed), more=False))
                    return
                raise MidStreamFailure(event.message)
            elif isinstance(event, Close):
                raise MidStreamFailure(texts.NOT_READING)

    async def _whole(
        self,
        session: HttpSession,
        transcoder: Transcoder,
        content_type: str,
        headers: list[tuple[str, str]],
        wire: Wire,
    ) -> None:
        """One file with its length, once the task has ended; it counts as one message while written."""
        chunks: list[PCM] = []
        while True:
            event, cost = await session.next_message()
            if isinstance(event, bytes):
                chunks.append(_samples(event))
                session.written(cost)  # the samples now belong to the file being made
            elif isinstance(event, End):
                break
            elif isinstance(event, Error):
                raise task_error(event.message)
            elif isinstance(event, Close):
                raise MidStreamFailure(texts.NOT_READING)
        if transcoder.cheap:
            data = _encode_whole(transcoder, chunks)
        else:
            data = await trio.to_thread.run_sync(_encode_whole, transcoder, chunks)
        chunks.clear()
        session.deliver(data)
        event, cost = await session.next_message()
        if isinstance(event, Close):
            raise MidStreamFailure(texts.NOT_READING)
        await wire(head(200, content_type, [*headers, ("content-length", str(len(data)))]))
        await wire(chunk(data, more=False))
        session.written(cost)

    async def _send(self, wire: Wire, speech: SpeechRequest, data: bytes) -> None:
        if not data:
            return
        if speech.sse:
            data = sse_event(Delta(audio=base64.b64encode(data).decode("ascii")))
        await wire(chunk(data, more=True))


async def _run(transcoder: Transcoder, step: Callable[..., bytes], *args: PCM) -> bytes:
    """A transcoder step: inline when it is a copy, else in a thread."""
    if transcoder.cheap:
        return step(*args)
    return await trio.to_thread.run_sync(step, *args)


def _samples(data: bytes) -> PCM:
    return np.frombuffer(data, dtype="<i2")


def _encode_whole(transcoder: Transcoder, chunks: list[PCM]) -> bytes:
    head = b"".join(transcoder.feed(chunk) for chunk in chunks)
    return head + transcoder.finish()
