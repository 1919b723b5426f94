"""What one connection raises ends that connection only: logged once, counted, the rest served."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from hypercorn.protocol import ProtocolWrapper
from trio_websocket import ConnectionClosed

from indextts_server.core.config import ServerConfig
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.operations.metrics import Metrics
from indextts_server.io.service.service import Service
from indextts_server.io.transport.containment import Containment
from indextts_server.io.transport.websocket import WebSocketTransport

from .conftest import Running, StartServer, tts, wait_until


async def test_an_exception_in_one_connection_closes_it_and_the_server_serves_the_next(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = Metrics(process_metrics=False)
    service = Service(ServerConfig(host="127.0.0.1", port=0), ToneEngine(), metrics=metrics)
    await nursery.start(service.run)
    transport = WebSocketTransport(service)
    await nursery.start(transport.run)
    server = Running(service, transport.port)

    async def broken_status(task_id: str, session: Any) -> None:
        raise RuntimeError("a bug in the status query")

    monkeypatch.setattr(server.service.scheduler, "status", broken_status)
    caplog.set_level(logging.INFO, "indextts_server")
    for _ in range(2):
        caught = transport.containment.caught
        async with server.connect() as doomed:
            await doomed.send({"type": "task_status", "task_id": "x"})
            with pytest.raises(ConnectionClosed):
                while True:
                    await doomed.recv()
        await wait_until(lambda: transport.containment.caught > caught)  # noqa: B023 - awaited here
    lines = [r for r in caplog.records if r.getMessage().startswith("unexpected error on session")]
    assert [r.getMessage().split(": ")[-1] for r in lines] == ["RuntimeError; connection closed"] * 2
    assert lines[0].exc_info is not None and lines[1].exc_info is None  # one traceback a minute
    assert "indextts_unexpected_errors_total 2.0" in metrics.render().decode()
    async with server.connect() as client:
        await client.request(tts("我照常收到。"))


async def test_an_exception_in_one_http_connection_closes_it_and_the_port_serves_the_next(
    start_http: StartServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_http()
    handle = ProtocolWrapper.handle
    broken = {"left": 1}

    async def fails_once(self: ProtocolWrapper, event: Any) -> None:
        if broken["left"]:
            broken["left"] -= 1
            raise RuntimeError("a bug in the connection's handling")
        await handle(self, event)

    monkeypatch.setattr(ProtocolWrapper, "handle", fails_once)
    caplog.set_level(logging.INFO, "indextts_server")
    for expected in (b"", b"HTTP/1.1 200"):
        stream = await trio.open_tcp_stream("127.0.0.1", server.http_port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = b""
        while data := await stream.receive_some(4096):
            response += data
        assert response.startswith(expected)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unexpected error on http")]
    assert len(lines) == 1 and lines[0].endswith(": RuntimeError; connection closed"), lines


async def test_containment_passes_cancellation_and_catches_groups() -> None:
    containment = Containment("test")

    async def group() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise KeyError("inside a group")

    await containment.run("a", group)
    assert containment.caught == 1
    with trio.CancelScope() as scope:
        scope.cancel()
        await containment.run("b", trio.sleep_forever)
    assert scope.cancelled_caught and containment.caught == 1
