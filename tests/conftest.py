"""Shared test fixtures: in-process servers on port 0 and real WebSocket clients against them."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import soundfile
import trio
from trio_websocket import WebSocketConnection, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from indextts_server.bench.drive.corpus import contract_request
from indextts_server.core.config import ServerConfig
from indextts_server.core.engine import PCM, Engine, Segment, SynthesisJob
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.http.app import HttpApi
from indextts_server.io.operations.metrics import Metrics
from indextts_server.io.service.service import Service
from indextts_server.io.transport.http import bound_port, serve_http
from indextts_server.io.transport.websocket import WebSocketTransport

REPO = Path(__file__).resolve().parent.parent
PROMPT = "asset/zero_shot_prompt.wav"
EMO_PROMPT = "asset/emo_prompt.wav"
UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
ISO_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}$"
CLIENT_MAX_MESSAGE = 64 << 20

Json = dict[str, Any]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # The contract's examples name audio relative to the server's working directory.
    monkeypatch.chdir(REPO)


def tts(text: Any = "大家好，我现在正在体验 AI 科技！", **fields: Any) -> Json:
    """The contract's own example request, with ``fields`` changed."""
    return contract_request(text, **fields)


class Client:
    """A WebSocket client that speaks JSON text and receives WAV bytes."""

    def __init__(self, ws: WebSocketConnection, welcome: Json):
        self.ws = ws
        self.welcome = welcome
        self.session_id: str = welcome["session_id"]

    async def send(self, payload: Json | str | bytes) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload, ensure_ascii=False)
        await self.ws.send_message(payload)

    async def recv(self) -> Json | bytes:
        message = await self.ws.get_message()
        if isinstance(message, bytes):
            return message
        value = json.loads(message)
        assert isinstance(value, dict)
        return value

    async def recv_json(self) -> Json:
        message = await self.recv()
        assert isinstance(message, dict), f"expected JSON, got {len(message)} binary bytes"
        return message

    async def recv_audio(self) -> bytes:
        message = await self.recv()
        assert isinstance(message, bytes), f"expected audio, got {message}"
        return message

    async def request(self, payload: Json) -> tuple[str, bytes]:
        """Send one request and read the contract's four replies; return the task id and the WAV."""
        await self.send(payload)
        queued = await self.recv_json()
        assert queued["type"] == "queued", queued
        task_id: str = queued["task_id"]
        assert await self.recv_json() == self.reply("start", task_id)
        wav = await self.recv_audio()
        assert await self.recv_json() == self.reply("end", task_id)
        return task_id, wav

    async def error(self, payload: Json | str | bytes) -> Json:
        await self.send(payload)
        return await self.recv_json()

    def reply(self, kind: str, task_id: str) -> Json:
        messages = {"queued": "任务已加入队列，等待处理", "start": "开始生成音频", "end": "生成完成"}
        return {
            "type": kind,
            "task_id": task_id,
            "session_id": self.session_id,
            "message": messages[kind],
        }

    def error_reply(self, message: str, task_id: str | None = None) -> Json:
        return {
            "status": "error",
            "task_id": task_id,
            "session_id": self.session_id,
            "message": message,
        }


async def assert_pipelined_in_order(
    client: Client, requests: Sequence[Json], binaries: Sequence[int]
) -> None:
    """Send ``requests`` back to back on one connection; each task's ``start``, its ``binaries``
    audio frames and its ``end`` must arrive together, task after task in the order sent, each
    after the task's ``queued`` (binary frames carry no task id: nothing else may come between)."""
    for request in requests:
        await client.send(request)
    flow: list[tuple[str, str | None]] = []
    while sum(kind == "end" for kind, _ in flow) < len(requests):
        message = await client.recv()
        flow.append(("audio", None) if isinstance(message, bytes) else (message["type"], message["task_id"]))
    ids = [task for kind, task in flow if kind == "queued"]
    assert len(set(ids)) == len(requests), flow
    expected = [
        step
        for task, count in zip(ids, binaries, strict=True)
        for step in [("start", task), *[("audio", None)] * count, ("end", task)]
    ]
    assert [step for step in flow if step[0] != "queued"] == expected
    for task in ids:
        assert flow.index(("queued", task)) < flow.index(("start", task))


async def assert_three_pipelined_in_order(url: str) -> None:
    """Three short seeded requests pipelined on a new connection to ``url`` (a real model's server),
    each answered with one file: `assert_pipelined_in_order`."""
    requests = [tts(text, seed=index) for index, text in enumerate(["第一个。", "第二个请求。", "第三。"])]
    async with open_websocket_url(url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
        client = Client(ws, json.loads(await ws.get_message()))
        await assert_pipelined_in_order(client, requests, binaries=[1, 1, 1])


async def serve_contract(nursery: trio.Nursery, service: Service) -> int:
    """Run ``service`` and the contract's WebSocket port on it, as the command line does; the port."""
    return (await contract_transport(nursery, service)).port


async def contract_transport(nursery: trio.Nursery, service: Service) -> WebSocketTransport:
    """`serve_contract`, returning the transport itself."""
    await nursery.start(service.run)
    transport = WebSocketTransport(service)
    await nursery.start(transport.run)
    return transport


class Running:
    """A server started in-process for one test (with its HTTP port once ``http_port`` is set)."""

    def __init__(self, service: Service, port: int, transport: WebSocketTransport | None = None):
        self.service = service
        self.port = port
        self.transport = transport
        self.url = f"ws://127.0.0.1:{port}"
        self.http_port = 0
        self.app: HttpApi | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Client]:
        async with open_websocket_url(self.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
            welcome = json.loads(await ws.get_message())
            yield Client(ws, welcome)


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    async def start(engine: Engine | None = None, **config: Any) -> Running:
        service = Service(ServerConfig(host="127.0.0.1", port=0, **config), engine or ToneEngine())
        transport = await contract_transport(nursery, service)
        return Running(service, transport.port, transport)

    return start


@pytest.fixture
def start_http(nursery: trio.Nursery, start_server: StartServer, tmp_path: Path) -> StartServer:
    """Start a server and its HTTP port in-process (voices in a fresh folder unless told)."""

    async def start(engine: Engine | None = None, **config: Any) -> Running:
        config.setdefault("voices_dir", str(tmp_path / "voices"))
        running = await start_server(engine, **config)
        app = HttpApi(running.service, Metrics(process_metrics=False), ws_port=running.port)
        running.app = app
        serving = partial(serve_http, app, "127.0.0.1", 0, shutdown=running.service.drain_started.wait)
        running.http_port = bound_port(await nursery.start(serving))
        assert running.transport is not None
        running.transport.page_port = running.http_port  # as the command line does
        return running

    return start


@pytest.fixture
async def server(start_server: StartServer) -> Running:
    return await start_server()


@pytest.fixture
async def client(server: Running) -> AsyncIterator[Client]:
    async with server.connect() as c:
        yield c


def decode_wav(wav: bytes) -> tuple[PCM, int, Any]:
    info = soundfile.info(io.BytesIO(wav))
    pcm, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    return np.asarray(pcm, dtype=np.int16), int(rate), info


class RecordingEngine:
    """Wraps an engine and records, thread-safely, which jobs ran and how far each got."""

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name = inner.name
        self.capabilities = inner.capabilities
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []  # (what, text)
        self.segments_started = threading.Event()

    def warm_up(self) -> None:
        self.inner.warm_up()

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        self._note("begin", job.text)
        try:
            for segment in self.inner.synthesize(job):
                self._note("segment", job.text)
                self.segments_started.set()
                yield segment
        finally:
            self._note("finish", job.text)

    def _note(self, what: str, text: str) -> None:
        with self.lock:
            self.events.append((what, text))

    def texts(self, what: str) -> list[str]:
        with self.lock:
            return [text for kind, text in self.events if kind == what]


def encode(value: object) -> str:
    return msgspec.json.encode(value).decode()


class JobsEngine:
    """A tone engine that keeps every job it was given."""

    def __init__(self) -> None:
        self.inner = ToneEngine()
        self.name = "tone"
        self.capabilities = self.inner.capabilities
        self.jobs: list[SynthesisJob] = []

    def warm_up(self) -> None:
        pass

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        self.jobs.append(job)
        return self.inner.synthesize(job)


class GatedEngine(RecordingEngine):
    """A recording tone engine that holds every segment after a job's first until ``release``.

    Lets a test keep a task running for as long as it needs, without timing assumptions.
    """

    def __init__(self) -> None:
        super().__init__(ToneEngine())
        self.gate = threading.Event()

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        for index, segment in enumerate(super().synthesize(job)):
            if index > 0:
                self.gate.wait(timeout=30)
            yield segment

    async def first_segment(self) -> None:
        """Wait until some job has produced its first segment."""
        await trio.to_thread.run_sync(self.segments_started.wait, 30)

    def release(self) -> None:
        self.gate.set()


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for server-side state that has no event of its own (bounded by the test's deadline)."""
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - the state has no event to wait on
            await trio.sleep(0.005)


class CliServer:
    """A ``python -m indextts_server`` process on a free loopback port, and everything it logged.

    Its stderr is read to the listening line, then drained by a thread into ``log`` (so the pipe
    never fills).
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None):
        if "--http-port" not in args:
            args = [*args, "--http-port", "0"]  # never the fixed default: tests run side by side
        self.process = subprocess.Popen(
            [sys.executable, "-m", "indextts_server", "--host", "127.0.0.1", *args],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        self.log: list[str] = []
        self.port = 0
        for line in self.process.stderr:
            self.log.append(line)
            if found := re.search(r"listening on ws://127\.0\.0\.1:(\d+)", line):
                self.port = int(found.group(1))
                break
        if not self.port:
            raise AssertionError(f"server exited ({self.process.wait()}) before listening:\n{self.text}")
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_port = 0
        if list(args)[list(args).index("--http-port") + 1] != "off":
            for line in self.process.stderr:
                self.log.append(line)
                if found := re.search(r"http on http://127\.0\.0\.1:(\d+)", line):
                    self.http_port = int(found.group(1))
                    break
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.wyoming_port = 0
        if "--wyoming-port" in args:
            for line in self.process.stderr:
                self.log.append(line)
                if found := re.search(r"wyoming on tcp://127\.0\.0\.1:(\d+)", line):
                    self.wyoming_port = int(found.group(1))
                    break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self.log.extend(self.process.stderr)

    @property
    def text(self) -> str:
        return "".join(self.log)

    def stop(self, timeout: float = 30) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.process.kill()


async def upgrade(
    stream: trio.SocketStream, port: int, path: str = "/", headers: str = "", *, host: str | None = None
) -> bytes:
    """Send a bare WebSocket handshake on ``stream`` (Host: ``host``, else the address it was sent
    to); the response head (empty if cut first), and whatever came with it."""
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"{headers}\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        response += chunk
    return response


TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def kernel_view(server_port: int, client_port: int) -> dict[str, str]:
    """What the kernel holds of one loopback connection: the state of its client's socket and of
    its server's, for each that is still in the socket tables (a reset removes both)."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                local, remote, state = line.split()[1:4]
                ports = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
                if ports == (client_port, server_port):
                    found["client"] = TCP_STATES[state]
                elif ports == (server_port, client_port):
                    found["server"] = TCP_STATES[state]
    return found


def local_port(stream: trio.SocketStream) -> int:
    port: int = stream.socket.getsockname()[1]
    return port


class Unread:
    """A WebSocket client that sends requests and reads nothing until ``close_code``.

    Its receive buffer is kept small, so what the server sends it piles up in the server.
    """

    def __init__(self, stream: trio.SocketStream, ws: WSConnection):
        self.stream = stream
        self.ws = ws
        self.pings = 0
        self._sending = trio.Lock()

    @classmethod
    async def open(cls, port: int) -> Unread:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: no autotuning
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/")))
        while True:
            ws.receive_data(await stream.receive_some(4096))
            if any(isinstance(event, AcceptConnection) for event in ws.events()):
                return cls(stream, ws)

    async def send(self, payload: dict[str, Any]) -> None:
        async with self._sending:
            await self.stream.send_all(self.ws.send(TextMessage(json.dumps(payload, ensure_ascii=False))))

    async def keep_alive(self, interval: float) -> None:
        """Ping every ``interval`` seconds, as client libraries' keepalives do, while the
        connection is open on this side (reading nothing, so never seeing a pong)."""
        try:
            while self.ws.state == ConnectionState.OPEN:
                async with self._sending:
                    await self.stream.send_all(self.ws.send(Ping(self.pings.to_bytes(4, "big"))))
                self.pings += 1
                await trio.sleep(interval)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def close_code(self) -> int | None:
        """Read everything the server sent; the code of its close frame (None: cut without one)."""
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                await self.stream.aclose()
                return None
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, CloseConnection):
                    async with self._sending:
                        # The server may already have cut the TCP connection after its Close.
                        with contextlib.suppress(trio.BrokenResourceError):
                            await self.stream.send_all(self.ws.send(event.response()))
                        await self.stream.aclose()
                    return event.code


class UnreadHttp:
    """An HTTP client that posts one speech request and reads nothing until ``read_to_end``."""

    def __init__(self, stream: trio.SocketStream):
        self.stream = stream

    @classmethod
    async def post(cls, port: int, body: dict[str, Any]) -> UnreadHttp:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: no autotuning
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        data = json.dumps(body, ensure_ascii=False).encode()
        head = (
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        await stream.send_all(head + data)
        return cls(stream)

    async def read_to_end(self) -> bytes:
        """Everything the server sent, until it closed the connection."""
        parts = []
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await self.stream.receive_some(1 << 16):
                parts.append(data)
        await self.stream.aclose()
        return b"".join(parts)
