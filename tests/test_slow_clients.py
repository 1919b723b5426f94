"""Clients that do not read: what the server holds for them is bounded in bytes, and they are closed with 1008.

The clients keep pinging all along, as client libraries' keepalives do: a ping that meets the
server's closing handshake must not take anything down (trio-websocket issue #184), nor keep the
connection open. A connection the server gives up on is reset once its grace has passed, which
the tests read from the kernel's socket tables: neither end is left in them.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from indextts_server.core.engine import SAMPLE_RATE
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.service import session as session_module
from indextts_server.io.service.session import Session

from .conftest import (
    CLIENT_MAX_MESSAGE,
    CliServer,
    Running,
    Unread,
    UnreadHttp,
    kernel_view,
    local_port,
    tts,
    wait_until,
)


def tasks_named(name: str) -> list[trio.lowlevel.Task]:
    """Every task of this run named ``name`` (a connection's: trio's serve_listeners's handler)."""
    found = []
    root = trio.lowlevel.current_root_task()
    assert root is not None
    pending = [root]
    while pending:
        task = pending.pop()
        found += [task] if task.name == name else []
        pending += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return found


NOT_READING = "客户端未及时读取消息，连接已关闭（1008）"
KEEPALIVE = 0.2
# 160 CJK characters: about 40 s of tone audio, a WAV of about 1.8 MB, in two segments.
LONG = "今天天气很好我们一起去公园散步吧。" * 10
LONG_WAV_BYTES = 40 * SAMPLE_RATE * 2


async def test_a_client_that_does_not_read_is_closed_with_1008_and_its_tasks_cancelled(
    start_server: Any, nursery: trio.Nursery
) -> None:
    server: Running = await start_server(max_session_buffer=4 * LONG_WAV_BYTES)
    lazy = await Unread.open(server.port)
    nursery.start_soon(lazy.keep_alive, KEEPALIVE)
    await wait_until(lambda: len(server.service.sessions) == 1)
    (session,) = server.service.sessions.values()
    for _ in range(12):
        await lazy.send(tts(LONG))
    await wait_until(lambda: session.overflowed)
    # Pings go on arriving after the server has decided to close (its Close frame may be out).
    pinged = lazy.pings
    await wait_until(lambda: lazy.pings >= pinged + 3)
    async with server.connect() as other:
        # The rest of the service carries on, and every task of the closed session ended cancelled.
        await other.request(tts("我照常收到。"))
        assert not session.tasks
        mine = [task for task in server.service.board.registry if task.session_id == session.session_id]
        assert len(mine) == 12
        assert {task.state for task in mine} <= {"completed", "cancelled"}
        cancelled = [task for task in mine if task.state == "cancelled"]
        assert len(cancelled) >= 12 - 4
        assert {task.error_message for task in cancelled} == {NOT_READING}
    assert await lazy.close_code() == 1008


GRACE = 1.0
"""The close grace these tests run with (the server's is 10 s)."""


async def reset_after_the_grace(server_port: int, given_up: dict[int, Session]) -> None:
    """Each connection (its client's port: the session the server gives up on) is still there,
    ESTABLISHED on both sides, when its session overflows, and gone from the kernel's tables on both
    sides (no FIN_WAIT1, no CLOSE_WAIT, no TIME_WAIT) once its ``GRACE`` has passed."""
    overflowed: dict[int, float] = {}
    with trio.fail_after(30):
        while len(overflowed) < len(given_up):
            for port, session in given_up.items():
                if session.overflowed and port not in overflowed:
                    overflowed[port] = trio.current_time()
                    view = kernel_view(server_port, port)
                    assert view == {"client": "ESTABLISHED", "server": "ESTABLISHED"}, f"in its grace: {view}"
            await trio.sleep(0.01)
    gone: dict[int, float] = {}
    with trio.fail_after(GRACE + 10):
        while len(gone) < len(given_up):
            for port in given_up:
                if port not in gone and not kernel_view(server_port, port):
                    gone[port] = trio.current_time()
            await trio.sleep(0.01)
    after = [when - overflowed[port] for port, when in gone.items()]
    print(f"reset {min(after):.2f} to {max(after):.2f} s after the overflow (grace {GRACE:g} s)")
    # Seen from here, the overflow may come late (never early) and the reset late: a loose bound.
    for port, when in gone.items():
        assert when - overflowed[port] < GRACE + 3, f"gone {when - overflowed[port]:.2f} s after its overflow"


async def test_clients_that_never_read_and_keep_pinging_are_reset_once_their_grace_has_passed(
    start_server: Any, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "CLOSE_GRACE", GRACE)
    server: Running = await start_server(max_session_buffer=4 * LONG_WAV_BYTES)
    lazies: list[Unread] = []
    for _ in range(4):
        lazies.append(await Unread.open(server.port))
        nursery.start_soon(lazies[-1].keep_alive, KEEPALIVE)
        await wait_until(lambda: len(server.service.sessions) == len(lazies))
    sessions = dict(zip([local_port(lazy.stream) for lazy in lazies], server.service.sessions.values(), strict=True))
    for _ in range(8):
        for lazy in lazies:
            await lazy.send(tts(LONG))
    connections = tasks_named("trio._highlevel_serve_listeners._run_handler")
    assert len(connections) == len(lazies)
    await reset_after_the_grace(server.port, sessions)
    # The server keeps nothing of them: no session, and no connection task (its reader included).
    assert server.service.sessions == {}
    await wait_until(lambda: tasks_named("trio._highlevel_serve_listeners._run_handler") == [])
    for lazy in lazies:
        with pytest.raises(trio.BrokenResourceError):  # reset, not closed
            while await lazy.stream.receive_some(1 << 16):
                pass


async def test_past_the_total_bound_the_session_holding_most_is_closed(
    start_server: Any, nursery: trio.Nursery
) -> None:
    server: Running = await start_server(
        max_session_buffer=100 * LONG_WAV_BYTES, max_total_buffer=6 * LONG_WAV_BYTES
    )
    greedy = await Unread.open(server.port)
    nursery.start_soon(greedy.keep_alive, KEEPALIVE)
    await wait_until(lambda: len(server.service.sessions) == 1)
    (session,) = server.service.sessions.values()
    for _ in range(6):
        await greedy.send(tts(LONG))
    await wait_until(lambda: session.overflowed)
    assert server.service.budget.buffered <= 6 * LONG_WAV_BYTES
    async with server.connect() as reader:
        _, wav = await reader.request(tts(LONG))
        assert len(wav) > LONG_WAV_BYTES * 0.9
    assert await greedy.close_code() == 1008


async def test_a_client_that_reads_gets_a_file_larger_than_its_bound(start_server: Any) -> None:
    server: Running = await start_server(max_session_buffer=1 << 16)
    async with server.connect() as client:
        _, wav = await client.request(tts(LONG))
        assert len(wav) > LONG_WAV_BYTES * 0.9
        _, again = await client.request(tts(LONG))
        assert again == wav


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


PER_SESSION = 3 * LONG_WAV_BYTES
TOTAL = 10 * LONG_WAV_BYTES
CONNECTIONS = 16
REQUESTS = 8
SLACK = 40 << 20
"""What may grow besides the buffers: interpreter and allocator overhead, the connections, the
running task's audio (once as samples, once as a file)."""


def test_many_connections_that_never_read_keep_rss_within_the_bounds() -> None:
    # Unbounded, these clients would make the server hold 16 x 8 files of 1.8 MB (~230 MB).
    server = CliServer(
        ["--engine", "tone", "--port", "0", "--max-queue", "1000", "--ping-interval", "0",
         "--max-session-buffer", str(PER_SESSION), "--max-total-buffer", str(TOTAL)],
        env=dict(os.environ),
    )  # fmt: skip
    pid = server.process.pid
    closed: list[int | None] = []

    async def read_close(lazy: Unread) -> None:
        closed.append(await lazy.close_code())

    async def main() -> None:
        with trio.fail_after(100):
            # Warm up: the first long request fills the engine's caches and the allocator.
            async with open_websocket_url(server.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
                await ws.send_message(json.dumps(tts(LONG)))
                while "生成完成" not in str(await ws.get_message()):
                    pass
            before = _memory(pid)["VmRSS"]
            lazies = [await Unread.open(server.port) for _ in range(CONNECTIONS)]
            async with trio.open_nursery() as nursery:
                for lazy in lazies:
                    nursery.start_soon(lazy.keep_alive, KEEPALIVE)
                for lazy in lazies:
                    for _ in range(REQUESTS):
                        await lazy.send(tts(LONG))
                # Every session is closed for not reading, once what it holds reaches a bound.
                await trio.to_thread.run_sync(lambda: _wait_for(server, "is not reading", CONNECTIONS))
                # The keepalives go on meeting the closing handshakes for a while.
                pinged = sum(lazy.pings for lazy in lazies)
                await wait_until(lambda: sum(lazy.pings for lazy in lazies) >= pinged + 3 * CONNECTIONS)
                peak = _memory(pid)["VmHWM"]
                for lazy in lazies:
                    nursery.start_soon(read_close, lazy)
        growth = peak - before
        print(f"server RSS before {before >> 20} MiB, peak growth {growth / (1 << 20):.1f} MiB")
        assert growth < TOTAL + SLACK, f"grew {growth >> 20} MiB"

    try:
        trio.run(main)
    finally:
        alive = server.process.poll() is None
        assert alive and server.stop() == 0, f"the server died:\n{server.text[-3000:]}"
    assert closed == [1008] * CONNECTIONS


def _wait_for(server: CliServer, pattern: str, count: int) -> None:
    deadline = time.monotonic() + 90
    while len(re.findall(pattern, server.text)) < count:
        assert server.process.poll() is None, f"the server died:\n{server.text[-3000:]}"
        assert time.monotonic() < deadline, f"{count} x {pattern!r} never logged:\n{server.text[-3000:]}"
        time.sleep(0.05)


# --- HTTP: the speech endpoint holds a request that does not read to the same bounds ---------------

HTTP_PER_SESSION = 8 << 20
HTTP_TOTAL = 64 << 20
HTTP_CLIENTS = 16
HTTP_GROWTH = 150 << 20
# About 215 s of tone speech: a WAV of about 20 MB at 48 kHz.
HTTP_LONG = "今天天气很好我们一起去公园散步吧。" * 54
HTTP_BYTES = 20_000_000


def test_many_http_clients_that_never_read_are_cut_off_within_the_bounds() -> None:
    server = CliServer(
        ["--engine", "tone", "--port", "0", "--max-queue", "1000", "--max-text-chars", "5000",
         "--max-session-buffer", str(HTTP_PER_SESSION), "--max-total-buffer", str(HTTP_TOTAL)],
        env=dict(os.environ),
    )  # fmt: skip
    pid = server.process.pid
    body = {"input": HTTP_LONG, "response_format": "wav", "sample_rate": 48000}
    ended: list[tuple[float, bytes]] = []

    async def cut(client: UnreadHttp, began: float) -> None:
        data = await client.read_to_end()
        ended.append((trio.current_time() - began, data))

    def whole(**extra: Any) -> httpx.Response:
        with httpx.Client(timeout=60) as http:
            return http.post(f"{server.http}/v1/audio/speech", json={**body, **extra})

    async def main() -> None:
        with trio.fail_after(100):
            # Warm up: a whole long file, read, fills the engine's caches and the allocator.
            warm = await trio.to_thread.run_sync(lambda: whole(stream=False))
            assert warm.status_code == 200 and len(warm.content) > HTTP_BYTES
            before = _memory(pid)["VmRSS"]
            began = trio.current_time()
            clients = [await UnreadHttp.post(server.http_port, body) for _ in range(HTTP_CLIENTS)]
            await trio.to_thread.run_sync(lambda: _wait_for(server, "is not reading", HTTP_CLIENTS))
            async with trio.open_nursery() as nursery:
                for client in clients:
                    nursery.start_soon(cut, client, began)
            peak = _memory(pid)["VmHWM"]
            growth = peak - before
            print(f"server RSS before {before >> 20} MiB, peak growth {growth / (1 << 20):.1f} MiB")
            print(f"cut after {min(s for s, _ in ended):.1f} to {max(s for s, _ in ended):.1f} s")
            assert growth < HTTP_GROWTH, f"grew {growth >> 20} MiB"
            # Every response was cut short (no final chunk), within 20 s of the requests.
            assert len(ended) == HTTP_CLIENTS
            for seconds, data in ended:
                assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"\r\n0\r\n\r\n")
                assert len(data) < HTTP_BYTES
                assert seconds < 20, f"cut after {seconds:.1f} s"
            # Their tasks ended cancelled, with the WebSocket's text; the next request is served.
            cancelled = re.findall(r"task cancelled .*error='([^']*)'", server.text)
            assert cancelled == [NOT_READING] * HTTP_CLIENTS
            after = await trio.to_thread.run_sync(lambda: whole(input="我照常收到。"))
            assert after.status_code == 200 and after.headers["content-type"] == "audio/wav"

    try:
        trio.run(main)
    finally:
        assert server.stop() == 0


async def test_an_http_response_stuck_on_a_client_that_stopped_reading_is_cut_after_the_grace(
    start_http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "CLOSE_GRACE", 0.5)
    # Segments come slower than the socket's buffers fill: the response is waiting on the client
    # when the outbox passes its bound.
    api: Running = await start_http(ToneEngine(rtf=0.02), max_session_buffer=4 * LONG_WAV_BYTES // 10)
    lazy = await UnreadHttp.post(api.http_port, {"input": HTTP_LONG, "response_format": "wav"})
    await wait_until(lambda: len(api.service.sessions) == 1)
    (session,) = api.service.sessions.values()
    with trio.fail_after(30):
        # Unread, the response stays stuck in a write: the request gives up on it after the grace.
        while session.session_id in api.service.sessions:  # noqa: ASYNC110 - no event marks it
            await trio.sleep(0.05)
        data = await lazy.read_to_end()
    assert session.overflowed
    assert data.startswith(b"HTTP/1.1 200") and not data.endswith(b"\r\n0\r\n\r\n")
    (task,) = api.service.board.registry
    assert (task.state, task.error_message) == ("cancelled", NOT_READING)
    async with httpx.AsyncClient(timeout=30) as http:
        after = await http.post(
            f"{api.http}/v1/audio/speech", json={"input": "我照常收到。", "stream": False}
        )
    assert after.status_code == 200 and after.headers["content-type"] == "audio/mpeg"


async def test_http_clients_that_never_read_are_reset_once_their_grace_has_passed(
    start_http: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "CLOSE_GRACE", GRACE)
    api: Running = await start_http(max_session_buffer=4 * LONG_WAV_BYTES // 10)
    lazies: list[UnreadHttp] = []
    for _ in range(3):
        lazies.append(await UnreadHttp.post(api.http_port, {"input": HTTP_LONG, "response_format": "wav"}))
        await wait_until(lambda: len(api.service.sessions) == len(lazies))
    sessions = dict(zip([local_port(lazy.stream) for lazy in lazies], api.service.sessions.values(), strict=True))
    assert len(tasks_named("trio._highlevel_serve_listeners._run_handler")) == len(lazies)
    await reset_after_the_grace(api.http_port, sessions)
    assert api.service.sessions == {}
    await wait_until(lambda: tasks_named("trio._highlevel_serve_listeners._run_handler") == [])
    for lazy in lazies:
        with pytest.raises(trio.BrokenResourceError):  # reset, not closed
            while await lazy.stream.receive_some(1 << 16):
                pass
    async with httpx.AsyncClient(timeout=30) as http:
        after = await http.post(f"{api.http}/v1/audio/speech", json={"input": "我照常收到。", "stream": False})
    assert after.status_code == 200
