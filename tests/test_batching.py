"""``--batch-size N``: running tasks advance together, and the contract still holds for each task."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trio

from indextts_server.core.engine import Segment, SynthesisJob
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.scheduling.runner import Outcome, advance_each

from .conftest import Client, Running, tts, wait_until

TWO = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。"
THREE = TWO + "第三段文字在这里呀呀呀呀。"
SHUTDOWN = "服务器正在关闭，请稍后重连"


class _Row(Iterator[Segment]):
    def __init__(self, text: str, inner: Iterator[Segment]):
        self.text = text
        self.inner = inner
        self.closed = False

    def __next__(self) -> Segment:
        return next(self.inner)

    def close(self) -> None:
        self.closed = True


class SteppedEngine:
    """A tone engine with ``advance``: each call (one step) waits until the test allows one more.

    ``steps`` records the texts of the rows of every step, in the order the engine got them.
    """

    name = "stepped"
    capabilities = ToneEngine.capabilities

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.inner = ToneEngine(fail_on=fail_on)
        self.allowed = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.steps: list[list[str]] = []
        self.waiting = threading.Event()  # a step is waiting to be allowed
        self.free = False

    def warm_up(self) -> None:
        pass

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        return _Row(job.text, self.inner.synthesize(job))

    def advance(self, rows: Sequence[Iterator[Segment]]) -> list[Outcome]:
        with self.lock:
            self.steps.append([row.text for row in rows if isinstance(row, _Row)])
        self.waiting.set()
        if not self.free:
            assert self.allowed.acquire(timeout=30), "the test never allowed this step"
        self.waiting.clear()
        return advance_each(rows)

    async def step(self) -> None:
        """Let the step that is waiting (or the next one) run."""
        await trio.to_thread.run_sync(self.waiting.wait, 30)
        self.waiting.clear()
        self.allowed.release()

    def run_freely(self) -> None:
        self.free = True
        self.allowed.release()


async def send(client: Client, text: str, **fields: Any) -> str:
    await client.send(tts(text, max_tokens=20, **fields))
    queued = await client.recv_json()
    assert queued["type"] == "queued", queued
    task_id: str = queued["task_id"]
    return task_id


async def finish(client: Client, task_id: str, binaries: int = 1) -> None:
    for _ in range(binaries):
        await client.recv_audio()
    assert await client.recv_json() == client.reply("end", task_id)


async def two_running(engine: SteppedEngine, first: Client, second: Client) -> tuple[str, str]:
    """A three-segment task from each client, both running once step 1 (the first's alone) is done."""
    one = await send(first, THREE)
    await first.recv_json()  # start
    two = await send(second, THREE)
    await engine.step()
    assert await second.recv_json() == second.reply("start", two)
    return one, two


async def test_tasks_join_in_fifo_order_at_the_next_step_and_advance_together(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=8)
    async with server.connect() as a, server.connect() as b, server.connect() as c:
        first = await send(a, TWO)
        assert await a.recv_json() == a.reply("start", first)
        await trio.to_thread.run_sync(engine.waiting.wait, 10)  # step 1: the first task alone
        second, third = await send(b, TWO), await send(c, THREE)
        await engine.step()
        assert await b.recv_json() == b.reply("start", second)
        assert await c.recv_json() == c.reply("start", third)
        engine.run_freely()
        await finish(a, first)
        await finish(b, second)
        await finish(c, third)
    assert engine.steps == [[TWO], [TWO, TWO, THREE], [TWO, THREE], [THREE]]


async def test_queued_positions_count_only_tasks_not_started(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=2)
    texts = [f"第{index}个。" for index in range(4)]
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(server.connect()) for _ in texts]
        for index, (client, text) in enumerate(zip(clients, texts, strict=True)):
            await client.send(tts(text, max_tokens=20, details=True))
            queued = await client.recv_json()
            if index == 0:
                assert queued["position"] == 1
                assert (await client.recv_json())["type"] == "start"
                await trio.to_thread.run_sync(engine.waiting.wait, 10)
            else:  # the first has started; the others wait behind each other
                assert queued["position"] == index
        engine.run_freely()
        for client in clients:
            seen = [await client.recv() for _ in range(2 if client is clients[0] else 3)]
            assert [m["type"] for m in seen if isinstance(m, dict)] == (
                ["end"] if client is clients[0] else ["start", "end"]
            )
    # In queue order, two at a time.
    assert engine.steps == [texts[:1], texts[1:3], texts[3:]]


async def test_a_sessions_next_task_waits_for_its_previous_while_other_sessions_fill_the_batch(
    start_server: Any,
) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=8)
    async with server.connect() as a, server.connect() as b:
        first = await send(a, TWO)
        assert await a.recv_json() == a.reply("start", first)
        await trio.to_thread.run_sync(engine.waiting.wait, 10)  # step 1: the first task alone
        second = await send(a, "甲的第二个。")
        other = await send(b, TWO)
        await engine.step()
        assert await b.recv_json() == b.reply("start", other)  # joins ahead of a's second
        await a.send({"type": "task_status", "task_id": second})
        assert (await a.recv_json())["status"] == "pending"
        engine.run_freely()
        await finish(a, first)
        assert await a.recv_json() == a.reply("start", second)
        await finish(a, second)
        await finish(b, other)
    assert engine.steps == [[TWO], [TWO, TWO], [TWO, "甲的第二个。"]]


async def test_cancel_ends_only_its_row_and_frees_its_slot(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=2)
    async with server.connect() as a, server.connect() as b, server.connect() as c:
        cancelled = await send(a, THREE)
        await a.recv_json()  # start
        kept = await send(b, THREE)
        waiting = await send(c, "等空位。")
        await engine.step()  # step 1: the first task alone
        assert await b.recv_json() == b.reply("start", kept)
        await trio.to_thread.run_sync(engine.waiting.wait, 10)  # step 2 holds both rows
        await a.send({"type": "cancel", "task_id": cancelled})
        assert (await a.recv_json())["status"] == "cancelling"
        await engine.step()
        assert await a.recv_json() == a.error_reply("任务已取消", cancelled)
        assert await c.recv_json() == c.reply("start", waiting)  # its slot, at the next step
        engine.run_freely()
        await finish(c, waiting)
        await finish(b, kept)
    assert engine.steps[2] == [THREE, "等空位。"]


async def test_a_disconnect_ends_only_its_row(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=8)
    async with server.connect() as stays:
        async with server.connect() as leaver:
            gone, kept = await two_running(engine, leaver, stays)
            session = leaver.session_id
        await wait_until(lambda: session not in server.service.sessions)
        engine.run_freely()
        await finish(stays, kept)
        await stays.send({"type": "task_status", "task_id": gone})
        reply = await stays.recv_json()
        assert (reply["status"], reply["error_message"]) == ("cancelled", "客户端已断开连接")
    # The leaver's row was in steps 1 and 2 (step 2 had begun when it left), never in step 3;
    # the other row got all three of its segments.
    assert sum(step.count(THREE) for step in engine.steps) == 2 + 3


async def test_an_engine_exception_fails_only_its_row(start_server: Any) -> None:
    engine = SteppedEngine(fail_on="💥")
    server: Running = await start_server(engine, batch_size=8)
    async with server.connect() as a, server.connect() as b:
        fails = await send(a, "第一段文字在这里呀呀呀呀。第二段会失败💥呀呀呀呀呀。")
        await a.recv_json()
        ok = await send(b, TWO)
        await engine.step()
        assert await b.recv_json() == b.reply("start", ok)
        engine.run_freely()
        message = "音频生成失败: tone engine failed on purpose ('💥')"
        assert await a.recv() == a.error_reply(message, fails)
        await finish(b, ok)


async def test_a_timed_out_row_fails_at_once_mid_step_and_the_queue_moves_on(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=8, task_timeout=0.3)
    async with server.connect() as client:
        hung = await send(client, THREE)
        await client.recv_json()
        await trio.to_thread.run_sync(engine.waiting.wait, 10)  # step 1 never allowed in time
        assert await client.recv_json() == client.error_reply("任务超时：超过 0.3 秒未完成", hung)
        nxt = await send(client, "下一个。")
        engine.run_freely()
        assert await client.recv_json() == client.reply("start", nxt)
        await finish(client, nxt)
    assert [THREE] == engine.steps[0] and all(THREE not in step for step in engine.steps[1:])


async def test_streaming_is_unchanged_per_task(start_server: Any) -> None:
    engine = SteppedEngine()
    engine.run_freely()
    server: Running = await start_server(engine, batch_size=8)
    async with server.connect() as a, server.connect() as b:
        streamed = await send(a, THREE, stream=True)
        whole = await send(b, THREE)
        assert (await a.recv_json())["type"] == "start"
        assert await b.recv_json() == b.reply("start", whole)
        for _ in range(3):
            await a.recv_audio()  # one binary per segment
        ended = await a.recv_json()
        assert (ended["type"], ended["task_id"]) == ("end", streamed)
        await finish(b, whole, binaries=1)


async def test_drain_finishes_running_rows_and_cancels_the_waiting(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=2)
    async with server.connect() as a, server.connect() as b:
        first = await send(a, TWO)
        await a.recv_json()
        second = await send(b, TWO)
        waiting = await send(a, "等待中。")
        await engine.step()
        assert await b.recv_json() == b.reply("start", second)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.service.drain)
            assert await a.recv_json() == a.error_reply(SHUTDOWN, waiting)
            engine.run_freely()
            await finish(a, first)
            await finish(b, second)


async def test_drain_timeout_stops_every_running_row_at_the_next_step(start_server: Any) -> None:
    engine = SteppedEngine()
    server: Running = await start_server(engine, batch_size=8, drain_timeout=0.2)
    async with server.connect() as a, server.connect() as b:
        first, second = await two_running(engine, a, b)
        tasks = [server.service.board.registry.get(task_id) for task_id in (first, second)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.service.drain)
            await wait_until(lambda: all(task is not None and task.stop_reason for task in tasks))
            engine.run_freely()
            assert await a.recv() == a.error_reply(SHUTDOWN, first)
            assert await b.recv() == b.error_reply(SHUTDOWN, second)


@pytest.mark.parametrize("batch_size", [2, 8])
async def test_every_request_ends_once_under_a_burst(start_server: Any, batch_size: int) -> None:
    server: Running = await start_server(ToneEngine(), batch_size=batch_size)
    ended: list[str] = []

    async def one(index: int) -> None:
        async with server.connect() as client:
            task_id, wav = await client.request(tts(f"第{index}个客户端。{TWO}", max_tokens=20))
            assert wav[:4] == b"RIFF"
            ended.append(task_id)

    async with trio.open_nursery() as nursery:
        for index in range(12):
            nursery.start_soon(one, index)
    assert len(set(ended)) == 12


class BrokenOnce(SteppedEngine):
    """Its first step raises for the whole batch, as an engine that cannot say whose error it is."""

    def advance(self, rows: Sequence[Iterator[Segment]]) -> list[Outcome]:
        if not self.steps:
            self.steps.append([])
            raise RuntimeError("the whole batch broke")
        return super().advance(rows)


async def test_an_error_for_the_whole_step_fails_its_rows_and_the_worker_goes_on(start_server: Any) -> None:
    engine = BrokenOnce()
    engine.run_freely()
    server: Running = await start_server(engine, batch_size=8)
    async with server.connect() as client:
        broken = await send(client, TWO)
        await client.recv_json()
        message = "音频生成失败: the whole batch broke"
        assert await client.recv_json() == client.error_reply(message, broken)
        await client.request(tts("之后照常。", max_tokens=20))
