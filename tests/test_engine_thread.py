"""Each engine's own thread: built, warmed up, run, cancelled and closed on one thread for its life."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from indextts_server.core.config import EngineOptions
from indextts_server.core.engine import Segment, SynthesisJob
from indextts_server.io.engines.thread import EngineThread, close_engine, home_thread, start_engine
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.operations.cli import build_engines

from .conftest import Running, tts

THREE_SEGMENTS = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"


class ThreadNotingEngine(ToneEngine):
    """A tone engine that notes the thread of every call into it, its construction included."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = [("init", threading.current_thread().name)]
        super().__init__()

    def _note(self, what: str) -> None:
        self.calls.append((what, threading.current_thread().name))

    def warm_up(self) -> None:
        self._note("warm_up")

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        self._note("synthesize")
        for segment in super().synthesize(job):
            self._note("segment")
            yield segment

    def close(self) -> None:
        self._note("close")

    def threads(self) -> set[str]:
        return {name for _, name in self.calls}


async def test_every_call_into_an_engine_runs_on_the_thread_it_was_built_on(start_server: Any) -> None:
    engine = start_engine(ThreadNotingEngine, "engine-test")
    home_thread(engine).call(engine.warm_up)
    server: Running = await start_server(engine)
    async with server.connect() as client:
        for _ in range(4):
            await client.request(tts(THREE_SEGMENTS, max_tokens=20))
    await trio.to_thread.run_sync(close_engine, engine)
    kinds = [what for what, _ in engine.calls]
    assert kinds[:2] == ["init", "warm_up"] and kinds[-1] == "close"
    assert kinds.count("synthesize") == 4
    assert kinds.count("segment") == 12
    assert engine.threads() == {"engine-test"}, engine.calls


async def test_an_engine_built_elsewhere_gets_one_thread_of_its_own_for_all_its_calls(
    start_server: Any,
) -> None:
    engine = ThreadNotingEngine()
    server: Running = await start_server(engine)
    async with server.connect() as client:
        for _ in range(3):
            await client.request(tts(THREE_SEGMENTS, max_tokens=20))
    names = engine.threads() - {threading.current_thread().name}
    assert len(names) == 1 and names == {home_thread(engine).name}


def test_each_tone_engine_of_several_workers_has_its_own_thread() -> None:
    engines = build_engines(EngineOptions(kind="tone", workers=3), lambda _status: None)
    names = [home_thread(engine).name for engine in engines]
    assert len(set(names)) == 3
    assert [home_thread(engine).call(lambda: threading.current_thread().name) for engine in engines] == names
    for engine in engines:
        close_engine(engine)


def test_a_failing_build_reaches_the_caller_and_ends_its_thread() -> None:
    before = {thread.name for thread in threading.enumerate()}

    def broken() -> object:
        raise RuntimeError("no model here")

    with pytest.raises(RuntimeError, match="no model here"):
        start_engine(broken, "engine-broken")
    for thread in threading.enumerate():
        if thread.name == "engine-broken" and thread.name not in before:
            thread.join(10)
            assert not thread.is_alive()


def test_calls_run_in_order_and_an_error_is_raised_in_the_caller() -> None:
    thread = EngineThread("engine-order")
    seen: list[int] = []
    for index in range(5):
        thread.post(seen.append, index)
    assert thread.call(lambda: list(seen)) == [0, 1, 2, 3, 4]
    with pytest.raises(ZeroDivisionError):
        thread.call(lambda: 1 / 0)
    assert thread.call(lambda: threading.current_thread().name) == "engine-order"
    thread.stop()
    assert thread.join(10)
    with pytest.raises(RuntimeError, match="has stopped"):
        thread.call(lambda: None)


def test_closing_never_waits_for_a_call_still_stuck_in_the_engine() -> None:
    engine = start_engine(ThreadNotingEngine, "engine-stuck")
    thread = home_thread(engine)
    entered, release = threading.Event(), threading.Event()

    def stuck() -> None:
        entered.set()
        release.wait(60)

    thread.post(stuck)
    assert entered.wait(10)
    close_engine(engine, timeout=60)  # returns at once: the drain has already given up on this call
    assert not release.is_set() and "close" not in [what for what, _ in engine.calls]
    release.set()
    assert thread.join(10)
    assert engine.calls[-1] == ("close", "engine-stuck")
