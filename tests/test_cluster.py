"""Cluster mode, end to end: a real redis-server, gateways and tone workers as separate processes.

Every test starts its own ``redis-server`` on a free loopback port (persistence off) and stops it
by PID. Leases are short (1 s) so that lost workers and gateways are noticed within the test's
time; tasks are made long with ``--tone-rtf``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import srt
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from indextts_server.core import texts
from indextts_server.core.config import ServerConfig
from indextts_server.core.fleet import ReplyEvent, TaskRecord, orphan_verdict
from indextts_server.core.texts import (
    BROKER_LOST,
    BROKER_UNAVAILABLE,
    GATEWAY_GONE,
    gave_up,
    worker_lost_after_audio,
)
from indextts_server.io.scheduling.broker.gateway import BrokerScheduler
from indextts_server.io.scheduling.broker.store import PENDING, QUEUE, RETRY, WORKERS, Store, key, task_key
from indextts_server.io.scheduling.broker.worker import BrokerWorker
from indextts_server.io.service.service import Service

from .conftest import (
    CLIENT_MAX_MESSAGE,
    REPO,
    Client,
    CliServer,
    Json,
    Unread,
    UnreadHttp,
    kernel_view,
    local_port,
    serve_contract,
    tts,
)
from .test_operations import HangingEngine

LEASE = "1"
LONG = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"  # 3 segments of 3 s
SHORT = "短句。"
DISCONNECTED = "客户端已断开连接"
CANCELLED = "任务已取消"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A ``redis-server`` of our own: loopback, a free port, no persistence; stopped by PID."""

    def __init__(self, directory: Path):
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed (scripts/test installs Debian's redis-server package)"
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        settings = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [self.binary, *settings, "--dir", str(self.directory)], stdout=subprocess.DEVNULL
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                threading.Event().wait(0.025)
        raise AssertionError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


class Node:
    """``python -m indextts_server --broker ...`` as a process, and what it logged.

    ``env`` replaces the environment (``PYTHONPATH`` still leads to this checkout); ``launcher``
    replaces ``-m indextts_server`` (``-c`` and a script that runs it its own way).
    """

    def __init__(
        self,
        role: str,
        broker: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        launcher: Sequence[str] = ("-m", "indextts_server"),
    ):
        self.role = role
        base = os.environ if env is None else env
        env = {**base, "PYTHONPATH": str(REPO) + os.pathsep + base.get("PYTHONPATH", "")}
        command = [sys.executable, *launcher, "--engine", "tone", "--host", "127.0.0.1"]
        http = [] if "--http-port" in args else ["--http-port", "off"]
        command += ["--port", "0", *http, "--metrics-port", "0"]
        command += ["--broker", broker, "--role", role, "--lease", LEASE]
        self.process = subprocess.Popen(
            [*command, *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stderr is not None
        self.log: list[str] = []
        self.url = ""
        self.metrics = ""
        self.http = ""
        wanted = "listening on ws://" if role != "worker" else "worker ready"
        if "--http-port" in args:
            wanted = "http on http://"  # logged once the HTTP port is up, after the WebSocket one
        for line in self.process.stderr:
            self.log.append(line)
            if found := re.search(r"metrics on (http://127\.0\.0\.1:\d+)", line):
                self.metrics = found.group(1)
            if found := re.search(r"http on (http://127\.0\.0\.1:\d+)", line):
                self.http = found.group(1)
            if found := re.search(r"listening on (ws://127\.0\.0\.1:\d+)", line):
                self.url = found.group(1)
            if wanted in line:
                break
        else:
            raise AssertionError(f"{role} exited ({self.process.wait()}):\n{self.text}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self.log.extend(self.process.stderr)

    @property
    def text(self) -> str:
        return "".join(self.log)

    async def logged(self, pattern: str, count: int = 1) -> list[str]:
        """Wait until ``pattern`` has been logged ``count`` times (the log is read by a thread)."""
        with trio.fail_after(10):
            while len(found := re.findall(pattern, self.text)) < count:  # noqa: ASYNC110 - another process
                await trio.sleep(0.02)
        return found

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"{self.metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def ready(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.metrics}/readyz", timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Client]:
        async with open_websocket_url(self.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
            welcome = json.loads(await ws.get_message())
            yield Client(ws, welcome)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def fleet(broker: RedisServer) -> Iterator[Callable[..., Node]]:
    """Start nodes on ``broker``: ``fleet("gateway")``, ``fleet("worker", "--tone-rtf", "0.2")``."""
    nodes: list[Node] = []

    def start(role: str, *args: str, **options: Any) -> Node:
        node = Node(role, broker.url, *args, **options)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.process.kill()
    for node in nodes:
        node.process.wait(timeout=10)


async def ends(client: Client, tasks: set[str]) -> dict[str, Json]:
    """Read until each of ``tasks`` has ended (``end`` or error); each must end exactly once."""
    ended: dict[str, Json] = {}
    while set(ended) != tasks:
        message = await client.recv()
        if isinstance(message, bytes):
            continue
        if message.get("type") == "end" or message.get("status") == "error":
            task_id = message["task_id"]
            assert task_id in tasks and task_id not in ended, message
            ended[task_id] = message
    return ended


async def nothing_more(client: Client) -> None:
    """No stray reply is left: the next message is the answer to a query sent now."""
    probe = "no-such-task"
    assert await client.error({"type": "task_status", "task_id": probe}) == client.error_reply(
        f"任务不存在或已过期: {probe}", probe
    )


async def submit(client: Client, text: str, **fields: Any) -> str:
    """Send a request; its task id from ``queued`` (audio of a running task may come first)."""
    await client.send(tts(text, **fields))
    while isinstance(queued := await client.recv(), bytes):
        pass
    assert queued["type"] == "queued", queued
    return str(queued["task_id"])


async def status(client: Client, task_id: str) -> Json:
    await client.send({"type": "task_status", "task_id": task_id})
    return await client.recv_json()


async def eventually(client: Client, task_id: str, state: str) -> Json:
    """Poll a task's status until it is ``state`` (the broker has no event a client could wait on)."""
    with trio.fail_after(15):
        while True:
            reply = await status(client, task_id)
            if reply.get("status") == state:
                return reply
            await trio.sleep(0.1)


# --- the pure parts ------------------------------------------------------------------------


def record(**fields: Any) -> TaskRecord:
    defaults: dict[str, Any] = {"task_id": "t", "state": "running", "session": "s", "gateway": "g"}
    return TaskRecord(created_at="", **{**defaults, **fields})


def test_a_lost_workers_task_runs_again_until_audio_went_out_or_deliveries_ran_out() -> None:
    assert orphan_verdict(record(attempt=1), max_deliveries=3) == ("requeue", None, None)
    assert orphan_verdict(record(state="pending"), max_deliveries=3) == ("requeue", None, None)
    assert orphan_verdict(record(attempt=1, audio=True, worker="w"), max_deliveries=3) == (
        "end",
        "failed",
        worker_lost_after_audio("w"),
    )
    assert orphan_verdict(record(attempt=3), max_deliveries=3) == ("end", "failed", gave_up(3))
    assert orphan_verdict(record(attempt=1, stop=CANCELLED), max_deliveries=3) == (
        "end",
        "cancelled",
        CANCELLED,
    )
    assert orphan_verdict(record(state="completed"), max_deliveries=3)[0] == "forget"
    assert orphan_verdict(None, max_deliveries=3)[0] == "forget"


def test_reply_events_survive_the_broker_field_for_field() -> None:
    event = ReplyEvent(task="t", kind="end", attempt=2, seq=5, samples=10, compute=0.25)
    fields = {name.encode(): str(value).encode() for name, value in event.fields().items()}
    assert ReplyEvent.from_fields(fields) == event
    audio = ReplyEvent(task="t", kind="audio", attempt=1, seq=2, data=b"\x00\xff")
    raw = {
        name.encode(): value if isinstance(value, bytes) else str(value).encode()
        for name, value in audio.fields().items()
    }
    assert ReplyEvent.from_fields(raw) == audio


# --- the fleet -----------------------------------------------------------------------------


async def test_one_fifo_across_gateways_with_fleet_wide_positions(fleet: Callable[..., Node]) -> None:
    one, two = fleet("gateway"), fleet("gateway")
    order: list[str] = []
    async with one.connect() as a, two.connect() as b:
        clients = {}
        for index in range(6):
            client = (a, b)[index % 2]
            await client.send(tts(SHORT, format="wav"))
            queued = await client.recv_json()
            assert queued["position"] == index + 1  # fleet-wide, whichever gateway took it
            order.append(queued["task_id"])
            clients[queued["task_id"]] = client
        worker = await trio.to_thread.run_sync(fleet, "worker", "--tone-rtf", "0.05")
        await ends(a, set(order[0::2]))
        await ends(b, set(order[1::2]))
    assert await worker.logged(r"task running task=(\S+)", len(order)) == order
    name = re.search(r"worker ready on \S+: (\S+)", worker.text)
    assert name is not None
    with trio.fail_after(10):
        while (metrics := one.scrape()).get(("indextts_fleet_worker_completed", (("worker", name[1]),))) != 6:  # noqa: ASYNC110
            await trio.sleep(0.2)  # the gateway refreshes its view of the fleet every lease/3
    assert metrics[("indextts_fleet_worker_up", (("worker", name[1]),))] == 1
    assert metrics[("indextts_fleet_worker_busy", (("worker", name[1]),))] == 0
    assert metrics[("indextts_fleet_queue_depth", ())] == 0


async def test_status_and_cancel_answer_from_any_gateway_with_the_ownership_rule(
    fleet: Callable[..., Node],
) -> None:
    one, two = fleet("gateway"), fleet("gateway")  # no worker yet: the task waits
    async with one.connect() as owner, two.connect() as other:
        task_id = await submit(owner, SHORT)
        seen = await status(other, task_id)
        assert seen["status"] == "pending" and seen["session_id"] == other.session_id
        assert await other.error({"type": "cancel", "task_id": task_id}) == other.error_reply(
            f"只能取消本会话创建的任务: {task_id}", task_id
        )
        await owner.send({"type": "cancel", "task_id": task_id})
        assert (await owner.recv_json())["status"] == "cancelled"
        assert await owner.recv_json() == owner.error_reply(CANCELLED, task_id)
        final = await status(other, task_id)
        assert (final["status"], final["error_message"]) == ("cancelled", CANCELLED)
        assert await other.error({"type": "task_status", "task_id": "nope"}) == other.error_reply(
            "任务不存在或已过期: nope", "nope"
        )


async def test_max_queue_is_fleet_wide(fleet: Callable[..., Node]) -> None:
    one, two = fleet("gateway", "--max-queue", "2"), fleet("gateway", "--max-queue", "2")
    async with one.connect() as a, two.connect() as b:
        await submit(a, SHORT)
        await submit(b, SHORT)
        refused = await a.error(tts(SHORT))
        assert refused == a.error_reply("服务器繁忙：队列已满（最多 2 个等待任务），请稍后重试")


async def test_a_disconnect_cancels_waiting_tasks_and_stops_the_running_one_on_its_worker(
    fleet: Callable[..., Node],
) -> None:
    one, two = fleet("gateway"), fleet("gateway")
    worker = fleet("worker", "--tone-rtf", "0.2")
    async with two.connect() as watcher:
        async with one.connect() as leaving:
            running = await submit(leaving, LONG, max_tokens=20, stream=True)
            assert (await leaving.recv_json())["type"] == "start"
            waiting = await submit(leaving, SHORT)
        assert (await eventually(watcher, waiting, "cancelled"))["error_message"] == DISCONNECTED
        assert (await eventually(watcher, running, "cancelled"))["error_message"] == DISCONNECTED
    await worker.logged(f"task cancelled task={running}")
    assert f"task running task={waiting}" not in worker.text


@pytest.fixture
def two_workers(fleet: Callable[..., Node]) -> tuple[Node, list[Node]]:
    """A gateway and two workers slow enough (tone RTF 0.5) for one to be killed mid-task."""
    return fleet("gateway"), [fleet("worker", "--tone-rtf", "0.5") for _ in range(2)]


def running_on(broker: RedisServer, task_id: str, workers: list[Node]) -> tuple[Node, Node]:
    """The worker running the task, and the other one."""
    name = broker.client().hget(task_key(task_id), "worker")
    assert isinstance(name, bytes)
    busy = [w for w in workers if name.decode().endswith(f"-{w.process.pid}-w0")]
    assert len(busy) == 1, name
    return busy[0], next(w for w in workers if w is not busy[0])


async def test_a_killed_worker_s_task_completes_on_another_worker(
    two_workers: tuple[Node, list[Node]], broker: RedisServer
) -> None:
    gateway, workers = two_workers
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20)  # one WAV at the end: no audio before
        assert (await client.recv_json())["type"] == "start"
        doomed, survivor = running_on(broker, task_id, workers)
        doomed.kill()
        assert isinstance(await client.recv(), bytes)
        assert await client.recv_json() == client.reply("end", task_id)
        await nothing_more(client)
    await survivor.logged(f"task running task={task_id}")


async def test_a_task_run_again_sends_its_cues_again_and_ends_with_the_last_runs(
    two_workers: tuple[Node, list[Node]], broker: RedisServer
) -> None:
    gateway, workers = two_workers
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20, timestamps=True)  # one WAV at the end
        assert (await client.recv_json())["type"] == "start"
        first = await client.recv_json()
        assert (first["type"], first["index"]) == ("cue", 0)
        doomed, _ = running_on(broker, task_id, workers)
        doomed.kill()
        again = [await client.recv_json() for _ in range(3)]
        assert [(cue["type"], cue["index"]) for cue in again] == [("cue", 0), ("cue", 1), ("cue", 2)]
        assert again[0] == first
        assert isinstance(await client.recv(), bytes)
        end = await client.recv_json()
        assert end["cues"] == [
            {key: cue[key] for key in ("index", "text", "start", "duration")} for cue in again
        ]
        await nothing_more(client)


async def test_a_killed_worker_s_task_fails_clearly_once_its_audio_reached_the_client(
    two_workers: tuple[Node, list[Node]], broker: RedisServer
) -> None:
    gateway, workers = two_workers
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20, stream=True)
        assert (await client.recv_json())["type"] == "start"
        assert isinstance(await client.recv(), bytes)  # the first segment went out
        doomed, survivor = running_on(broker, task_id, workers)
        doomed.kill()
        while isinstance(message := await client.recv(), bytes):
            pass
        name = broker.client().hget(task_key(task_id), "worker")
        assert isinstance(name, bytes)
        assert message == client.error_reply(worker_lost_after_audio(name.decode()), task_id)
        await nothing_more(client)
    assert f"task running task={task_id}" not in survivor.text


async def test_a_task_fails_for_good_after_max_deliveries(fleet: Callable[..., Node]) -> None:
    gateway = fleet("gateway", "--max-deliveries", "1")
    first = fleet("worker", "--tone-rtf", "0.2")
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20)
        assert (await client.recv_json())["type"] == "start"
        first.kill()
        assert await client.recv_json() == client.error_reply(gave_up(1), task_id)


async def test_a_killed_gateway_s_tasks_are_cancelled_and_their_slots_freed(
    fleet: Callable[..., Node], broker: RedisServer, tmp_path: Path
) -> None:
    doomed, survivor = fleet("gateway", "--max-queue", "2"), fleet("gateway", "--max-queue", "2")
    gate = tmp_path / "gate"  # the running task holds after its first segment until this exists
    worker = fleet("worker", "--tone-gate", str(gate))
    async with doomed.connect() as lost, survivor.connect() as client:
        running = await submit(lost, LONG, max_tokens=20, stream=True)
        assert (await lost.recv_json())["type"] == "start"
        waiting = [await submit(lost, SHORT), await submit(lost, SHORT)]
        assert (await client.error(tts(SHORT)))["message"].startswith("服务器繁忙")
        doomed.kill()
        for task_id in waiting:
            assert (await eventually(client, task_id, "cancelled"))["error_message"] == GATEWAY_GONE
        # Whichever process swept asks the running task to stop; it stops at its next segment.
        flagged = f"lost; task={running} cancelling"
        with trio.fail_after(10):
            while flagged not in survivor.text + worker.text:  # noqa: ASYNC110 - other processes' logs
                await trio.sleep(0.02)
        gate.touch()
        assert (await eventually(client, running, "cancelled"))["error_message"] == GATEWAY_GONE
        assert broker.client().zcard(PENDING) == 0
        for _ in range(2):
            mine = await submit(client, SHORT)
            assert (await ends(client, {mine}))[mine] == client.reply("end", mine)
    for task_id in waiting:
        assert f"task running task={task_id}" not in worker.text


async def test_cancelling_a_running_task_stops_it_on_its_worker(
    fleet: Callable[..., Node], tmp_path: Path
) -> None:
    gateway = fleet("gateway")
    gate = tmp_path / "gate"
    worker = fleet("worker", "--tone-gate", str(gate))
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20)
        assert await client.recv_json() == client.reply("start", task_id)
        await client.send({"type": "cancel", "task_id": task_id})
        cancelling = {"type": "cancel", "task_id": task_id, "session_id": client.session_id}
        cancelling.update(status="cancelling", message="任务将在当前段落完成后取消")
        assert await client.recv_json() == cancelling
        gate.touch()
        assert await client.recv_json() == client.error_reply(CANCELLED, task_id)
        reply = await status(client, task_id)
        assert (reply["status"], reply["error_message"]) == ("cancelled", CANCELLED)
        await nothing_more(client)
    await worker.logged(f"task cancelled task={task_id}")


async def test_sigterm_on_a_worker_ends_a_task_whose_audio_went_out_instead_of_handing_it_back(
    fleet: Callable[..., Node], tmp_path: Path
) -> None:
    gateway = fleet("gateway")
    gate = tmp_path / "gate"
    worker = fleet("worker", "--tone-gate", str(gate), "--drain-timeout", "0.2")
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20, stream=True)
        assert (await client.recv_json())["type"] == "start"
        assert isinstance(await client.recv(), bytes)  # the first segment went out
        worker.process.send_signal(signal.SIGTERM)
        await worker.logged(f"drain timeout: stopping task={task_id}")
        gate.touch()  # the engine reaches its next segment boundary, where the stop takes effect
        while isinstance(message := await client.recv(), bytes):
            pass
        assert message == client.error_reply(texts.SHUTTING_DOWN, task_id)
        assert (await status(client, task_id))["status"] == "cancelled"
        await nothing_more(client)
    assert await trio.to_thread.run_sync(worker.process.wait, 20) == 0
    assert "task handed back" not in worker.text


async def test_a_broker_restart_mid_load_ends_every_request_once_and_service_resumes(
    fleet: Callable[..., Node], broker: RedisServer
) -> None:
    gateways = [fleet("gateway"), fleet("gateway")]
    for _ in range(2):
        fleet("worker", "--tone-rtf", "0.1")
    async with gateways[0].connect() as a, gateways[1].connect() as b:
        outcomes: dict[str, Json] = {}
        refused: list[Json] = []
        running = trio.Event()

        async def load(client: Client, texts: list[str]) -> None:
            """Each request is refused at once (the broker is down) or queued and then ends once."""
            for text in texts:
                await client.send(tts(text, max_tokens=20))
            accepted: set[str] = set()
            answered = 0
            while answered < len(texts) or not accepted <= set(outcomes):
                message = await client.recv()
                if isinstance(message, bytes):
                    continue
                if message.get("type") == "queued":
                    accepted.add(message["task_id"])
                    answered += 1
                elif message.get("type") == "start":
                    running.set()
                elif message["task_id"] is None:
                    assert message["message"] == BROKER_UNAVAILABLE, message
                    refused.append(message)
                    answered += 1
                else:
                    assert message["task_id"] not in outcomes, message  # ended exactly once
                    outcomes[message["task_id"]] = message

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load, a, [LONG, LONG, SHORT, SHORT])
                nursery.start_soon(load, b, [LONG, LONG, SHORT, SHORT])
                await running.wait()
                await trio.to_thread.run_sync(broker.stop)
                await trio.to_thread.run_sync(broker.start)  # empty: everything in flight is gone
        assert len(outcomes) + len(refused) == 8
        for message in outcomes.values():
            assert message.get("type") == "end" or message["message"] == BROKER_LOST, message
        assert any(message.get("message") == BROKER_LOST for message in outcomes.values())
        for client in (a, b):  # the service resumed, with no process restarted
            again = await submit(client, SHORT)
            assert (await ends(client, {again}))[again] == client.reply("end", again)
        for client in (a, b):
            await nothing_more(client)


async def test_an_unreachable_broker_refuses_new_tasks_and_is_not_ready_until_it_is_back(
    fleet: Callable[..., Node], broker: RedisServer
) -> None:
    gateway = fleet("gateway")
    worker = fleet("worker")
    assert (gateway.ready(), worker.ready()) == (200, 200)
    async with gateway.connect() as client:
        await trio.to_thread.run_sync(broker.stop)
        with trio.fail_after(10):
            while (gateway.ready(), worker.ready()) != (503, 503):  # noqa: ASYNC110 - another process
                await trio.sleep(0.1)
        assert await client.error(tts(SHORT)) == client.error_reply(BROKER_UNAVAILABLE)
        await trio.to_thread.run_sync(broker.start)
        with trio.fail_after(10):
            while (gateway.ready(), worker.ready()) != (200, 200):  # noqa: ASYNC110 - another process
                await trio.sleep(0.1)
        task_id = await submit(client, SHORT)
        assert await client.recv_json() == client.reply("start", task_id)
        assert isinstance(await client.recv(), bytes)
        assert await client.recv_json() == client.reply("end", task_id)


async def test_sigterm_drains_a_worker_by_finishing_its_task_and_leaves_nothing_behind(
    fleet: Callable[..., Node], broker: RedisServer
) -> None:
    gateway = fleet("gateway")
    worker = fleet("worker", "--tone-rtf", "0.1")
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20)
        assert (await client.recv_json())["type"] == "start"
        worker.process.send_signal(signal.SIGTERM)
        assert isinstance(await client.recv(), bytes)
        assert await client.recv_json() == client.reply("end", task_id)
    assert await trio.to_thread.run_sync(worker.process.wait, 20) == 0
    redis_client = broker.client()
    assert redis_client.hlen(WORKERS) == 0
    for stream in (QUEUE, RETRY):
        assert redis_client.xlen(stream) == 0  # taken entries are deleted once their task ends
        assert redis_client.xinfo_consumers(stream, "workers") == []
    for replies in redis_client.scan_iter(match=key("replies", "*")):
        assert redis_client.xlen(replies) == 0  # relayed audio is deleted at once
        assert 0 < redis_client.ttl(replies) <= 60  # and would expire anyway


async def test_the_http_speech_endpoint_of_a_gateway_runs_on_the_fleet(fleet: Callable[..., Node]) -> None:
    gateway = fleet("gateway", "--http-port", "0")
    worker = fleet("worker")
    body = {"model": "indextts2", "input": "大家好，我现在正在体验 AI 科技！", "voice": "default"}

    def speak() -> httpx.Response:
        return httpx.post(
            f"{gateway.http}/v1/audio/speech", json={**body, "response_format": "wav"}, timeout=30
        )

    response = await trio.to_thread.run_sync(speak)
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"
    await worker.logged(r"task completed task=")


TONE_FLEET = (
    r"fleet engine tone \(tone\): lang zh/en/ja/es/ar, emo_mode none/audio/vector/text, speed 0\.25-4"
)


async def test_a_gateway_with_no_worker_yet_serves_no_model_of_its_own_then_learns_its_workers(
    fleet: Callable[..., Node],
) -> None:
    gateway = fleet("gateway", "--http-port", "0")
    assert re.search(r"listening on ws://\S+ \(engine broker\)", gateway.text)

    def models() -> list[str]:
        return [model["id"] for model in httpx.get(f"{gateway.http}/v1/models", timeout=10).json()["data"]]

    assert await trio.to_thread.run_sync(models) == ["indextts2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    async with gateway.connect() as client:
        await client.send(tts("还没有 worker。", lang="ja"))
        queued = await client.recv_json()
        assert queued["type"] == "queued"  # admitted: nothing is known to refuse it by
        fleet("worker")
        await gateway.logged(TONE_FLEET)  # at its next heartbeat
        await ends(client, {queued["task_id"]})


async def timed_run(client: Client, text: str) -> tuple[list[Any], Json]:
    """Submit ``text`` asking for cues, streamed; what came before ``end`` (cue messages less their
    session, and ``"audio"`` for each file), and the ``end``."""
    await submit(client, text, timestamps=True, stream=True, max_tokens=20)
    assert (await client.recv_json())["type"] == "start"
    seen: list[Any] = []
    while not isinstance(message := await client.recv(), dict) or message["type"] != "end":
        seen.append("audio" if isinstance(message, bytes) else {**message, "session_id": None})
    return seen, message


async def test_cues_in_cluster_mode_are_those_of_one_process(fleet: Callable[..., Node]) -> None:
    gateway = fleet("gateway", "--http-port", "0")
    fleet("worker")
    async with gateway.connect() as client:
        seen, end = await timed_run(client, LONG)
    kinds = ["audio" if item == "audio" else item["type"] for item in seen]
    assert kinds == ["cue", "audio"] * 3
    assert [item["index"] for item in seen if item != "audio"] == [0, 1, 2]
    assert end["cues"] == [
        {key: item[key] for key in ("index", "text", "start", "duration")} for item in seen if item != "audio"
    ]

    one = CliServer(["--engine", "tone", "--port", "0", "--http-port", "off"])
    try:
        async with open_websocket_url(one.url, max_message_size=CLIENT_MAX_MESSAGE) as ws:
            alone = Client(ws, json.loads(await ws.get_message()))
            alone_seen, alone_end = await timed_run(alone, LONG)
    finally:
        one.stop()
    assert [{**item, "task_id": None} if item != "audio" else item for item in seen] == [
        {**item, "task_id": None} if item != "audio" else item for item in alone_seen
    ]
    assert end["cues"] == alone_end["cues"]

    def subtitles() -> httpx.Response:
        return httpx.get(f"{gateway.http}/v1/tasks/{end['task_id']}/subtitles.srt", timeout=10)

    response = await trio.to_thread.run_sync(subtitles)
    assert response.status_code == 200, response.text
    parsed = list(srt.parse(response.text))
    assert [(round(item.start.total_seconds(), 3), item.content) for item in parsed] == [
        (cue["start"], cue["text"]) for cue in end["cues"]
    ]


async def test_role_all_processes_share_one_queue(fleet: Callable[..., Node]) -> None:
    one, two = fleet("all"), fleet("all")
    async with one.connect() as client, two.connect() as other:
        task_id = await submit(client, SHORT)
        assert await client.recv_json() == client.reply("start", task_id)
        assert isinstance(await client.recv(), bytes)
        assert await client.recv_json() == client.reply("end", task_id)
        assert (await status(other, task_id))["status"] == "completed"


def test_the_embedded_default_does_not_import_the_cluster_client() -> None:
    probe = (
        "import sys; from indextts_server.io.operations import cli; "
        "from indextts_server.io.transport.websocket import WebSocketTransport; "
        "cli.parse([], 'indextts-server', ''); "
        "assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)


async def test_sigterm_drains_a_gateway_finishing_its_running_task_and_cancelling_its_waiting_ones(
    fleet: Callable[..., Node],
) -> None:
    gateway = fleet("gateway")
    fleet("worker", "--tone-rtf", "0.1")
    async with gateway.connect() as client:
        running = await submit(client, LONG, max_tokens=20)
        assert (await client.recv_json())["type"] == "start"
        waiting = await submit(client, SHORT)
        gateway.process.send_signal(signal.SIGTERM)
        outcomes = await ends(client, {running, waiting})
        assert outcomes[waiting] == client.error_reply(texts.SHUTTING_DOWN, waiting)
        assert outcomes[running] == client.reply("end", running)
    assert await trio.to_thread.run_sync(gateway.process.wait, 20) == 0


async def test_sigterm_drains_a_worker_handing_its_task_back_when_it_cannot_finish_in_time(
    fleet: Callable[..., Node], broker: RedisServer
) -> None:
    gateway = fleet("gateway")
    rtf = ("--tone-rtf", "0.5", "--drain-timeout", "0.2")
    workers = [fleet("worker", *rtf), fleet("worker", *rtf)]
    async with gateway.connect() as client:
        task_id = await submit(client, LONG, max_tokens=20)  # one WAV at the end: nothing sent early
        assert await client.recv_json() == client.reply("start", task_id)
        leaving, staying = running_on(broker, task_id, workers)
        leaving.process.send_signal(signal.SIGTERM)
        assert isinstance(await client.recv(), bytes)
        assert await client.recv_json() == client.reply("end", task_id)  # no second start
        await nothing_more(client)
    assert await trio.to_thread.run_sync(leaving.process.wait, 20) == 0
    await leaving.logged(f"task handed back task={task_id}")
    await staying.logged(f"task running task={task_id}")


async def test_a_gateway_resets_the_clients_that_never_read_once_their_grace_has_passed(
    fleet: Callable[..., Node], nursery: trio.Nursery
) -> None:
    # The gateway's two client ports are the same transports as a single server's: a WebSocket
    # client that never reads but keeps pinging, and an HTTP client that never reads, are closed
    # for not reading, then reset when their grace (10 s) has passed.
    bounds = ["--max-session-buffer", str(1 << 20), "--max-total-buffer", str(64 << 20)]
    gateway = fleet("gateway", "--http-port", "0", *bounds)
    fleet("worker")
    ws_port, http_port = (int(url.rsplit(":", 1)[1]) for url in (gateway.url, gateway.http))
    lazy = await Unread.open(ws_port)
    nursery.start_soon(lazy.keep_alive, 0.2)
    for _ in range(8):
        await lazy.send(tts("今天天气很好我们一起去公园散步吧。" * 10))
    await gateway.logged("is not reading", 1)
    unread_http = await UnreadHttp.post(http_port, {"input": "今天天气很好我们一起去公园散步吧。" * 54})
    await gateway.logged("is not reading", 2)
    given_up = trio.current_time()
    ends = {ws_port: local_port(lazy.stream), http_port: local_port(unread_http.stream)}
    assert kernel_view(ws_port, ends[ws_port]) == {"client": "ESTABLISHED", "server": "ESTABLISHED"}
    with trio.fail_after(20):
        while any(kernel_view(server, client) for server, client in ends.items()):  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert trio.current_time() - given_up < 10 + 3


async def test_a_gateways_wyoming_port_streams_speech_made_by_the_fleet(fleet: Callable[..., Node]) -> None:
    """Home Assistant's client on a gateway's ``--wyoming-port``: the sentences run on a worker."""
    from wyoming.client import AsyncTcpClient
    from wyoming.event import Event
    from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop

    gateway = fleet("gateway", "--wyoming-port", "0")
    worker = fleet("worker")
    [port] = await gateway.logged(r"wyoming on tcp://127\.0\.0\.1:(\d+)")

    async def stream() -> list[str]:
        async with AsyncTcpClient("127.0.0.1", int(port)) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="Hello there. How are you?").event())
            await client.write_event(SynthesizeStop().event())
            kinds: list[str] = []
            while not kinds or kinds[-1] not in ("synthesize-stopped", "error"):
                event: Event | None = await asyncio.wait_for(client.read_event(), 30)
                assert event is not None, kinds
                if not (event.type == "audio-chunk" and kinds[-1] == "audio-chunk"):
                    kinds.append(event.type)
            return kinds

    kinds = await trio.to_thread.run_sync(asyncio.run, stream())
    assert kinds == ["audio-start", "audio-chunk", "audio-stop"] * 2 + ["synthesize-stopped"]
    await worker.logged(r"task completed task=", count=2)


async def test_a_timed_out_task_on_a_cluster_worker_has_its_engine_iterator_closed_by_the_engines_thread(
    broker: RedisServer,
) -> None:
    # In-process (a gateway and its worker, role "all") so that the engine can hang on purpose.
    engine = HangingEngine()
    store = Store(broker.url, lease=1.0, task_ttl=60, max_queue=10)
    worker = BrokerWorker(engine, store, name="hanging-w0", task_timeout=0.5)
    scheduler = BrokerScheduler(store, workers=[worker])
    service = Service(ServerConfig(host="127.0.0.1", port=0, task_timeout=0.5), scheduler=scheduler)
    try:
        async with trio.open_nursery() as nursery:
            port = await serve_contract(nursery, service)
            async with open_websocket_url(f"ws://127.0.0.1:{port}") as ws:
                client = Client(ws, json.loads(await ws.get_message()))
                await client.send(tts("这里会挂起。"))
                hung = (await client.recv_json())["task_id"]
                assert await client.recv_json() == client.reply("start", hung)
                assert await client.recv_json() == client.error_reply("任务超时：超过 0.5 秒未完成", hung)
                assert not engine.closed.is_set()  # the engine still holds it
                engine.released.set()
                await client.request(tts("下一个任务。"))
            nursery.cancel_scope.cancel()
    finally:
        engine.released.set()
        store.close()
    assert engine.closed.is_set() and engine.closed_in != threading.main_thread().name
