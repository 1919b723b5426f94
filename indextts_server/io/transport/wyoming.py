"""Home Assistant's Wyoming protocol (``--wyoming-port``): TTS events over TCP, whole and streamed.

Theory of operation. A connection is a session of the service (`Session`: its outbox, bounded in
bytes like every transport's, holds the encoded events its writer sends). The reader cuts the
client's bytes into events (`core.wyoming`); each request for speech becomes an `Utterance`:

- ``synthesize`` is one utterance of one text, submitted as one task (the engine segments it);
- ``synthesize-start`` opens a streamed one: the text of its ``synthesize-chunk`` s goes into a
  `Transcript` (the voice agents' incremental core) and each sentence it commits is submitted as
  a task at once, so speech starts while Home Assistant's agent is still writing;
  ``synthesize-stop`` commits the rest. A ``synthesize`` sent while a stream is open is the
  client's fallback for servers that do not stream, and is ignored.

Every task's recipient is its sentence (a `Part`); one player per connection plays the
utterances in order, and each utterance's sentences in the order they were committed: a
sentence's audio is ``audio-start``, ``audio-chunk`` s as its segments come and ``audio-stop``
(16-bit mono at the model's rate). A streamed utterance ends with ``synthesize-stopped``.

A request the server cannot do (unknown voice, a language the model does not read, SSML, a
malformed event) is answered with ``error`` before any task starts; the connection goes on. A
failed sentence ends its utterance with ``error`` (a stream still ends with
``synthesize-stopped``). A disconnect cancels every task of the connection. A client that does
not read is cut off (reset: `Cutoff`) once its outbox passes the byte bounds of every session.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections import deque
from functools import partial
from typing import Final

import numpy as np
import trio

from ... import __version__
from ...core import texts
from ...core import wyoming as protocol
from ...core.agents.transcript import Transcript, join
from ...core.contract.jobs import unfit
from ...core.contract.protocol import End, Error
from ...core.engine import SAMPLE_RATE, Lang
from ...core.ssml import SsmlError, complete
from ...core.voices import DEFAULT_VOICE, VoiceError
from ..audio.paths import AudioPathError
from ..service.part import Part
from ..service.service import Refused, Service
from ..service.session import CLOSE_GRACE, POLICY_VIOLATION, Close, Session
from .containment import Containment, Cutoff

log = logging.getLogger("indextts_server")

SAMPLES_PER_CHUNK: Final = 2048
"""A segment's audio goes out in ``audio-chunk`` s of at most this many samples (93 ms)."""
RECEIVE_SIZE: Final = 65536


class Sentence(Part):
    """One task of an utterance: open while its utterance is live and its connection open."""

    def __init__(self, utterance: Utterance, text: str):
        super().__init__(utterance.connection.session.session_id, text)
        self.utterance = utterance

    @property
    def open(self) -> bool:
        return self.utterance.live and self.utterance.connection.session.open

    @open.setter
    def open(self, value: bool) -> None:
        if not value:
            self.utterance.live = False

    def finished(self) -> None:
        self.utterance.connection.freed.set()


class Utterance:
    """One ``synthesize``, or one stream from ``synthesize-start`` to ``synthesize-stop``."""

    def __init__(
        self,
        connection: Connection,
        prompt_audio: str,
        lang: Lang | None,
        *,
        streamed: bool,
        ssml: bool = False,
    ):
        self.connection = connection
        self.prompt_audio = prompt_audio
        self.lang = lang
        self.streamed = streamed
        self.ssml = ssml
        self.markup = ""  # SSML sentences held until every element they open has closed
        self.transcript = Transcript()
        self.backlog: deque[str] = deque()  # committed, held back while the connection is at its limit
        self.sentences: list[Sentence] = []
        self._queue, self.played = trio.open_memory_channel[Sentence](math.inf)
        self.live = True  # false once failed or cancelled: its tasks stop
        self.ended = False  # no more text will come
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def fail(self) -> None:
        """No more of it is spoken (its stream still ends with ``synthesize-stopped``)."""
        self.live = False
        self.backlog.clear()
        self.poke()


class Connection:
    """One client's connection: its reader, its player, its writer."""

    def __init__(self, service: Service, stream: trio.SocketStream, session_id: str, cutoff: Cutoff):
        self.service = service
        self.stream = stream
        self.cutoff = cutoff
        self.session = Session(session_id, service.budget)
        self.framing = protocol.Framing(service.config.max_message_bytes)
        self.streaming: Utterance | None = None  # the stream ``synthesize-start`` opened
        self.utterances: list[Utterance] = []
        self._plays, self._next_play = trio.open_memory_channel[Utterance](math.inf)
        self.freed = trio.Event()

    async def run(self) -> None:
        async with self.service.hosting(self.session), trio.open_nursery() as nursery:
            self.session.bind(nursery.cancel_scope, self.cutoff)
            nursery.start_soon(self._play)
            nursery.start_soon(self._release)
            nursery.start_soon(self._write_then_stop, nursery.cancel_scope)
            try:
                await self._read(nursery)
            finally:
                self.session.drop()
                with trio.CancelScope(shield=True):
                    await self._cancel_all()
                nursery.cancel_scope.cancel()

    # -- in -------------------------------------------------------------------------------------------

    async def _read(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return  # the client is gone: its work is cancelled
            self.session.last_activity = trio.current_time()
            self.framing.feed(data)
            while self.session.open:
                try:
                    frame = self.framing.next()
                    if frame is None:
                        break
                    request = protocol.request(frame)
                except protocol.Malformed as malformed:
                    self._error(str(malformed), "invalid_event")
                    continue
                await self._handle(request, nursery)

    async def _handle(self, request: protocol.Request | None, nursery: trio.Nursery) -> None:
        match request:
            case protocol.Describe():
                voices = await trio.to_thread.run_sync(self.service.voices.list)
                capabilities = self.service.scheduler.capabilities
                self._out(protocol.info([v.name for v in voices], capabilities, __version__))
            case protocol.Ping(text=text):
                self._out(protocol.pong(text))
            case protocol.Synthesize():
                if self.streaming is None:
                    await self._synthesize(request)
            case protocol.SynthesizeStart():
                await self._start(request, nursery)
            case protocol.SynthesizeChunk(text=text):
                await self._chunk(text)
            case protocol.SynthesizeStop():
                await self._stop()

    async def _open(
        self, voice: protocol.Voice | None, text_format: str | None, *, streamed: bool
    ) -> Utterance | None:
        """A new utterance, its voice resolved and its language checked; ``None`` after an error."""
        try:
            wanted = protocol.wanted(voice, text_format)
        except protocol.Malformed as refused:
            self._error(str(refused), "unsupported")
            return None
        try:
            resolved = await self.service.sources.resolve({"voice": wanted.voice or DEFAULT_VOICE})
        except (VoiceError, AudioPathError) as refused:
            self._error(str(refused), "voice_not_found")
            return None
        utterance = Utterance(self, resolved["voice"], wanted.lang, streamed=streamed, ssml=wanted.ssml)
        if wanted.lang is not None:
            probe = protocol.synthesis_job("", utterance.prompt_audio, wanted.lang)
            problem = unfit(probe, self.service.scheduler.capabilities)
            if problem is not None:
                self._error(problem.message, "unsupported")
                return None
        return utterance

    async def _synthesize(self, request: protocol.Synthesize) -> None:
        text = request.text.strip()
        limit = self.service.config.max_text_chars
        if not text:
            self._error(texts.WYOMING_EMPTY_TEXT, "invalid_event")
            return
        if len(text) > limit:
            self._error(texts.text_too_long(limit), "text_too_long")
            return
        utterance = await self._open(request.voice, request.text_format, streamed=False)
        if utterance is None:
            return
        utterance.backlog.append(text)
        utterance.ended = True
        self._begin(utterance)
        await self._submit(utterance)

    async def _start(self, request: protocol.SynthesizeStart, nursery: trio.Nursery) -> None:
        if self.streaming is not None:  # a second start: the first stream ends here
            await self._stop()
        utterance = await self._open(request.voice, request.text_format, streamed=True)
        if utterance is None:
            # Refused: what the client sends for it is ignored, its stop still answered.
            utterance = Utterance(self, "", None, streamed=True)
            utterance.fail()
        self.streaming = utterance
        self._begin(utterance)
        nursery.start_soon(self._expire, utterance)

    async def _chunk(self, text: str) -> None:
        utterance = self.streaming
        if utterance is None:
            self._error(texts.WYOMING_CHUNK_WITHOUT_START, "invalid_event")
            return
        if not utterance.live:
            return
        utterance.backlog.extend(utterance.transcript.feed(text, trio.current_time()))
        limit = self.service.config.max_text_chars
        if len(utterance.transcript.pending) > limit:
            self._error(texts.text_too_long(limit), "text_too_long")
            await self._end(utterance)
            return
        await self._submit(utterance)
        utterance.poke()

    async def _stop(self) -> None:
        utterance = self.streaming
        if utterance is None:
            self._error(texts.WYOMING_STOP_WITHOUT_START, "invalid_event")
            return
        self.streaming = None
        if utterance.live:
            utterance.backlog.extend(utterance.transcript.flush())
        utterance.ended = True
        await self._submit(utterance)
        utterance.poke()

    async def _expire(self, utterance: Utterance) -> None:
        """Commit a stream's text that waited the transcript's delay with no sentence end."""
        while utterance.live and not utterance.ended:
            changed, due = utterance.changed, utterance.transcript.due
            with trio.move_on_at(math.inf if due is None else due):
                await changed.wait()
                continue
            utterance.backlog.extend(utterance.transcript.expire(trio.current_time()))
            await self._submit(utterance)

    # -- tasks ----------------------------------------------------------------------------------------

    def _begin(self, utterance: Utterance) -> None:
        self.utterances.append(utterance)
        self._plays.send_nowait(utterance)

    def in_flight(self) -> int:
        """The connection's sentences waiting or running (``--max-pending-per-session`` bounds them)."""
        return sum(1 for u in self.utterances for s in u.sentences if s.tasks)

    async def _submit(self, utterance: Utterance) -> None:
        """Submit the utterance's committed sentences, in order, while the connection is within its
        limit; the rest wait for a sentence to finish. Its sentences end after the last."""
        limit = self.service.config.max_pending_per_session
        while utterance.backlog and utterance.live:
            if limit and self.in_flight() >= limit:
                return
            text = utterance.backlog.popleft()
            plan = None
            if utterance.ssml:  # sentences held until their elements close, then one task
                utterance.markup = join(utterance.markup, text)
                last = utterance.ended and not utterance.backlog
                if not (complete(utterance.markup) or last):
                    continue
                text, utterance.markup = utterance.markup, ""
                try:
                    plan = await self.service.sources.plan(text, "ssml", utterance.lang)
                except (SsmlError, VoiceError) as refused:
                    self._error(str(refused), "invalid_ssml")
                    utterance.fail()
                    break
            job = protocol.synthesis_job(text, utterance.prompt_audio, utterance.lang, plan)
            sentence = Sentence(utterance, job.text)
            try:
                await self.service.submit(sentence, job, protocol.DELIVERY)
            except Refused as refusal:
                self._error(str(refusal), "refused")
                utterance.fail()
                break
            sentence.task_id = next(iter(sentence.tasks), None)
            utterance.sentences.append(sentence)
            utterance._queue.send_nowait(sentence)
        if utterance.ended and not utterance.backlog:
            utterance._queue.close()

    async def _release(self) -> None:
        """Submit held-back sentences whenever one of the connection's sentences finishes."""
        while True:
            await self.freed.wait()
            self.freed = trio.Event()
            for utterance in list(self.utterances):
                await self._submit(utterance)

    async def _end(self, utterance: Utterance) -> None:
        """Stop an utterance: its waiting tasks cancelled, its running one at its next segment."""
        utterance.fail()
        for sentence in utterance.sentences:
            if sentence.task_id is not None and sentence.tasks:
                await self.service.scheduler.cancel(sentence.task_id, sentence)

    async def _cancel_all(self) -> None:
        with trio.move_on_after(5):
            for utterance in self.utterances:
                await self._end(utterance)

    # -- out ------------------------------------------------------------------------------------------

    async def _play(self) -> None:
        async for utterance in self._next_play:
            async for sentence in utterance.played:
                if utterance.live and not await self._play_sentence(sentence):
                    await self._end(utterance)
            if utterance.streamed:
                self._out(protocol.synthesize_stopped())
            self.utterances.remove(utterance)

    async def _play_sentence(self, sentence: Sentence) -> bool:
        """Send one sentence's audio as its segments come; False if its task failed."""
        started = False
        async for event in sentence.events:
            if not started and isinstance(event, bytes | End):
                self._out(protocol.audio_start(SAMPLE_RATE))
                started = True
            if isinstance(event, bytes):
                self._chunks(event)
            elif isinstance(event, End):
                self._out(protocol.audio_stop())
                return True
            elif isinstance(event, Error):
                self._error(event.message, "synthesis_failed")
                return False
        return False

    def _chunks(self, samples: bytes) -> None:
        pcm = np.frombuffer(samples, dtype="<i2")
        for at in range(0, len(pcm), SAMPLES_PER_CHUNK):
            self._out(protocol.audio_chunk(pcm[at : at + SAMPLES_PER_CHUNK].tobytes(), SAMPLE_RATE))

    def _out(self, data: bytes) -> None:
        self.session.deliver(data, len(data))

    def _error(self, text: str, code: str) -> None:
        log.info("wyoming error session=%s: %s", self.session.session_id, text)
        self._out(protocol.error(text, code))

    async def _write_then_stop(self, scope: trio.CancelScope) -> None:
        await self._write()
        scope.cancel()

    async def _write(self) -> None:
        """Send the outbox until the session closes or the connection is gone."""
        try:
            while True:
                message, cost = await self.session.next_message()
                if isinstance(message, Close):
                    if message.code == POLICY_VIOLATION:
                        self.cutoff.now()  # not reading: reset, its buffers dropped
                        return
                    self.cutoff.at(trio.current_time() + CLOSE_GRACE)
                    await self.stream.send_all(protocol.error(texts.SHUTTING_DOWN, "shutting_down"))
                    await self.stream.aclose()
                    return
                assert isinstance(message, bytes)  # a Wyoming session queues encoded events only
                await self.stream.send_all(message)
                self.session.written(cost)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


class WyomingTransport:
    """The Wyoming port over `Service`: ``run`` listens until the drain starts, then waits for the
    connections the drain closes."""

    def __init__(self, service: Service, host: str, port: int):
        self.service = service
        self.host = host
        self.port = port  # the bound port once listening (0 picks one)
        self.containment = Containment("wyoming connection", service.metrics)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as connections:
            await connections.start(self._listen, connections)
            task_status.started(self.port)

    async def _listen(
        self, connections: trio.Nursery, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as listener:
            sockets = await trio.open_tcp_listeners(self.port, host=self.host or None)
            self.port = sockets[0].socket.getsockname()[1]
            listener.start_soon(
                partial(trio.serve_listeners, self._connection, sockets, handler_nursery=connections)
            )
            for socket in sockets:
                address = socket.socket.getsockname()
                log.info("wyoming on tcp://%s:%s (Home Assistant)", address[0], address[1])
            task_status.started()
            await self.service.drain_started.wait()
            listener.cancel_scope.cancel()

    async def _connection(self, stream: trio.SocketStream) -> None:
        session_id = str(uuid.uuid4())
        await self.containment.run(session_id, lambda: self._serve(stream, session_id))

    async def _serve(self, stream: trio.SocketStream, session_id: str) -> None:
        cutoff = Cutoff(stream)
        metrics = self.service.metrics
        if metrics is not None:
            metrics.connection_opened()
        log.info("wyoming connection opened session=%s", session_id)
        try:
            async with trio.open_nursery() as nursery:
                cutoff.scope = nursery.cancel_scope
                nursery.start_soon(cutoff.run)
                await Connection(self.service, stream, session_id, cutoff).run()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            if metrics is not None:
                metrics.connection_closed()
            log.info("wyoming connection closed session=%s", session_id)
