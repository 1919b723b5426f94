"""Targets the benchmark starts itself: a server or floor subprocess on a free loopback port."""

from __future__ import annotations

import ipaddress
import re
import resource
import signal
import socket
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import trio

READY_TIMEOUT: Final = 600.0
"""Seconds a started target may take to listen: a real model loads and warms up first (minutes on a
slow CPU)."""
STOP_TIMEOUT: Final = 10.0


class SpawnError(Exception):
    """A target that exited or never listened; the message carries its last log lines."""


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def raise_open_file_limit(needed: int) -> tuple[int, int | None]:
    """Raise this process's soft RLIMIT_NOFILE towards the hard limit if below ``needed``.

    Children inherit it, so the server the benchmark starts gets the same room. Returns the
    soft limit now and the one it replaced (``None`` if unchanged).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed or soft == resource.RLIM_INFINITY:
        return soft, None
    target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
    if target <= soft:
        return soft, None
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target, soft


def free_port(host: str) -> int:
    """A port nothing listens on right now (the target binds it a moment later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(slots=True)
class Spawned:
    command: list[str]
    process: trio.Process
    url: str
    log_tail: deque[str]

    async def peak_rss_kib(self) -> int | None:
        """The process's peak resident set size so far (``VmHWM``), where /proc has it."""
        try:
            status = await trio.Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
        return int(match.group(1)) if match else None


@asynccontextmanager
async def spawn(command: Sequence[str], host: str, port: int, *, cwd: Path) -> AsyncIterator[Spawned]:
    """Start ``command``, which must listen on ``host``:``port``; wait until it does; stop it on exit."""
    url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
    if not is_loopback_url(url):
        raise SpawnError(f"{url} is not a loopback address")
    process = await trio.lowlevel.open_process(
        list(command),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tail: deque[str] = deque(maxlen=40)
    failure = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process, tail)
            failure = await _until_listening(process, host, port)
            if failure is None:
                try:
                    yield Spawned(list(command), process, url, tail)
                finally:
                    with trio.CancelScope(shield=True):
                        await _stop(process)
            else:
                with trio.CancelScope(shield=True):
                    await _stop(process)
            # Whatever it had left to say is in the pipe by now; a moment to read it.
            nursery.cancel_scope.deadline = trio.current_time() + 1
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)
    if failure is not None:
        log = "\n".join(f"  | {line}" for line in tail)
        raise SpawnError(f"{' '.join(command)} {failure}\n{log}")


async def _until_listening(process: trio.Process, host: str, port: int) -> str | None:
    """``None`` once a TCP connection to the target succeeds, else why it never will."""
    with trio.move_on_after(READY_TIMEOUT):
        while process.returncode is None:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return None
        return f"exited with status {process.returncode} before listening"
    return f"did not listen within {READY_TIMEOUT:.0f} s"


async def _drain(process: trio.Process, tail: deque[str]) -> None:
    """Keep reading the target's log so that it never blocks on a full pipe; keep the last lines."""
    assert process.stderr is not None
    pending = b""
    async for chunk in process.stderr:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        tail.extend(raw.decode(errors="replace") for raw in lines)


async def _stop(process: trio.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
