"""The global FIFO queue: one task at a time in arrival order, cancellation, failure, admission."""

from __future__ import annotations

from typing import Any

import trio

from indextts_server.core.engine import SAMPLE_RATE
from indextts_server.io.engines.tone import ToneEngine

from .conftest import Client, GatedEngine, RecordingEngine, Running, Unread, tts, wait_until

THREE_SEGMENTS = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"


async def status(client: Client, task_id: str) -> dict[str, Any]:
    await client.send({"type": "task_status", "task_id": task_id})
    reply = await client.recv_json()
    assert reply["type"] == "task_status", reply
    return reply


async def test_tasks_run_one_at_a_time_in_arrival_order_across_connections(
    start_server: Any,
) -> None:
    engine = RecordingEngine(ToneEngine(rtf=0.05))
    server: Running = await start_server(engine)
    texts = [f"第{i}个客户端的请求。" for i in range(4)]
    done: list[str] = []

    async def one(text: str, sent: trio.Event, previous: trio.Event | None) -> None:
        async with server.connect() as client:
            if previous is not None:
                await previous.wait()
            await client.send(tts(text))
            assert (await client.recv_json())["type"] == "queued"
            sent.set()
            assert (await client.recv_json())["type"] == "start"
            await client.recv_audio()
            assert (await client.recv_json())["type"] == "end"
            done.append(text)

    async with trio.open_nursery() as nursery:
        previous = None
        for text in texts:
            sent = trio.Event()
            nursery.start_soon(one, text, sent, previous)
            previous = sent
    assert engine.texts("begin") == texts
    # Strictly one at a time: every job finishes before the next begins.
    assert [what for what, _ in engine.events if what != "segment"] == ["begin", "finish"] * 4
    assert sorted(done) == sorted(texts)


async def test_waiting_task_is_pending_and_running_task_is_running(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as a, server.connect() as b:
        await a.send(tts(THREE_SEGMENTS, max_tokens=20))
        first = (await a.recv_json())["task_id"]
        await a.recv_json()  # start
        await engine.first_segment()
        await b.send(tts("排在后面。"))
        second = (await b.recv_json())["task_id"]
        assert (await status(b, first))["status"] == "running"
        waiting = await status(b, second)
        assert (waiting["status"], waiting["completed_at"]) == ("pending", None)
        engine.release()
        await a.recv_audio()
        assert (await a.recv_json())["type"] == "end"


async def test_full_queue_answers_busy_at_once(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine, max_queue=1)
    async with server.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20))
        running = (await client.recv_json())["task_id"]
        assert await client.recv_json() == client.reply("start", running)
        await engine.first_segment()
        await client.send(tts("等待中的任务。"))
        waiting = (await client.recv_json())["task_id"]
        refused = await client.error(tts("放不下了。"))
        assert refused == client.error_reply("服务器繁忙：队列已满（最多 1 个等待任务），请稍后重试")
        engine.release()
        messages = [await client.recv() for _ in range(5)]
        ends = [m["task_id"] for m in messages if isinstance(m, dict) and m.get("type") == "end"]
        assert ends == [running, waiting]
    assert engine.texts("begin") == [THREE_SEGMENTS, "等待中的任务。"]


async def test_disconnect_cancels_pending_tasks_without_computing_them(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as a:
        await a.send(tts(THREE_SEGMENTS, max_tokens=20))
        running = (await a.recv_json())["task_id"]
        await a.recv_json()
        await engine.first_segment()
        async with server.connect() as b:
            gone = []
            for text in ("走了的一。", "走了的二。"):
                await b.send(tts(text))
                gone.append((await b.recv_json())["task_id"])
            session = b.session_id
        await wait_until(lambda: session not in server.service.sessions)
        for task_id in gone:
            reply = await status(a, task_id)
            assert (reply["status"], reply["error_message"]) == ("cancelled", "客户端已断开连接")
        engine.release()
        await a.recv_audio()
        assert await a.recv_json() == a.reply("end", running)
        _, _wav = await a.request(tts("后来的任务。"))
    assert engine.texts("begin") == [THREE_SEGMENTS, "后来的任务。"]


async def test_disconnect_stops_a_running_task_between_segments(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as leaver:
        await leaver.send(tts(THREE_SEGMENTS, max_tokens=20))
        task_id = (await leaver.recv_json())["task_id"]
        await leaver.recv_json()
        await engine.first_segment()
        session = leaver.session_id
    await wait_until(lambda: session not in server.service.sessions)
    engine.release()
    async with server.connect() as other:
        await other.request(tts("下一个任务照常运行。"))
        reply = await status(other, task_id)
        assert reply["status"] == "cancelled"
    # The model stopped after at most one more segment; the third was never computed.
    assert engine.texts("segment").count(THREE_SEGMENTS) < 3
    assert engine.texts("finish")[0] == THREE_SEGMENTS


async def test_engine_failure_fails_only_that_task(start_server: Any) -> None:
    server: Running = await start_server(ToneEngine(fail_on="💥"))
    async with server.connect() as client:
        await client.send(tts("这一句会失败💥。"))
        task_id = (await client.recv_json())["task_id"]
        assert await client.recv_json() == client.reply("start", task_id)
        message = "音频生成失败: tone engine failed on purpose ('💥')"
        assert await client.recv_json() == client.error_reply(message, task_id)
        reply = await status(client, task_id)
        assert (reply["status"], reply["error_message"]) == ("failed", message)
        assert reply["completed_at"] is not None
        await client.request(tts("下一句正常。"))


async def test_slow_reader_does_not_delay_other_clients(start_server: Any) -> None:
    server: Running = await start_server()
    board = server.service.board
    # The lazy client asks for five long files (~40 s of audio each, within its byte bound) and
    # reads none of them: the inference task hands each over and goes on.
    lazy = await Unread.open(server.port)
    await wait_until(lambda: len(server.service.sessions) == 1)
    (session,) = server.service.sessions.values()
    for _ in range(5):
        await lazy.send(tts("今天天气很好我们一起去公园散步吧。" * 10))
    await wait_until(lambda: sum(task.state == "completed" for task in board.registry) == 5)
    # Most of that audio still waits in the server, unread, and another client is served at once.
    assert session.queued > 3 * 2 * 40 * SAMPLE_RATE * 2
    async with server.connect() as busy:
        for _ in range(5):
            await busy.request(tts("我不用等。"))


async def test_two_hundred_concurrent_connections_each_get_exactly_one_wav(
    start_server: Any,
) -> None:
    # All 200 may be waiting at once, so the queue must hold them (the default holds 100).
    server: Running = await start_server(max_queue=200)
    results: dict[str, int] = {}

    async def one(index: int) -> None:
        async with server.connect() as client:
            await client.send(tts(f"第{index}号。"))
            wavs, end = 0, None
            while end is None:
                message = await client.recv()
                if isinstance(message, bytes):
                    wavs += 1
                elif message.get("type") == "end":
                    end = message
                else:
                    assert message.get("type") in ("queued", "start"), message
            results[client.session_id] = wavs

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(200):
                nursery.start_soon(one, index)
    assert len(results) == 200
    assert set(results.values()) == {1}
