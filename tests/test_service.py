"""The CLI as systemd runs it: notify messages on a fake NOTIFY_SOCKET, metrics scraped and parsed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import urllib.request
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from .conftest import CliServer, tts


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
