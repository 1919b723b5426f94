"""A container health check: exit 0 when this machine's server answers ``/healthz``, else 1."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ...core.config import Settings
from .flags import parse

TIMEOUT: Final = 5.0
"""Seconds the probe waits for an answer."""
SERVER_NAMES: Final = ("indextts-server", "indextts_server")
"""How the server appears in a command line: the console script, or ``python -m indextts_server``."""


def server_flags(cmdline: bytes) -> list[str] | None:
    """The flags in a ``/proc/PID/cmdline`` when it runs the server; ``None`` when it does not."""
    words = [word.decode(errors="replace") for word in cmdline.split(b"\0") if word]
    for at, word in enumerate(words):
        if word.rsplit("/", 1)[-1] in SERVER_NAMES:
            return words[at + 1 :]
    return None


def health_url(settings: Settings) -> str | None:
    """Where this process's ``/healthz`` is: the metrics port if set, else the HTTP port, on loopback."""
    ops = settings.ops
    if ops.metrics_port:
        host, port = ops.metrics_host or settings.server.host, ops.metrics_port
    elif ops.http_port and settings.cluster.role != "worker":
        host, port = ops.http_host or settings.server.host, ops.http_port
    else:
        return None
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def main(argv: Sequence[str] | None = None) -> int:
    """Probe the server run with ``argv`` (default: PID 1's flags if it is the server, else none).

    The environment applies as it does to the server (``INDEXTTS_SERVER_…``), so a container
    configured by variables needs no arguments here.
    """
    if argv is None:
        try:
            argv = server_flags(Path("/proc/1/cmdline").read_bytes()) or []
        except OSError:
            argv = []
    url = health_url(parse(list(argv), "indextts-healthcheck", __doc__ or ""))
    if url is None:
        print("no port serves /healthz: give the server --metrics-port (or --http-port)", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            status = int(response.status)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    print(f"{url}: {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
