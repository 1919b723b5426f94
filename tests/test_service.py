"""The CLI as systemd runs it: notify messages on a fake NOTIFY_SOCKET, metrics scraped and parsed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from .conftest import REPO, CliServer, tts


def _receive_until(sock: socket.socket, wanted: str, seen: list[str]) -> None:
    while not any(message.startswith(wanted) for message in seen):
        seen.extend(sock.recv(4096).decode().splitlines())


def test_notify_protocol_and_metrics_of_a_running_server(tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(address)
    notify.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    server = CliServer(["--engine", "tone", "--port", "0", "--metrics-port", "0"], env=env)
    process, ws_port = server.process, server.port
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.text)
    assert found, server.text
    metrics_port = int(found.group(1))
    try:
        seen: list[str] = []
        _receive_until(notify, "READY=1", seen)
        _receive_until(notify, "WATCHDOG=1", seen)
        _receive_until(notify, "STATUS=", seen)

        async def one_request() -> None:
            async with open_websocket_url(f"ws://127.0.0.1:{ws_port}", max_message_size=1 << 26) as ws:
                await ws.get_message()
                await ws.send_message(json.dumps(tts("指标测试。")))
                while not (isinstance(m := await ws.get_message(), str) and '"end"' in m):
                    pass

        trio.run(one_request)
        base = f"http://127.0.0.1:{metrics_port}"
        with urllib.request.urlopen(f"{base}/readyz", timeout=10) as response:
            assert (response.status, response.read()) == (200, b"ready\n")
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families.values()
            for s in family.samples
        }
        assert samples[("indextts_tasks_total", (("outcome", "completed"),))] == 1
        assert samples[("indextts_task_latency_seconds_count", ())] == 1
        assert samples[("indextts_audio_seconds_total", ())] > 0
        assert samples[("indextts_queue_depth", ())] == 0

        process.send_signal(signal.SIGTERM)
        _receive_until(notify, "STOPPING=1", seen)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        notify.close()
    assert seen.index("READY=1") < seen.index("STOPPING=1")


async def _running_long_task(url: str, started: trio.Event, done: trio.Event) -> None:
    """One client with a long task: it sets ``started`` once the task runs, and leaves on ``done``."""
    async with open_websocket_url(url, max_message_size=1 << 26) as ws:
        await ws.get_message()
        await ws.send_message(json.dumps(tts("很长的一句话在这里呀。" * 8, max_tokens=20)))
        while '"start"' not in str(await ws.get_message()):
            pass
        started.set()
        await done.wait()


def _wait_for_log(server: CliServer, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in server.text:
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{server.text[-2000:]}"
        time.sleep(0.02)


def test_readyz_is_503_while_the_real_server_drains() -> None:
    server = CliServer(
        ["--engine", "tone", "--tone-rtf", "1", "--port", "0", "--metrics-port", "0", "--drain-timeout", "60"]
    )
    found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", server.text)
    assert found, server.text
    readyz = f"http://127.0.0.1:{found.group(1)}/readyz"
    statuses: list[int] = []

    def status() -> int:
        try:
            with urllib.request.urlopen(readyz, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    async def main() -> None:
        started, done = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_running_long_task, server.url, started, done)
            await started.wait()
            statuses.append(await trio.to_thread.run_sync(status))
            server.process.send_signal(signal.SIGTERM)
            await trio.to_thread.run_sync(_wait_for_log, server, "draining")
            # The task still runs (60 s of drain time), so the server is draining, not gone.
            statuses.append(await trio.to_thread.run_sync(status))
            done.set()  # the client leaves: its task stops and the drain ends

    try:
        trio.run(main)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.process.kill()
    assert statuses == [200, 503]


def test_a_second_signal_exits_at_once() -> None:
    server = CliServer(["--engine", "tone", "--tone-rtf", "1", "--port", "0", "--drain-timeout", "600"])

    async def main() -> None:
        started, done = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_running_long_task, server.url, started, done)
            await started.wait()
            server.process.send_signal(signal.SIGTERM)
            await trio.to_thread.run_sync(_wait_for_log, server, "draining")
            server.process.send_signal(signal.SIGTERM)
            # Without the second signal the drain would wait for the task (up to 600 s).
            code = await trio.to_thread.run_sync(lambda: server.process.wait(timeout=20))
            assert code == 1
            done.set()

    try:
        trio.run(main)
    finally:
        server.process.kill()
    assert "SIGTERM received again; exiting now" in server.text


LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)
os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="ws")
os.execv(sys.executable, [sys.executable, "-m", "indextts_server", *sys.argv[2:]])
"""


def test_socket_activation_through_the_real_cli() -> None:
    # The launcher plays systemd: the listening socket becomes fd 3 of the CLI it execs into.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        args = ["--engine", "tone", "--http-port", "off", "--port", "1"]  # --port is not used
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(listener.fileno()), *args],
            cwd=REPO,
            pass_fds=(listener.fileno(),),
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "listening on" in line:
                assert f"ws://127.0.0.1:{port}" in line, line
                break
        else:
            raise AssertionError(f"exited ({process.wait()}) before listening")

        async def one_request() -> None:
            async with open_websocket_url(f"ws://127.0.0.1:{port}", max_message_size=1 << 26) as ws:
                await ws.get_message()
                await ws.send_message(json.dumps(tts("套接字激活。")))
                while '"end"' not in str(await ws.get_message()):
                    pass

        trio.run(one_request)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
