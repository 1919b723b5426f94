"""Finished tasks stay queryable for the ttl, then the sweeper forgets them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import trio
import trio.testing

from indextts_server.core.engine import SynthesisJob
from indextts_server.core.tasks import InvalidTransition, Task, TaskRegistry
from indextts_server.io.scheduling.board import TaskBoard
from indextts_server.io.service.session import Session

from .conftest import Running, tts

JOB = SynthesisJob(text="你好", prompt_audio="/p.wav")


def _session() -> Session:
    return Session("s")


def test_registry_forgets_finished_tasks_after_the_ttl() -> None:
    registry = TaskRegistry(ttl=300)
    task = Task("t", "s", JOB, datetime.now())
    registry.add(task)
    assert registry.next_expiry() is None
    registry.move(task, "running", wall=datetime.now(), now=10)
    assert registry.expire(now=10_000) == []  # unfinished tasks are never swept
    registry.move(task, "completed", wall=datetime.now(), now=20)
    assert registry.next_expiry() == 320
    assert registry.expire(now=319.9) == []
    assert registry.expire(now=320) == [task]
    assert registry.get("t") is None


@pytest.mark.parametrize(
    ("path", "bad"),
    [(["running", "completed"], "running"), ([], "completed"), (["cancelled"], "running")],
)
def test_registry_refuses_transitions_the_table_lacks(path: list[Any], bad: Any) -> None:
    registry = TaskRegistry(ttl=1)
    task = Task("t", "s", JOB, datetime.now())
    registry.add(task)
    for state in path:
        registry.move(task, state, wall=datetime.now(), now=0)
    with pytest.raises(InvalidTransition):
        registry.move(task, bad, wall=datetime.now(), now=0)


async def test_sweeper_expires_each_task_ttl_after_it_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    board = TaskBoard(ttl=300, max_queue=10)
    session = _session()
    async with trio.open_nursery() as nursery:
        await nursery.start(board.sweep)
        first = board.submit(session, JOB)
        second = board.submit(session, JOB)
        assert isinstance(first, Task) and isinstance(second, Task)
        for task in (first, second):
            board.move(task, "running", session)
        board.move(first, "completed", session)
        await trio.sleep(100)
        board.move(second, "failed", session, "boom")
        await trio.sleep(199)  # t=299: both kept
        assert board.registry.get(first.task_id) is first
        await trio.sleep(2)  # t=301: first gone, second kept until t=400
        assert board.registry.get(first.task_id) is None
        assert board.registry.get(second.task_id) is second
        await trio.sleep(100)
        assert len(board.registry) == 0
        nursery.cancel_scope.cancel()


async def test_expired_task_status_is_an_unknown_task(start_server: Any) -> None:
    server: Running = await start_server(task_ttl=0.2)
    async with server.connect() as client:
        task_id, _ = await client.request(tts("很快过期。"))
        await client.send({"type": "task_status", "task_id": task_id})
        assert (await client.recv_json())["status"] == "completed"
        await trio.sleep(0.3)
        reply = await client.error({"type": "task_status", "task_id": task_id})
        assert reply == client.error_reply(f"任务不存在或已过期: {task_id}", task_id)


def test_a_task_that_never_ran_may_fail_but_never_complete() -> None:
    # Cluster mode: the broker can lose a waiting task; only a running task completes.
    registry = TaskRegistry(ttl=1)
    lost, unstarted = Task("lost", "s", JOB, datetime.now()), Task("unstarted", "s", JOB, datetime.now())
    registry.add(lost)
    registry.add(unstarted)
    registry.move(lost, "failed", wall=datetime.now(), now=5, error="lost")
    assert (lost.state, lost.error_message, lost.finished_at, lost.started_at) == ("failed", "lost", 5, None)
    with pytest.raises(InvalidTransition):
        registry.move(unstarted, "completed", wall=datetime.now(), now=5)
