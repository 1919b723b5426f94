"""Production behaviour: drain, limits, heartbeat, auth, several workers, abrupt clients."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from indextts_server.core.config import ServerConfig
from indextts_server.core.contract.decode import RequestError, decode_request
from indextts_server.core.engine import Segment, SynthesisJob
from indextts_server.io.audio.paths import AudioPaths
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.operations.cli import _alive
from indextts_server.io.scheduling.scheduler import EmbeddedScheduler
from indextts_server.io.service.service import Service

from .conftest import (
    CliServer,
    GatedEngine,
    Running,
    kernel_view,
    local_port,
    serve_contract,
    tts,
    upgrade,
    wait_until,
)

LONG = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"
SHUTDOWN = "服务器正在关闭，请稍后重连"


async def test_drain_finishes_the_running_task_cancels_the_waiting_and_closes_with_1001(
    start_server: Any,
) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as client:
        await client.send(tts(LONG, max_tokens=20))
        running = (await client.recv_json())["task_id"]
        await client.recv_json()
        await engine.first_segment()
        await client.send(tts("等待中。"))
        waiting = (await client.recv_json())["task_id"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.service.drain)
            assert await client.recv_json() == client.error_reply(SHUTDOWN, waiting)
            assert await client.error(tts("太晚了。")) == client.error_reply(SHUTDOWN)
            # New connections are refused at once, while the running task still runs.
            await wait_until(lambda: not server.service.listening)
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", server.port)
            engine.release()
            await client.recv_audio()
            assert await client.recv_json() == client.reply("end", running)
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.reason is not None and closed.value.reason.code == 1001
    with pytest.raises((OSError, HandshakeError)):
        async with open_websocket_url(server.url):
            pass


async def test_drain_timeout_stops_the_running_task_at_a_segment_boundary(
    start_server: Any,
) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine, drain_timeout=0.2)
    async with server.connect() as client:
        await client.send(tts(LONG, max_tokens=20))
        running = (await client.recv_json())["task_id"]
        await client.recv_json()
        await engine.first_segment()
        task = server.service.board.registry.get(running)
        assert task is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.service.drain)
            await wait_until(lambda: task.stop_reason is not None)  # past the drain timeout
            engine.release()
            assert await client.recv_json() == client.error_reply(SHUTDOWN, running)
            with pytest.raises(ConnectionClosed):
                await client.recv()
    assert server.service.board.registry.get(running).state == "cancelled"  # type: ignore[union-attr]


def test_sigterm_during_a_busy_queue_answers_everyone_and_exits_zero() -> None:
    server = CliServer(["--engine", "tone", "--tone-rtf", "0.5", "--port", "0", "--drain-timeout", "20"])
    port, process = server.port, server.process
    finals: dict[str, list[str]] = {}

    async def client(index: int, all_queued: trio.Event, counter: list[int]) -> None:
        async with open_websocket_url(f"ws://127.0.0.1:{port}", max_message_size=1 << 26) as ws:
            await ws.get_message()
            mine: list[str] = []
            for n in range(2):
                await ws.send_message(json.dumps(tts(f"客户{index}的第{n}个请求。")))
            outcome: list[str] = []
            while len(outcome) < 2:
                message = await ws.get_message()
                if isinstance(message, bytes):
                    continue
                data = json.loads(message)
                if data.get("type") == "queued":
                    mine.append(data["task_id"])
                    counter[0] += 1
                    if counter[0] == 6:
                        all_queued.set()
                elif data.get("type") == "end":
                    outcome.append("end")
                elif data.get("status") == "error":
                    assert data["message"] == SHUTDOWN
                    outcome.append("error")
            finals[str(index)] = outcome
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason is not None and closed.value.reason.code == 1001

    async def main() -> None:
        all_queued, counter = trio.Event(), [0]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(client, index, all_queued, counter)
                await all_queued.wait()
                process.send_signal(signal.SIGTERM)

    try:
        trio.run(main)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
    outcomes = [o for pair in finals.values() for o in pair]
    assert len(outcomes) == 6
    assert outcomes.count("end") >= 1 and outcomes.count("error") >= 1


class HangingEngine(ToneEngine):
    """A tone engine that hangs inside a segment for texts containing "挂起" until released.

    Its iterators record whether they were closed (``close()``; the garbage collector never
    calls it) and in which thread.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.released = threading.Event()
        self.closed = threading.Event()
        self.closed_in: str | None = None
        self.hang_from = 0  # the first segment that hangs

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        return _Hanging(self, super().synthesize(job), "挂起" in job.text)


class _Hanging(Iterator[Segment]):
    def __init__(self, engine: HangingEngine, inner: Iterator[Segment], hang: bool):
        self.engine = engine
        self.inner = inner
        self.hang = hang
        self.index = 0

    def __next__(self) -> Segment:
        segment = next(self.inner)
        self.index += 1
        if self.hang and self.index > self.engine.hang_from:
            self.engine.entered.set()
            self.engine.released.wait(timeout=30)
        return segment

    def close(self) -> None:
        self.engine.closed_in = threading.current_thread().name
        self.engine.closed.set()


async def test_task_timeout_fails_a_hung_task_and_the_queue_moves_on(start_server: Any) -> None:
    engine = HangingEngine()
    server: Running = await start_server(engine, task_timeout=0.3)
    async with server.connect() as client:
        await client.send(tts("这里会挂起。"))
        hung = (await client.recv_json())["task_id"]
        await client.recv_json()
        assert await client.recv_json() == client.error_reply("任务超时：超过 0.3 秒未完成", hung)
        await client.send({"type": "task_status", "task_id": hung})
        assert (await client.recv_json())["status"] == "failed"
        # The model is never entered twice at once: the next task starts once the hung call returns.
        engine.released.set()
        await client.request(tts("下一个任务。"))


async def test_after_a_timeout_the_next_task_waits_pending_until_the_engine_is_free(
    start_server: Any,
) -> None:
    engine = HangingEngine()
    server: Running = await start_server(engine, task_timeout=0.5)
    async with server.connect() as client:
        await client.send(tts("这里会挂起。"))
        hung = (await client.recv_json())["task_id"]
        assert (await client.recv_json())["type"] == "start"
        await client.send(tts("排在后面。"))
        waiting = (await client.recv_json())["task_id"]
        assert await client.recv_json() == client.error_reply("任务超时：超过 0.5 秒未完成", hung)
        # Its time has not started: it is not running while the hung call still holds the model.
        await client.send({"type": "task_status", "task_id": waiting})
        reply = await client.recv_json()
        assert (reply["status"], reply["completed_at"]) == ("pending", None)
        assert not engine.closed.is_set()
        engine.released.set()
        assert await client.recv_json() == client.reply("start", waiting)
        await client.recv_audio()
        assert await client.recv_json() == client.reply("end", waiting)
    # The abandoned iterator was closed by the thread that ran it, once it came back.
    assert engine.closed.is_set() and engine.closed_in != threading.main_thread().name


async def test_stopping_the_server_never_waits_for_a_thread_stuck_in_the_engine() -> None:
    engine = HangingEngine()
    engine.hang_from = 1  # inside its second segment: the engine's iterator exists by then
    service = Service(ServerConfig(host="127.0.0.1", port=0, task_timeout=60), engine)
    unstick = threading.Timer(10, engine.released.set)  # lets a server that waits finish anyway
    unstick.start()
    try:
        async with trio.open_nursery() as nursery:
            port = await serve_contract(nursery, service)
            async with open_websocket_url(f"ws://127.0.0.1:{port}") as ws:
                await ws.get_message()
                await ws.send_message(json.dumps(tts("这里会挂起。" + LONG, max_tokens=20)))
                await trio.to_thread.run_sync(engine.entered.wait, 10)
                nursery.cancel_scope.cancel()
        stopped_while_stuck = not engine.released.is_set()
    finally:
        unstick.cancel()
        engine.released.set()
    assert stopped_while_stuck
    await trio.to_thread.run_sync(engine.closed.wait, 10)
    assert engine.closed.is_set()


async def test_drain_fails_a_task_stuck_in_a_segment_even_without_a_task_timeout(
    start_server: Any,
) -> None:
    engine = HangingEngine()
    server: Running = await start_server(engine, task_timeout=0, drain_timeout=0.1)
    scheduler = server.service.scheduler
    assert isinstance(scheduler, EmbeddedScheduler)
    scheduler.stop_grace = 0.1
    try:
        async with server.connect() as client:
            await client.send(tts("这里会挂起。"))
            hung = (await client.recv_json())["task_id"]
            assert (await client.recv_json())["type"] == "start"
            await trio.to_thread.run_sync(engine.entered.wait, 10)
            with trio.fail_after(20):
                await server.service.drain()
            stuck = "服务器正在关闭：任务未能在限定时间内停止"
            assert await client.recv_json() == client.error_reply(stuck, hung)
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.reason is not None and closed.value.reason.code == 1001
        task = server.service.board.registry.get(hung)
        assert task is not None and (task.state, task.error_message) == ("failed", stuck)
    finally:
        engine.released.set()


class GatedPaths(AudioPaths):
    """Audio path checks that wait, in their worker thread, until released."""

    def __init__(self, paths: AudioPaths):
        super().__init__(paths.roots, ttl=0)
        self.entered = threading.Event()
        self.released = threading.Event()

    def check(self, field: str, value: str, now: float) -> str:
        self.entered.set()
        self.released.wait(timeout=30)
        return super().check(field, value, now)


async def test_a_request_still_being_checked_when_the_drain_starts_is_refused(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as client:
        await client.send(tts(LONG, max_tokens=20))
        running = (await client.recv_json())["task_id"]
        await client.recv_json()
        await engine.first_segment()
        paths = GatedPaths(server.service.paths)
        server.service.sources.paths = paths
        await client.send(tts("检查路径时开始关闭。"))
        await trio.to_thread.run_sync(paths.entered.wait, 10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.service.drain)
            await wait_until(lambda: server.service.draining)
            paths.released.set()
            # Refused, not queued: nothing enters the queue once the drain has begun.
            assert await client.recv_json() == client.error_reply(SHUTDOWN)
            engine.release()
            await client.recv_audio()
            assert await client.recv_json() == client.reply("end", running)
            with pytest.raises(ConnectionClosed):
                await client.recv()
    assert len(server.service.board.registry) == 1


async def test_per_session_limit_on_tasks_in_flight(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine, max_pending_per_session=2)
    async with server.connect() as client, server.connect() as other:
        await client.send(tts(LONG, max_tokens=20))
        await client.recv_json()
        await client.recv_json()
        await engine.first_segment()
        await client.send(tts("第二个。"))
        await client.recv_json()
        reply = await client.error(tts("第三个。"))
        assert reply == client.error_reply("本会话进行中的任务过多（最多 2 个），请等待已有任务完成")
        await other.send(tts("别的会话不受影响。"))
        assert (await other.recv_json())["type"] == "queued"
        engine.release()


async def test_idle_connection_is_closed_with_1001(start_server: Any) -> None:
    server: Running = await start_server(idle_timeout=0.2, ping_interval=0)
    async with server.connect() as client:
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.reason is not None and closed.value.reason.code == 1001


async def raw_handshake(port: int, path: str = "/", headers: str = "") -> tuple[trio.SocketStream, bytes]:
    """A bare TCP WebSocket handshake: a peer that then does whatever the test wants."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    response = await upgrade(stream, port, path, headers)
    return stream, response


async def test_peer_that_never_answers_pings_is_dropped(start_server: Any) -> None:
    server: Running = await start_server(ping_interval=0.1, ping_timeout=0.1)
    stream, response = await raw_handshake(server.port)
    assert response.startswith(b"HTTP/1.1 101")
    port = local_port(stream)
    await wait_until(lambda: len(server.service.sessions) == 1)
    # It never reads its socket, so it never answers a ping: the server gives up on it, and resets
    # its connection: the kernel holds nothing of it on either side.
    await wait_until(lambda: len(server.service.sessions) == 0)
    await wait_until(lambda: kernel_view(server.port, port) == {})
    await stream.aclose()


async def test_five_hundred_connections_dropped_abruptly_leave_the_server_healthy(
    server: Running,
) -> None:
    streams = []
    for _ in range(500):
        stream, response = await raw_handshake(server.port)
        assert response.startswith(b"HTTP/1.1 101")
        streams.append(stream)
    await wait_until(lambda: len(server.service.sessions) == 500)
    for stream in streams:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # RST, no close frame
    await wait_until(lambda: len(server.service.sessions) == 0)
    async with server.connect() as client:
        await client.request(tts("一切正常。"))


async def test_client_vanishing_mid_binary_does_not_disturb_others(server: Running) -> None:
    stream, response = await raw_handshake(server.port)
    assert response.startswith(b"HTTP/1.1 101")
    frame = json.dumps(tts("很长的文本。" * 300, max_tokens=600)).encode()
    # A masked text frame with a 16-bit length, as clients must send.
    assert 126 <= len(frame) < 65536
    mask = os.urandom(4)
    header = bytes([0x81, 0x80 | 126]) + len(frame).to_bytes(2, "big") + mask
    await stream.send_all(header + bytes(b ^ mask[i % 4] for i, b in enumerate(frame)))
    received = b""
    while len(received) < 100_000:  # well into the WAV
        received += await stream.receive_some(65536)
    await stream.aclose()
    async with server.connect() as client:
        await client.request(tts("我照常收到。"))
    await wait_until(lambda: len(server.service.sessions) == 0)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/", "", 401),
        ("/", "Authorization: Bearer wrong\r\n", 401),
        ("/?token=wrong", "", 401),
        ("/", "Authorization: Bearer s3cret\r\n", 101),
        ("/?token=s3cret", "", 101),
    ],
)
async def test_auth_token_in_header_or_query(start_server: Any, path: str, headers: str, status: int) -> None:
    server: Running = await start_server(auth_token="s3cret")
    stream, response = await raw_handshake(server.port, path, headers)
    assert response.split(b" ")[1] == str(status).encode()
    await stream.aclose()


async def handshake_status(port: int, headers: str, host: str | None = None) -> tuple[int, bytes]:
    """A bare handshake with ``headers`` (and ``host`` as its Host): its status, a refusal's body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(10):
        response = await upgrade(stream, port, "/", headers, host=host)
        status = int(response.split(b" ")[1])
        length = re.search(rb"(?i)content-length: *(\d+)", response)
        while length and len(response.partition(b"\r\n\r\n")[2]) < int(length[1]):
            response += await stream.receive_some(4096)
    await stream.aclose()
    return status, response.partition(b"\r\n\r\n")[2]


async def test_a_foreign_origin_is_refused_with_403_saying_how_to_let_it_in(start_http: Any) -> None:
    server: Running = await start_http()
    status, body = await handshake_status(server.port, "Origin: https://evil.example\r\n")
    assert (status, body) == (
        403,
        b"origin not allowed: https://evil.example (the server lets a page in with"
        b" --allow-origin https://evil.example)\n",
    )
    # A page on another host, on the server's ports or not; a host only named like loopback; a file.
    for origin in (
        f"http://evil.example:{server.port}",
        f"http://evil.example:{server.http_port}",
        "http://127.0.0.1.evil.example",
        "null",
    ):
        assert (await handshake_status(server.port, f"Origin: {origin}\r\n"))[0] == 403, origin


async def test_no_origin_a_loopback_page_and_the_servers_own_page_are_let_in(start_http: Any) -> None:
    server: Running = await start_http()
    assert (await handshake_status(server.port, ""))[0] == 101
    for origin in (
        f"http://127.0.0.1:{server.http_port}",  # the demo page
        f"https://127.0.0.1:{server.port}",  # the request's own origin
        "http://localhost:3000",
        "https://127.0.0.2",
        "http://[::1]:8080",
    ):
        assert (await handshake_status(server.port, f"Origin: {origin}\r\n"))[0] == 101, origin
    # By name: the page is the server's own when it comes from the host the handshake names.
    named = f"tts.example:{server.port}"
    for origin, status in (
        (f"http://tts.example:{server.http_port}", 101),
        (f"https://tts.example:{server.port}", 101),
        (f"http://tts.example:{server.http_port + 1}", 403),
        (f"http://other.example:{server.http_port}", 403),
    ):
        assert (await handshake_status(server.port, f"Origin: {origin}\r\n", named))[0] == status, origin


async def test_allow_origin_lets_the_listed_origins_in(start_server: Any) -> None:
    server: Running = await start_server(allowed_origins=("https://app.example",))
    for origin, status in (("https://app.example", 101), ("https://evil.example", 403)):
        assert (await handshake_status(server.port, f"Origin: {origin}\r\n"))[0] == status


async def test_allow_origin_star_accepts_any_origin(start_server: Any) -> None:
    server: Running = await start_server(allowed_origins=("*",))
    for origin in ("https://app.example", "http://elsewhere.example:8080", "null"):
        assert (await handshake_status(server.port, f"Origin: {origin}\r\n"))[0] == 101


async def test_two_workers_run_two_connections_tasks_at_once_in_fifo_order(start_server: Any) -> None:
    first, second = GatedEngine(), GatedEngine()
    server: Running = await start_server([first, second])
    texts = [f"第{i}个任务在这里呀呀呀呀。第二段文字在这里呀呀呀呀。" for i in range(3)]
    async with server.connect() as one, server.connect() as two, server.connect() as three:
        clients = [one, two, three]
        for client, text in zip(clients, texts, strict=True):
            await client.send(tts(text, max_tokens=20))
            assert (await client.recv_json())["type"] == "queued"
        assert (await one.recv_json())["type"] == "start"
        assert (await two.recv_json())["type"] == "start"
        await first.first_segment()
        await second.first_segment()
        began = first.texts("begin") + second.texts("begin")
        assert sorted(began) == texts[:2]  # the first two, at the same time
        first.release()
        second.release()
        for client in clients:
            while not isinstance(message := await client.recv(), dict) or message["type"] != "end":
                pass
    # The third ran after the first two, on whichever worker came free.
    assert sorted(first.texts("begin") + second.texts("begin")) == texts


async def test_one_connections_tasks_run_one_after_another_on_two_workers(start_server: Any) -> None:
    # Binary frames carry no task id: with an engine free, a connection's next task still waits for
    # its previous one, and its replies come task by task.
    first, second = GatedEngine(), GatedEngine()
    server: Running = await start_server([first, second])
    scheduler = server.service.scheduler
    assert isinstance(scheduler, EmbeddedScheduler)
    workers, registry = scheduler.workers, scheduler.board.registry
    texts = [f"第{i}个任务在这里呀呀呀呀。第二段文字在这里呀呀呀呀。" for i in range(3)]
    async with server.connect() as client:
        for text in texts:
            await client.send(tts(text, max_tokens=20))
        replies = [await client.recv_json() for _ in range(4)]  # three queued, and the first's start
        ids = [reply["task_id"] for reply in replies if reply["type"] == "queued"]
        assert [reply for reply in replies if reply["type"] != "queued"] == [client.reply("start", ids[0])]
        await wait_until(lambda: bool(first.texts("segment") + second.texts("segment")))  # held mid-task
        await wait_until(lambda: sum(len(worker.held) for worker in workers) == 2)  # the free one waits
        assert first.texts("begin") + second.texts("begin") == texts[:1]
        assert [task.state for task in map(registry.get, ids) if task] == ["running", "pending", "pending"]
        first.release()
        second.release()
        for index, task_id in enumerate(ids):
            if index:
                assert await client.recv_json() == client.reply("start", task_id)
            assert isinstance(await client.recv(), bytes)
            assert (await client.recv_json())["type"] == "end"
    assert sorted(first.texts("begin") + second.texts("begin")) == sorted(texts)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=5)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "type",
                            "text",
                            "prompt_audio",
                            "emo_mode",
                            "emo_vector",
                            "emo_alpha",
                            "max_tokens",
                            "task_id",
                            "stream",
                            "format",
                        ]
                    ),
                    children,
                    max_size=6,
                )
            ),
            max_leaves=20,
        ).map(lambda value: json.dumps(value)),
    )
)
def test_decoder_never_raises_anything_but_a_request_error(frame: str | bytes) -> None:
    try:
        decode_request(frame, max_text_chars=2000)
    except RequestError as error:
        assert str(error)


async def test_the_watchdog_stops_while_an_engine_call_is_stuck(start_server: Any) -> None:
    # The same predicate the CLI hands to the systemd watchdog.
    engine = HangingEngine()
    server: Running = await start_server(engine, task_timeout=0.3)
    alive = _alive(server.service, stall_limit=0.5)
    assert alive()
    try:
        async with server.connect() as client:
            await client.send(tts("这里会挂起。"))
            hung = (await client.recv_json())["task_id"]
            await client.recv_json()
            assert await client.recv_json() == client.error_reply("任务超时：超过 0.3 秒未完成", hung)
            # The task has failed, but the thread is still stuck inside the model: not alive.
            await wait_until(lambda: not alive())
            engine.released.set()
            await wait_until(alive)
            await client.request(tts("恢复了。"))
    finally:
        engine.released.set()
