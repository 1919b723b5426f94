"""The operations endpoints on hypercorn (the HTTP port, or ``--metrics-port`` alone) and the metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from indextts_server.core import texts
from indextts_server.core.config import ServerConfig
from indextts_server.core.engine import Engine
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.http.app import HttpApi
from indextts_server.io.operations.metrics import Metrics
from indextts_server.io.service.service import Service, ServiceMetrics
from indextts_server.io.transport.http import bound_port, serve_http

from .conftest import GatedEngine, Running, decode_wav, serve_contract, tts

THREE_SEGMENTS = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body


async def exchange(port: int, raw: bytes, method: str = "GET") -> Reply:
    """Send ``raw`` bytes, read one response, and parse it."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            conn = h11.Connection(h11.CLIENT)
            # h11 frames a response by the request it believes was sent (HEAD: no body).
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
            status, headers, body = 0, {}, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return Reply(status, headers, body)


async def get(port: int, path: str, method: str = "GET") -> Reply:
    raw = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    return await exchange(port, raw, method)


class Ops:
    def __init__(self, service: Service, metrics: Metrics, port: int):
        self.service = service
        self.metrics = metrics
        self.port = port

    async def scrape(self) -> dict[str, float]:
        """``/metrics``, parsed: each sample's ``name{labels}`` to its value."""
        reply = await get(self.port, "/metrics")
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = {}
        for family in text_string_to_metric_families(reply.body.decode()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


@pytest.fixture
async def ops(nursery: trio.Nursery) -> Ops:
    """A server and ``--metrics-port``'s application: the operations endpoints alone."""
    service = Service(ServerConfig(host="127.0.0.1", port=0), ToneEngine())
    metrics = Metrics()
    await serve_contract(nursery, service)
    urls = await nursery.start(partial(serve_http, HttpApi(service, metrics, ops_only=True), "127.0.0.1", 0))
    return Ops(service, metrics, bound_port(urls))


# --- /healthz, /readyz ----------------------------------------------------------------------------


async def test_healthz_says_ok(ops: Ops) -> None:
    reply = await get(ops.port, "/healthz")
    assert (reply.status, reply.headers["content-type"], reply.body) == (
        200,
        "text/plain; charset=utf-8",
        b"ok\n",
    )


async def test_readyz_is_ready_while_listening_and_not_once_draining(ops: Ops) -> None:
    reply = await get(ops.port, "/readyz")
    assert (reply.status, reply.body) == (200, b"ready\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ops.service.drain)
        with trio.fail_after(10):
            await ops.service.drain_started.wait()
        reply = await get(ops.port, "/readyz")
        assert (reply.status, reply.body) == (503, b"not ready\n")


async def test_a_query_string_does_not_change_the_route(ops: Ops) -> None:
    assert (await get(ops.port, "/healthz?verbose=1")).body == b"ok\n"


async def test_head_gets_the_headers_without_the_body(ops: Ops) -> None:
    reply = await get(ops.port, "/healthz", "HEAD")
    assert (reply.status, reply.headers["content-length"], reply.body) == (200, "3", b"")


# --- errors ---------------------------------------------------------------------------------------


async def test_an_unknown_path_is_404(ops: Ops) -> None:
    assert (await get(ops.port, "/nope")).status == 404


async def test_the_api_is_not_on_the_metrics_port(ops: Ops) -> None:
    assert (await get(ops.port, "/v1/models")).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_methods_other_than_get_and_head_are_405(ops: Ops, method: str) -> None:
    raw = f"{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".encode()
    reply = await exchange(ops.port, raw)
    assert (reply.status, reply.headers["allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not http\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
    ],
)
async def test_a_malformed_request_is_400_and_the_server_carries_on(ops: Ops, raw: bytes) -> None:
    reply = await exchange(ops.port, raw)
    assert reply.status == 400
    assert (await get(ops.port, "/healthz")).status == 200


async def test_an_oversized_request_head_is_refused_and_the_server_carries_on(ops: Ops) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200_000 + b"\r\n\r\n"
    reply = await exchange(ops.port, raw)
    assert reply.status in (400, 431)
    assert (await get(ops.port, "/healthz")).status == 200


async def test_a_client_that_closes_without_asking_is_fine(ops: Ops) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", ops.port)
    await stream.aclose()
    assert (await get(ops.port, "/healthz")).status == 200


async def test_a_plain_get_from_the_stdlib_client_works(ops: Ops) -> None:
    import urllib.request

    def fetch() -> tuple[int, bytes]:
        with urllib.request.urlopen(f"http://127.0.0.1:{ops.port}/healthz", timeout=10) as response:
            return response.status, response.read()

    assert await trio.to_thread.run_sync(fetch) == (200, b"ok\n")


# --- /metrics -------------------------------------------------------------------------------------


async def test_metrics_start_at_zero_with_every_outcome(ops: Ops) -> None:
    samples = await ops.scrape()
    for outcome in ("completed", "failed", "cancelled", "refused"):
        assert samples[f'indextts_tasks_total{{outcome="{outcome}"}}'] == 0
    assert samples["indextts_connections"] == 0
    assert samples["indextts_queue_depth"] == 0
    assert samples["indextts_audio_seconds_total"] == 0
    assert samples["indextts_engine_errors_total"] == 0
    assert samples["indextts_task_latency_seconds_count"] == 0


class Live(Ops):
    """A server whose metrics are wired as the command line wires them, and its operations port."""

    def __init__(self, running: Running, metrics: Metrics, port: int):
        super().__init__(running.service, metrics, port)
        self.running = running

    async def scrape_until(self, name: str, value: float) -> dict[str, float]:
        """Scrape until ``name`` reads ``value`` (for what the server counts after a socket closes)."""
        with trio.fail_after(10):
            # The server counts a closed socket in its own time, with no event to wait on.
            while (samples := await self.scrape())[name] != value:  # noqa: ASYNC110
                await trio.sleep(0.01)
            return samples


StartLive = Callable[..., Awaitable[Live]]


@pytest.fixture
def start_live(nursery: trio.Nursery) -> StartLive:
    async def start(engine: Engine | None = None, **config: Any) -> Live:
        metrics = Metrics(process_metrics=False)
        settings = ServerConfig(host="127.0.0.1", port=0, **config)
        service = Service(settings, engine or ToneEngine(), metrics=metrics)
        metrics.set_queue_depth_source(lambda: service.scheduler.queue_depth)
        port = await serve_contract(nursery, service)
        app = HttpApi(service, metrics, ops_only=True)
        urls = await nursery.start(partial(serve_http, app, "127.0.0.1", 0))
        return Live(Running(service, port), metrics, bound_port(urls))

    return start


async def test_connections_count_open_sessions(start_live: StartLive) -> None:
    live = await start_live()
    async with live.running.connect(), live.running.connect() as second:
        assert (await live.scrape())["indextts_connections"] == 2
        await second.ws.aclose()
        await live.scrape_until("indextts_connections", 1)
    await live.scrape_until("indextts_connections", 0)


async def test_a_completed_task_feeds_every_task_metric(start_live: StartLive) -> None:
    live = await start_live()
    async with live.running.connect() as client:
        _, wav = await client.request(tts("今天天气很好。"))
    pcm, rate, _ = decode_wav(wav)
    samples = await live.scrape()
    assert samples['indextts_tasks_total{outcome="completed"}'] == 1
    assert samples["indextts_audio_seconds_total"] == pytest.approx(len(pcm) / rate, abs=1e-3)
    assert samples["indextts_task_latency_seconds_count"] == 1
    assert samples["indextts_task_queue_wait_seconds_count"] == 1
    assert samples["indextts_task_rtf_count"] == 1
    assert samples["indextts_engine_errors_total"] == 0


async def test_an_engine_error_counts_a_failed_task_and_an_engine_error(start_live: StartLive) -> None:
    live = await start_live(ToneEngine(fail_on="💥"))
    async with live.running.connect() as client:
        await client.send(tts("这一句会失败💥。"))
        task_id = (await client.recv_json())["task_id"]
        assert await client.recv_json() == client.reply("start", task_id)
        assert (await client.recv_json())["message"].startswith("音频生成失败")
    samples = await live.scrape()
    assert samples['indextts_tasks_total{outcome="failed"}'] == 1
    assert samples["indextts_engine_errors_total"] == 1
    assert samples["indextts_task_queue_wait_seconds_count"] == 1  # it ran
    # Only completed tasks feed latency, RTF and the audio produced.
    assert samples["indextts_task_latency_seconds_count"] == 0
    assert samples["indextts_task_rtf_count"] == 0
    assert samples["indextts_audio_seconds_total"] == 0


async def test_a_timed_out_task_is_failed_but_not_an_engine_error(start_live: StartLive) -> None:
    engine = GatedEngine()
    live = await start_live(engine, task_timeout=0.2)
    async with live.running.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20))
        task_id = (await client.recv_json())["task_id"]
        assert (await client.recv_json())["type"] == "start"
        reply = await client.recv_json()
        engine.release()
        assert reply == client.error_reply(texts.task_timed_out(0.2), task_id)
    samples = await live.scrape()
    assert samples['indextts_tasks_total{outcome="failed"}'] == 1
    assert samples["indextts_engine_errors_total"] == 0


async def test_waiting_tasks_show_in_the_queue_depth_and_a_full_queue_counts_a_refusal(
    start_live: StartLive,
) -> None:
    engine = GatedEngine()
    live = await start_live(engine, max_queue=1)
    async with live.running.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20))
        assert (await client.recv_json())["type"] == "queued"
        assert (await client.recv_json())["type"] == "start"
        await engine.first_segment()
        await client.send(tts("排队等候。"))
        assert (await client.recv_json())["type"] == "queued"
        assert (await live.scrape())["indextts_queue_depth"] == 1
        refused = await client.error(tts("队列已满。"))
        assert refused["message"] == texts.queue_full(1)
        samples = await live.scrape()
        assert samples['indextts_tasks_total{outcome="refused"}'] == 1
        engine.release()
    assert (await live.scrape())["indextts_queue_depth"] == 0


async def test_a_task_cancelled_while_waiting_counts_without_a_queue_wait(start_live: StartLive) -> None:
    engine = GatedEngine()
    live = await start_live(engine)
    async with live.running.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20))
        running = (await client.recv_json())["task_id"]
        assert await client.recv_json() == client.reply("start", running)
        await engine.first_segment()
        await client.send(tts("这个任务会被取消。"))
        waiting = (await client.recv_json())["task_id"]
        await client.send({"type": "cancel", "task_id": waiting})
        assert (await client.recv_json())["status"] == "cancelled"
        assert await client.recv_json() == client.error_reply(texts.CANCELLED, waiting)
        samples = await live.scrape()
        assert samples['indextts_tasks_total{outcome="cancelled"}'] == 1
        assert samples["indextts_task_queue_wait_seconds_count"] == 0
        assert samples["indextts_task_latency_seconds_count"] == 0
        engine.release()
        await client.recv_audio()
        assert await client.recv_json() == client.reply("end", running)
    samples = await live.scrape()
    assert samples['indextts_tasks_total{outcome="completed"}'] == 1
    assert samples["indextts_task_queue_wait_seconds_count"] == 1  # the task that ran, alone


async def test_a_cancelled_running_task_counts_as_cancelled(start_live: StartLive) -> None:
    engine = GatedEngine()
    live = await start_live(engine)
    async with live.running.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20))
        task_id = (await client.recv_json())["task_id"]
        assert (await client.recv_json())["type"] == "start"
        await engine.first_segment()
        await client.send({"type": "cancel", "task_id": task_id})
        assert (await client.recv_json())["status"] == "cancelling"
        engine.release()
        assert await client.recv_json() == client.error_reply(texts.CANCELLED, task_id)
    samples = await live.scrape_until('indextts_tasks_total{outcome="cancelled"}', 1)
    assert samples["indextts_task_queue_wait_seconds_count"] == 1
    assert samples['indextts_tasks_total{outcome="completed"}'] == 0


async def test_a_client_that_disconnects_cancels_its_tasks_in_the_metrics(start_live: StartLive) -> None:
    engine = GatedEngine()
    live = await start_live(engine)
    async with live.running.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20))
        assert (await client.recv_json())["type"] == "queued"
        await engine.first_segment()
        await client.send(tts("还在排队。"))
        assert (await client.recv_json())["type"] in ("start", "queued")
    engine.release()
    await live.scrape_until('indextts_tasks_total{outcome="cancelled"}', 2)
    assert (await live.scrape())["indextts_connections"] == 0


def test_task_finished_rejects_an_outcome_that_is_not_final() -> None:
    with pytest.raises(ValueError, match="refused"):
        Metrics(process_metrics=False).task_finished("refused", latency=0.0)


async def test_histogram_buckets_span_tts_scales(ops: Ops) -> None:
    samples = await ops.scrape()
    assert 'indextts_task_latency_seconds_bucket{le="0.05"}' in samples
    assert 'indextts_task_latency_seconds_bucket{le="300.0"}' in samples
    assert 'indextts_task_rtf_bucket{le="0.01"}' in samples
    assert 'indextts_task_rtf_bucket{le="10.0"}' in samples


async def test_process_metrics_come_along(ops: Ops) -> None:
    samples = await ops.scrape()
    assert samples["process_resident_memory_bytes"] > 0
    assert "python_info" in {name.split("{")[0] for name in samples}


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(process_metrics=False), Metrics(process_metrics=False)
    a.task_refused()
    assert b'indextts_tasks_total{outcome="refused"} 1.0' in a.render()
    assert b'indextts_tasks_total{outcome="refused"} 0.0' in b.render()


def test_metrics_fits_the_servers_metrics_port() -> None:
    metrics = Metrics(process_metrics=False)
    port: ServiceMetrics = metrics  # mypy checks the structural fit
    port.task_finished("completed", latency=1.0, queue_wait=0.5, audio_seconds=2.0, compute_seconds=1.0)
    port.connection_opened()
    assert b"indextts_task_rtf_sum 0.5" in metrics.render()
    assert b"indextts_connections 1.0" in metrics.render()
