"""The same load over the Wyoming port (Home Assistant's protocol), whole or streamed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import msgspec
import trio

from ...core import wyoming as protocol
from ..results.record import Record
from .http import RECEIVE_SIZE, Clock, _HttpRun
from .load import LoadPlan, LoadResult
from .progress import Progress

_PIECE: Final = re.compile(r"\S+\s*|\s+")
CJK_PIECE: Final = 2
"""Characters per piece of a text without spaces (Chinese), about a token of a language model's."""


def wyoming_texts(frames: Sequence[str]) -> list[str]:
    """Each WebSocket request's text (the voice is the bundled one, the same file)."""
    return [str(msgspec.json.decode(frame)["text"]) for frame in frames]


def pieces(text: str) -> list[str]:
    """``text`` as a language model writes it: word by word, or a couple of characters at a time."""
    out: list[str] = []
    for word in _PIECE.findall(text):
        if word.isascii():
            out.append(word)
        else:
            out += [word[at : at + CJK_PIECE] for at in range(0, len(word), CJK_PIECE)]
    return out


class _WyomingConnection:
    """One Wyoming connection, one utterance at a time (its text all sent at once: no pacing)."""

    def __init__(self, stream: trio.SocketStream, streamed: bool, max_body: int):
        self.stream = stream
        self.streamed = streamed
        self.framing = protocol.Framing(max_body)

    async def post(self, path: str, body: bytes, record: Record, clock: Clock) -> None:
        text = body.decode()
        if self.streamed:
            events = [protocol.event("synthesize-start")]
            events += [protocol.event("synthesize-chunk", {"text": piece}) for piece in pieces(text)]
            events.append(protocol.event("synthesize-stop"))
            last = "synthesize-stopped"
        else:
            events, last = [protocol.event("synthesize", {"text": text})], "audio-stop"
        await self.stream.send_all(b"".join(events))
        while True:
            frame = self.framing.next()
            if frame is None:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    raise trio.BrokenResourceError("the server closed the connection")
                self.framing.feed(data)
                continue
            now = clock()
            if frame.type == "audio-chunk":
                record.audio(now, frame.payload)
            elif frame.type == "error":
                record.error, record.end = str(frame.data.get("text")), now
                return
            elif frame.type == last:
                record.end = now
                return


class _WyomingRun(_HttpRun):
    """The HTTP run's closed loop, its connections Wyoming's."""

    def __init__(self, plan: LoadPlan, progress: Progress | None, streamed: bool):
        super().__init__(plan, progress)
        self.streamed = streamed

    async def _open(self) -> _WyomingConnection:  # type: ignore[override]  # same ``post``, another wire
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream(self.host, self.port)
        return _WyomingConnection(stream, self.streamed, 1 << 26)


async def run_wyoming_load(plan: LoadPlan, progress: Progress | None = None, *, streamed: bool) -> LoadResult:
    """``plan`` against ``plan.url`` (``tcp://host:port``), its frames being texts."""
    return await _WyomingRun(plan, progress, streamed).run()
