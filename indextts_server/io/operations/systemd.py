"""The systemd notify and socket-activation protocols, spoken directly (no libsystemd)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, MutableMapping

import trio

log = logging.getLogger("indextts_server")

LISTEN_FDS_START = 3
"""The first file descriptor systemd passes (``SD_LISTEN_FDS_START``)."""


def _notify_address(value: str) -> bytes | None:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address: a path, or ``@name`` for the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None  # vsock: and other schemes are not for a service on the host


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if the watchdog is meant for this process."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2e6


class Notifier:
    """Sends ``sd_notify`` datagrams to the service manager; a no-op outside systemd.

    Each message is one non-blocking ``sendto``: the server never waits on systemd, and a
    socket that has gone or is full only costs a debug log line, never an exception.
    """

    def __init__(self, address: str | None = None, *, watchdog_interval: float | None = None) -> None:
        self.address = address
        self._target = None if address is None else _notify_address(address)
        self._watchdog_interval = watchdog_interval if self._target is not None else None
        self._socket: socket.socket | None = None
        if self._target is not None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.setblocking(False)
        elif address is not None:
            log.debug("NOTIFY_SOCKET=%r is not a unix socket address; not notifying", address)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC``."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_interval=_watchdog_interval(env))

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings (half ``WatchdogSec=``); ``None``: no watchdog."""
        return self._watchdog_interval

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; ``False`` if it was not delivered."""
        if self._socket is None or self._target is None:
            return False
        try:
            self._socket.sendto("\n".join(assignments).encode(), self._target)
        except OSError as error:
            log.debug("sd_notify %s to %s failed: %s", assignments, self.address, error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is done (``Type=notify`` units count as started from here)."""
        return self.notify("READY=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``."""
        return self.notify(*_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown has begun (draining)."""
        return self.notify("STOPPING=1", *_status(status))

    def watchdog(self) -> bool:
        """Keep-alive ping: the service is healthy."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before the start-up (or stop) timeout fires, from now."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1e6))}")

    async def run_watchdog(
        self, alive: Callable[[], bool], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping the watchdog every ``watchdog_interval()`` seconds for as long as ``alive()`` holds.

        A wedged process stops pinging and systemd restarts it; without a watchdog this returns
        at once.
        """
        task_status.started()
        interval = self.watchdog_interval()
        if interval is None:
            return
        pinging = True
        while True:
            healthy = alive()
            if healthy:
                self.watchdog()
            if healthy != pinging:
                if healthy:
                    log.info("the server is making progress again; pinging the systemd watchdog")
                else:
                    log.warning("the server is not making progress; not pinging the systemd watchdog")
                pinging = healthy
            await trio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)


def listen_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets systemd passed for socket activation (``sd_listen_fds(1)``); usually none.

    Adopts descriptors 3 … 3+``$LISTEN_FDS``-1 when ``$LISTEN_PID`` is this process, marks them
    close-on-exec, and removes ``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` from the
    environment so that child processes do not adopt them too.
    """
    env = os.environ if environ is None else environ
    pid = env.pop("LISTEN_PID", None)
    count = env.pop("LISTEN_FDS", None)
    env.pop("LISTEN_FDNAMES", None)
    if pid is None or count is None:
        return []
    try:
        if int(pid) != os.getpid():
            log.debug("LISTEN_PID=%s is not this process; ignoring LISTEN_FDS", pid)
            return []
        n = int(count)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID=%r LISTEN_FDS=%r", pid, count)
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + max(n, 0)):
        try:
            os.set_inheritable(fd, False)
            sockets.append(socket.socket(fileno=fd))
        except OSError as error:
            log.warning("LISTEN_FDS: descriptor %d is not a usable socket: %s", fd, error)
    return sockets


def trio_listeners(sockets: list[socket.socket]) -> list[trio.SocketListener]:
    """Wrap listening stream sockets (from :func:`listen_sockets`) for ``trio.serve_listeners``
    or ``trio_websocket.WebSocketServer``."""
    return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
