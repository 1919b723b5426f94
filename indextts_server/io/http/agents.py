"""``/tts/websocket``: voice agents (pipecat, LiveKit Agents) on Cartesia's protocol, on the HTTP port.

Theory of operation. A socket is a session of the service (`Session`: its outbox, bounded in
bytes, is what the writer sends). A socket carries many contexts; each context's text goes into
its `Transcript`, and every sentence it commits becomes a task at once (`Service.submit`), so
synthesis starts while the agent is still writing. A task's session, as scheduling sees it, is
its `Sentence`: where its replies and samples wait until the context's player takes them. The
player plays a context's sentences in the order they were committed, whatever order the engine
finishes them in, turning each segment into ``timestamps`` (its words) and ``chunk`` messages
(its samples in the context's encoding) and ending with ``done``.

A ``cancel``, a failed sentence and a closed socket end a context the same way: its player stops,
its waiting tasks are cancelled through the scheduler, and its running one stops at its next
segment boundary (its `Sentence` is no longer open).
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import uuid
from collections import deque
from typing import Final
from urllib.parse import parse_qs

import msgspec
import numpy as np
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketScope

from ...core import texts
from ...core.agents import audio
from ...core.agents.cartesia import (
    AgentMessage,
    AgentReply,
    Chunk,
    ContextSettings,
    Done,
    Failure,
    FlushDone,
    Invalid,
    Timestamps,
    WordTimestamps,
    decode,
    settings,
)
from ...core.agents.transcript import Transcript, join
from ...core.agents.words import Word, estimate, exact_tone, split_words, take_words
from ...core.contract.protocol import CueReply, End, Error
from ...core.engine import PCM
from ...core.ssml import SsmlError, complete
from ...core.voices import VoiceError
from ..audio.paths import AudioPathError
from ..service.part import Part
from ..service.service import Refused, Service
from ..service.session import Close, Session

log = logging.getLogger("indextts_server")

PATH: Final = "/tts/websocket"
CHUNK_SECONDS: Final = 0.2
"""A segment's audio goes out in ``chunk`` messages of at most this long, so playback can begin
before a long segment's last byte is encoded and sent."""
POLICY_VIOLATION: Final = 1008

_encoder: Final = msgspec.json.Encoder()


def offered_key(scope: WebsocketScope) -> str | None:
    """The key a client sent: ``X-API-Key`` (Cartesia's), ``Authorization: Bearer`` or ``?api_key=``."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    if "x-api-key" in headers:
        return headers["x-api-key"]
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return parse_qs(scope["query_string"].decode("latin-1")).get("api_key", [None])[0]


class Flush:
    """A ``flush`` in a context's order: answered with ``flush_done`` once everything before it played."""

    def __init__(self, flush_id: int):
        self.flush_id = flush_id


class Sentence(Part):
    """One committed sentence's task (a `Part`): open while its context is live and its socket open."""

    def __init__(self, context: Context, text: str):
        super().__init__(context.socket.session.session_id, text)
        self.context = context
        self.words = split_words(text)  # not yet timed

    @property
    def open(self) -> bool:
        return self.context.live and self.context.socket.session.open

    @open.setter
    def open(self, value: bool) -> None:
        if not value:
            self.context.live = False

    def finished(self) -> None:
        self.context.socket.freed.set()  # room for a sentence held back (--max-pending-per-session)


class Context:
    """One context of a socket: its settings, its text not yet committed, its sentences in order."""

    def __init__(self, socket: AgentSocket, context_id: str, config: ContextSettings, prompt_audio: str):
        self.socket = socket
        self.context_id = context_id
        self.settings = config
        self.prompt_audio = prompt_audio
        self.transcript = Transcript(config.max_buffer_delay)
        self.queue, self.played = trio.open_memory_channel[Sentence | Flush](math.inf)
        self.sentences: list[Sentence] = []
        self.backlog: deque[str | Flush] = deque()  # committed, held back while the socket is at its limit
        self.live = True
        self.ended = False  # ``continue: false`` came: no more text
        self.flushes = 0
        self.markup = ""  # SSML committed but not yet whole (an element still open), held back
        self.samples = 0  # samples sent, at the context's rate
        self.changed = trio.Event()
        self.scope = trio.CancelScope()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def seconds(self) -> float:
        return self.samples / self.settings.sample_rate


class AgentSocket:
    """One client's socket: its contexts, its reader, its writer."""

    def __init__(self, service: Service, send: ASGISendCallable):
        self.service = service
        self.session = Session(str(uuid.uuid4()), service.budget)
        self.contexts: dict[str, Context] = {}
        self.freed = trio.Event()
        self._send = send
        self._exact = service.scheduler.engine_name == "tone"

    async def run(self, receive: ASGIReceiveCallable) -> None:
        async with self.service.hosting(self.session), trio.open_nursery() as nursery:
            self.session.bind(nursery.cancel_scope)
            nursery.start_soon(self._write)
            nursery.start_soon(self._release)
            try:
                await self._read(receive, nursery)
            finally:
                self.session.drop()
                with trio.CancelScope(shield=True):
                    for context in list(self.contexts.values()):
                        await self._end(context)
                nursery.cancel_scope.cancel()

    async def _read(self, receive: ASGIReceiveCallable, nursery: trio.Nursery) -> None:
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            if event["type"] == "websocket.receive":
                frame = event.get("text") or event.get("bytes") or b""
                await self._handle(frame, nursery)

    async def _write(self) -> None:
        while True:
            message, cost = await self.session.next_message()
            if isinstance(message, Close):
                await self._send({"type": "websocket.close", "code": message.code, "reason": message.reason})
                return
            text = message if isinstance(message, str) else _encoder.encode(message).decode()
            await self._send({"type": "websocket.send", "text": text, "bytes": None})
            self.session.written(cost)

    def _out(self, reply: AgentReply) -> None:
        data = _encoder.encode(reply)
        self.session.deliver(data.decode(), len(data))

    async def _handle(self, frame: str | bytes, nursery: trio.Nursery) -> None:
        try:
            message = decode(frame)
        except Invalid as invalid:
            await self._fail(invalid.context_id, str(invalid))
            return
        context_id = message.context_id
        assert context_id is not None
        context = self.contexts.get(context_id)
        if message.cancel:
            if context is not None:
                log.info("voice agent cancelled context=%s session=%s", context_id, self.session.session_id)
                await self._end(context)
            return
        if context is None:
            context = await self._open(message, context_id, nursery)
            if context is None:
                return
        if context.ended:
            return  # text after ``continue: false``: the context's input is closed
        now = trio.current_time()
        committed = context.transcript.feed(message.transcript or "", now)
        if len(context.transcript.pending) > self.service.config.max_text_chars:
            await self._fail(context_id, texts.agent_transcript_too_long(self.service.config.max_text_chars))
            return
        # As Cartesia's: ``continue`` left out means the input is whole (a flush alone does not end it).
        ended = message.more is False or (message.more is None and not message.flush)
        if message.flush or ended:
            committed += context.transcript.flush()
        context.backlog.extend(committed)
        if message.flush:
            context.flushes += 1
            context.backlog.append(Flush(context.flushes))
        context.ended = ended
        await self._submit(context)
        context.poke()

    async def _open(self, message: AgentMessage, context_id: str, nursery: trio.Nursery) -> Context | None:
        """A new context, its voice resolved as the HTTP API's ``voice`` is; ``None`` after an error."""
        try:
            config = settings(message)
            resolved = await self.service.sources.resolve({"voice": config.voice})
        except (Invalid, VoiceError, AudioPathError) as refused:
            await self._fail(context_id, str(refused))
            return None
        context = Context(self, context_id, config, resolved["voice"])
        self.contexts[context_id] = context
        nursery.start_soon(self._serve_context, context)
        return context

    def in_flight(self) -> int:
        """The socket's sentences waiting or running (``--max-pending-per-session`` bounds them)."""
        return sum(1 for context in self.contexts.values() for s in context.sentences if s.tasks)

    async def _submit(self, context: Context) -> None:
        """Submit the context's committed sentences, in order, while the socket is within its
        limit; the rest wait for a sentence to finish. The context's queue ends after the last."""
        limit = self.service.config.max_pending_per_session
        if context.markup and context.ended and not context.backlog:
            context.backlog.append("")  # held SSML goes at the end of the input, whole or not
        while context.backlog and context.live:
            item = context.backlog[0]
            if isinstance(item, Flush):
                if context.markup:  # held SSML is spoken before the flush is answered
                    context.backlog.appendleft("")
                    continue
                context.queue.send_nowait(item)
                context.backlog.popleft()
                continue
            if limit and self.in_flight() >= limit:
                return
            context.backlog.popleft()
            plan = None
            if context.settings.ssml:  # sentences held until their elements close, then one task
                context.markup = join(context.markup, item)
                following = context.backlog[0] if context.backlog else None
                whole = complete(context.markup) or isinstance(following, Flush)
                if not (whole or (context.ended and following is None)):
                    continue
                item, context.markup = context.markup, ""
                try:
                    plan = await self.service.sources.plan(item, "ssml", context.settings.tuning.lang)
                except (SsmlError, VoiceError) as refused:
                    await self._fail(context.context_id, str(refused))
                    return
            job = context.settings.job(item, context.prompt_audio, plan)
            sentence = Sentence(context, job.text)
            try:
                await self.service.submit(sentence, job, context.settings.delivery)
            except Refused as refusal:
                await self._fail(context.context_id, str(refusal))
                return
            sentence.task_id = next(iter(sentence.tasks), None)
            context.sentences.append(sentence)
            context.queue.send_nowait(sentence)
        if context.ended and not context.backlog:
            context.queue.close()

    async def _release(self) -> None:
        """Submit held-back sentences whenever one of the socket's sentences finishes."""
        while True:
            await self.freed.wait()
            self.freed = trio.Event()
            for context in list(self.contexts.values()):
                await self._submit(context)

    async def _serve_context(self, context: Context) -> None:
        """Play the context, and commit its text on time, until it is done or ended."""
        with context.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._expire, context)
                await self._play(context)
                nursery.cancel_scope.cancel()

    async def _expire(self, context: Context) -> None:
        """Commit text that waited ``max_buffer_delay_ms`` with no sentence end."""
        while context.live and not context.ended:
            changed = context.changed
            due = context.transcript.due
            with trio.move_on_at(math.inf if due is None else due):
                await changed.wait()
                continue
            context.backlog.extend(context.transcript.expire(trio.current_time()))
            await self._submit(context)

    async def _play(self, context: Context) -> None:
        async for item in context.played:
            if isinstance(item, Flush):
                self._out(FlushDone(context_id=context.context_id, flush_id=item.flush_id))
            elif not await self._play_sentence(context, item):
                return
        self._out(Done(context_id=context.context_id))
        self._forget(context)

    async def _play_sentence(self, context: Context, sentence: Sentence) -> bool:
        """Send one sentence's segments as they come; False if its task failed (the context ends)."""
        cue: CueReply | None = None
        task_samples = 0
        rate = context.settings.sample_rate
        async for event in sentence.events:
            if isinstance(event, bytes):
                pcm = np.frombuffer(event, dtype="<i2")
                if context.settings.timestamps:
                    words = self._words(sentence, cue, pcm, task_samples / rate, rate)
                    if words:
                        self._out(_timestamps(context, words))
                self._chunks(context, pcm)
                task_samples += len(pcm)
            elif isinstance(event, CueReply):
                cue = event
            elif isinstance(event, End):
                return True
            elif isinstance(event, Error):
                await self._fail(context.context_id, event.message)
                return False
        return False

    def _words(
        self, sentence: Sentence, cue: CueReply | None, pcm: PCM, before: float, rate: int
    ) -> list[Word]:
        """The segment's words in the context's time: exact on tone, else estimated."""
        words, sentence.words = take_words(sentence.words, cue.text if cue is not None else "")
        if self._exact and cue is not None:
            placed = exact_tone(words, cue.start - before, cue.start - before + cue.duration)
        else:
            placed = estimate(words, pcm, rate)
        offset = sentence.context.seconds
        return [Word(w.text, round(offset + w.start, 3), round(offset + w.end, 3)) for w in placed]

    def _chunks(self, context: Context, pcm: PCM) -> None:
        step = max(1, int(CHUNK_SECONDS * context.settings.sample_rate))
        for at in range(0, len(pcm), step):
            piece = pcm[at : at + step]
            data = base64.b64encode(audio.encode(piece, context.settings.encoding)).decode("ascii")
            self._out(Chunk(context_id=context.context_id, data=data))
            context.samples += len(piece)

    async def _fail(self, context_id: str | None, message: str) -> None:
        """An ``error`` for the context (or the socket, if none is named); the context ends."""
        self._out(Failure(context_id=context_id, error=message))
        context = self.contexts.get(context_id) if context_id is not None else None
        if context is not None:
            await self._end(context)

    async def _end(self, context: Context) -> None:
        """Stop a context: its player, its waiting tasks (cancelled), its running one (next segment)."""
        context.live = False
        context.scope.cancel()
        self._forget(context)
        for sentence in context.sentences:
            if sentence.task_id is not None and sentence.tasks:
                await self.service.scheduler.cancel(sentence.task_id, sentence)

    def _forget(self, context: Context) -> None:
        if self.contexts.get(context.context_id) is context:
            del self.contexts[context.context_id]


def _timestamps(context: Context, words: list[Word]) -> Timestamps:
    return Timestamps(
        context_id=context.context_id,
        word_timestamps=WordTimestamps(
            words=[w.text for w in words], start=[w.start for w in words], end=[w.end for w in words]
        ),
    )


class Agents:
    """The ``/tts/websocket`` route: the key checked, then one `AgentSocket` per connection."""

    def __init__(self, service: Service):
        self.service = service

    async def serve(
        self, scope: WebsocketScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        token = self.service.config.auth_token
        if token:
            offered = offered_key(scope)
            if offered is None or not hmac.compare_digest(offered.encode(), token.encode()):
                log.info("voice agent refused: %s", texts.TOKEN_REFUSED)
                await send(
                    {"type": "websocket.close", "code": POLICY_VIOLATION, "reason": texts.TOKEN_REFUSED}
                )
                return
        if self.service.draining:
            await send({"type": "websocket.close", "code": 1001, "reason": texts.CLOSE_SHUTTING_DOWN})
            return
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        socket = AgentSocket(self.service, send)
        log.info("voice agent connected session=%s", socket.session.session_id)
        await socket.run(receive)
        log.info("voice agent gone session=%s", socket.session.session_id)
