"""The same load over the HTTP port: ``POST /v1/audio/speech`` on keep-alive h11 connections."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import h11
import msgspec
import trio

from ..results.record import Record
from .load import LoadPlan, LoadResult, drive_connections
from .progress import Progress

RECEIVE_SIZE: Final = 65536
Clock = Callable[[], float]
CONNECT_TIMEOUT: Final = 30.0
# The contract's speaker is the bundled voice; every other field means the same over HTTP.
_RENAMED: Final = {"text": "input", "format": "response_format"}
_DROPPED: Final = frozenset({"type", "prompt_audio", "details"})


def speech_bodies(frames: Sequence[str]) -> list[bytes]:
    """Each WebSocket request as the equivalent ``/v1/audio/speech`` body (WAV unless told, and
    whole unless the request streams, as over the WebSocket: HTTP streams by default)."""
    bodies = []
    for frame in frames:
        request = msgspec.json.decode(frame)
        body: dict[str, object] = {"voice": "default", "response_format": "wav", "stream": False}
        for key, value in request.items():
            if key not in _DROPPED:
                body[_RENAMED.get(key, key)] = value
        bodies.append(msgspec.json.encode(body))
    return bodies


async def run_http_load(plan: LoadPlan, progress: Progress | None = None) -> LoadResult:
    """``plan`` against ``plan.url`` (``http://host:port``), its frames being speech bodies."""
    return await _HttpRun(plan, progress).run()


class _Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def __init__(self, stream: trio.SocketStream, host: str):
        self.stream = stream
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT)

    async def post(self, path: str, body: bytes, record: Record, clock: Clock) -> None:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        headers = [
            ("Host", self.host),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
        data = self.h11.send(h11.Request(method="POST", target=path, headers=headers)) or b""
        data += self.h11.send(h11.Data(data=body)) or b""
        data += self.h11.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        status = 0
        chunks: list[bytes] = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                if record.first_audio is None and status == 200:
                    record.first_audio = clock()
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                now = clock()
                payload = b"".join(chunks)
                if status == 200:
                    record.audio(now, payload)
                    record.binaries = 1
                    record.end = now
                else:
                    record.error, record.end = f"HTTP {status}: {payload[:120]!r}", now
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise trio.BrokenResourceError("the server closed the connection")


class _HttpRun:
    def __init__(self, plan: LoadPlan, progress: Progress | None):
        self.plan = plan
        self.progress = progress
        self.result = LoadResult(plan)
        self.taken = 0
        self.t0 = time.perf_counter()
        parts = urlsplit(plan.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.bodies = [frame.encode() for frame in plan.frames]

    def clock(self) -> float:
        return time.perf_counter() - self.t0

    async def _open(self) -> _Connection:
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(self.host, self.port)
        return _Connection(stream, f"{self.host}:{self.port}")

    async def run(self) -> LoadResult:
        if self.plan.warmup:
            with trio.move_on_after(self.plan.duration_limit):
                try:
                    connection = await self._open()
                    async with connection.stream:
                        for index in range(self.plan.warmup):
                            record = Record(connection=-1, sent=self.clock())
                            await connection.post(
                                "/v1/audio/speech", self.bodies[index % len(self.bodies)], record, self.clock
                            )
                except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                    self.result.connection_errors.append(f"warm-up: {exc!r}")
        self.t0 = time.perf_counter()
        await drive_connections(self.plan, self.result, self.progress, self._connection)
        self.result.elapsed = self.clock()
        return self.result

    def _take(self) -> bytes | None:
        if self.taken >= self.plan.requests:
            return None
        body = self.bodies[self.taken % len(self.bodies)]
        self.taken += 1
        return body

    async def _connection(self, index: int) -> None:
        try:
            connection = await self._open()
        except (OSError, trio.TooSlowError) as exc:
            self.result.connection_errors.append(f"connect: {exc!r}")
            return
        async with connection.stream:
            try:
                while (body := self._take()) is not None:
                    record = Record(connection=index, sent=self.clock())
                    self.result.records.append(record)
                    await connection.post("/v1/audio/speech", body, record, self.clock)
                    if self.progress is not None:
                        self.progress.advance(record.completed)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                self.result.connection_errors.append(f"closed: {exc!r}")
