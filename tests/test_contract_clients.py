"""The contract's own Python and JavaScript client examples, run as written against the CLI's server."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

from .conftest import REPO, CliServer

CONTRACT = REPO / "docs" / "protocol.zh.md"
CONTRACT_PORT = 8770


def contract_example(language: str) -> str:
    """The code block that follows the contract's "### <language> 客户端" heading."""
    text = CONTRACT.read_text(encoding="utf-8")
    match = re.search(rf"### {language} 客户端\s*```\w+\n(.*?)```", text, re.S)
    assert match, f"no {language} example in the contract"
    return match.group(1)


def contract_script(language: str, port: int, path: Path) -> Path:
    """Write the contract's example to ``path``, pointed at ``port`` if the contract's own was taken."""
    code = contract_example(language)
    if port != CONTRACT_PORT:
        code = code.replace(f"127.0.0.1:{CONTRACT_PORT}", f"127.0.0.1:{port}")
    path.write_text(code, encoding="utf-8")
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(params=["1", "8"], ids=["batch-1", "batch-8"])
def cli_server(request: pytest.FixtureRequest) -> Iterator[CliServer]:
    """``python -m indextts_server --engine tone`` on the contract's port (any free port if taken),
    serving one task at a time (the contract's way) and, unchanged for clients, eight together."""
    port = CONTRACT_PORT if port_is_free(CONTRACT_PORT) else 0
    server = CliServer(["--engine", "tone", "--port", str(port), "--batch-size", request.param])
    try:
        yield server
    finally:
        server.stop()


def test_cli_server_logs_one_listening_line_and_stops_on_sigterm(cli_server: CliServer) -> None:
    assert cli_server.text.count("listening on ws://") == 1
    assert cli_server.stop() == 0


def test_contract_python_client_runs_unchanged(cli_server: CliServer, tmp_path: Path) -> None:
    assert_contract_python_client_runs(cli_server.port, tmp_path)


def assert_contract_python_client_runs(port: int, tmp_path: Path, *, audio_bytes: str = r"\d{5,}") -> None:
    """The contract's Python example against the server on ``port``: welcome, queued, start, audio
    (its size in bytes matching ``audio_bytes``), end."""
    script = contract_script("Python", port, tmp_path / "contract_client.py")
    env = dict(os.environ)
    if find_spec("torchaudio") is None:
        # The example imports torchaudio but never uses it; the light test environment has no
        # torch, so an empty module stands in for the import alone.
        (tmp_path / "torchaudio.py").write_text("", encoding="utf-8")
        env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "连接成功: 已连接到 IndexTTS WebSocket"
    assert re.fullmatch(r"任务已排队: [0-9a-f]{8}\.\.\.", lines[1])
    assert lines[2] == "开始生成音频"
    assert re.fullmatch(rf"收到音频数据 \({audio_bytes} 字节\)", lines[3])
    assert lines[4:] == ["生成完成"]


def test_contract_javascript_client_runs_unchanged(cli_server: CliServer, tmp_path: Path) -> None:
    assert_contract_javascript_client_runs(cli_server.port, tmp_path)


def assert_contract_javascript_client_runs(port: int, tmp_path: Path) -> None:
    """The contract's JavaScript example under Node against the server on ``port``."""
    # Not skipped without Node: scripts/test installs it, and a missing one fails here.
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (scripts/test installs it with apt-get)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"Node.js 20 or later is needed for its WebSocket, found {version.strip()}"
    script = contract_script("JavaScript", port, tmp_path / "contract_client.js")
    # Node 20 and 21 have the browser's WebSocket (binaryType "blob") behind a flag; 22+ by default.
    flags = ["--experimental-websocket"] if major < 22 else []
    result = subprocess.run(
        [node, *flags, "--no-warnings", str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # The example logs whole objects too (over several lines); its own lines come in this order.
    expected = [
        r"连接成功",
        r"会话ID: [0-9a-f-]{36}",
        r"任务已排队: [0-9a-f-]{36}",
        r"开始生成音频",
        r"收到完整音频",
        r"生成完成",
    ]
    at = 0
    for pattern in expected:
        found = re.compile(rf"^{pattern}$", re.M).search(result.stdout, at)
        assert found, f"{pattern!r} missing after offset {at}:\n{result.stdout}"
        at = found.end()


def _start_beside_a_held_port(*flags: str) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Start the server with ``flags`` (``{port}`` stands for a port another socket listens on)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        command = ["--engine", "tone", "--host", "127.0.0.1", *(flag.format(port=port) for flag in flags)]
        result = subprocess.run(
            [sys.executable, "-m", "indextts_server", *command],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    return port, result


def test_a_port_in_use_is_one_clear_line_and_exit_status_1() -> None:
    port, result = _start_beside_a_held_port("--port", "{port}", "--http-port", "off")
    assert result.returncode == 1
    assert f"端口已被占用，无法监听（--port {port}）：请换一个端口或停止占用它的进程" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_port_in_use_names_only_the_port_that_is_taken() -> None:
    port, result = _start_beside_a_held_port("--port", "0", "--http-port", "{port}")
    assert result.returncode == 1
    assert f"端口已被占用，无法监听（--http-port {port}）：请换一个端口或停止占用它的进程" in result.stderr
