"""Voice agents over ``/tts/websocket`` (Cartesia's protocol): a whole sentence in, its first chunk out.

Each agent is one WebSocket that speaks one sentence at a time, each sentence a context of its
own sent whole with ``continue: false`` (what an agent sends once its language model has
finished a sentence), and waits for that context's ``done``. The closed loop is the HTTP run's;
only the wire differs. Beside it, :func:`long_task` keeps one contract client busy with a long
multi-segment text, re-sent as soon as it ends: the bulk work a voice agent's sentence must go
ahead of.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from ...core.engine import SAMPLE_RATE
from ..results.record import PcmFormat, Record
from .http import CONNECT_TIMEOUT, Clock, _HttpRun
from .load import CLIENT_MAX_MESSAGE, DISCONNECT_TIMEOUT, LoadPlan, LoadResult
from .progress import Progress

PATH: Final = "/tts/websocket"
RATE: Final = SAMPLE_RATE
"""The agents ask for the engines' own rate, as an agent whose pipeline runs at it would; the HTTP
baseline's ``pcm`` is OpenAI's 24 kHz, resampled (a cost of well under a millisecond per segment)."""


class _AgentReply(msgspec.Struct):
    type: str | None = None
    context_id: str | None = None
    data: str | None = None
    error: str | None = None


_decode: Final = msgspec.json.Decoder(_AgentReply).decode


def agent_message(text: str, context_id: str) -> str:
    """One whole sentence for a context of its own: spoken at once, then ``done``."""
    return msgspec.json.encode(
        {
            "context_id": context_id,
            "transcript": text,
            "continue": False,
            "voice": {"mode": "id", "id": "default"},
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": RATE},
            "add_timestamps": False,
            "max_buffer_delay_ms": 0,
        }
    ).decode()


def pcm_speech_bodies(texts: Sequence[str]) -> list[str]:
    """The same sentences over ``/v1/audio/speech``: streamed raw PCM, so the first byte is the first
    segment's audio, as an agent's first chunk is."""
    return [
        msgspec.json.encode(
            {"input": text, "voice": "default", "response_format": "pcm", "stream": True}
        ).decode()
        for text in texts
    ]


class _AgentConnection:
    """One agent's socket: one sentence (one context) at a time."""

    def __init__(self, ws: WebSocketConnection, stream: contextlib.AsyncExitStack):
        self.ws = ws
        self.stream = stream  # closed by the run's ``async with connection.stream``
        self.contexts = 0

    async def post(self, path: str, body: bytes, record: Record, clock: Clock) -> None:
        self.contexts += 1
        context = f"sentence-{self.contexts}"
        record.fmt = PcmFormat(sample_rate=RATE)
        try:
            await self.ws.send_message(agent_message(body.decode(), context))
            while True:
                message = await self.ws.get_message()
                now = clock()
                reply = _decode(message)
                if reply.context_id != context:
                    continue
                if reply.type == "chunk" and reply.data:
                    record.audio(now, base64.b64decode(reply.data))
                elif reply.type == "error":
                    record.error, record.end = reply.error or "error", now
                    return
                elif reply.type == "done":
                    record.end = now
                    return
        except ConnectionClosed as closed:
            raise trio.BrokenResourceError(f"the server closed the socket: {closed.reason}") from None


class _AgentRun(_HttpRun):
    """The HTTP run's closed loop, its connections voice agents."""

    async def _open(self) -> _AgentConnection:  # type: ignore[override]  # same ``post``, another wire
        stack = contextlib.AsyncExitStack()
        try:
            ws = await stack.enter_async_context(
                open_websocket_url(
                    self.plan.url,
                    max_message_size=CLIENT_MAX_MESSAGE,
                    connect_timeout=CONNECT_TIMEOUT,
                    disconnect_timeout=DISCONNECT_TIMEOUT,
                )
            )
        except HandshakeError as exc:
            await stack.aclose()
            raise OSError(f"handshake: {exc!r}") from None
        return _AgentConnection(ws, stack)


async def run_agents_load(plan: LoadPlan, progress: Progress | None = None) -> LoadResult:
    """``plan`` against ``plan.url`` (``ws://host:port/tts/websocket``), its frames being sentences."""
    return await _AgentRun(plan, progress).run()


@dataclass(slots=True)
class LongTask:
    """What the contract client beside the agents did: tasks finished, segments (and their audio)
    received, the running task's included."""

    tasks: int = 0
    segments: int = 0
    audio_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def long_frame(frames: Sequence[str], repeat: int = 2) -> str:
    """One contract request whose text is every corpus text, ``repeat`` times over, streamed (one
    binary per segment, so its segments can be counted); the other fields are the first frame's."""
    request = msgspec.json.decode(frames[0])
    texts = [str(msgspec.json.decode(frame)["text"]) for frame in frames]
    request["text"] = " ".join(texts * repeat)
    request["stream"] = True
    return msgspec.json.encode(request).decode()


class _ContractReply(msgspec.Struct):
    type: str | None = None
    status: str | None = None
    message: str | None = None


async def long_task(
    url: str, frame: str, done: LongTask, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Send ``frame`` on the contract's WebSocket again and again until cancelled; started once the
    first task's first segment has arrived (the engine is busy with it)."""
    started = False
    async with open_websocket_url(
        url, max_message_size=CLIENT_MAX_MESSAGE, disconnect_timeout=DISCONNECT_TIMEOUT
    ) as ws:
        await ws.get_message()  # the welcome
        while True:
            await ws.send_message(frame)
            record = Record(connection=-1, sent=0.0)
            while True:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    before = record.audio_seconds
                    record.audio(0.0, message)
                    done.segments += 1
                    done.audio_seconds += record.audio_seconds - before
                    if not started:
                        started = True
                        task_status.started()
                    continue
                reply = msgspec.json.decode(message, type=_ContractReply)
                if reply.status == "error":
                    done.errors.append(reply.message or "error")
                    if not started:
                        raise RuntimeError(f"the long contract task failed: {reply.message}")
                    break
                if reply.type == "end":
                    done.tasks += 1
                    break
