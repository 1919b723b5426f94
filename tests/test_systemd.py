"""The systemd notify protocol and socket activation, against real sockets and processes."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from indextts_server.io.operations.systemd import Notifier, listen_sockets, trio_listeners


@pytest.fixture
def notify_path() -> Iterator[tuple[socket.socket, str]]:
    # tmp_path can exceed the 108-byte limit of a unix socket address, so use a short directory.
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"sd-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    path = str(directory / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    try:
        yield receiver, path
    finally:
        receiver.close()
        shutil.rmtree(directory)


@pytest.fixture
def notify_abstract() -> Iterator[tuple[socket.socket, str]]:
    name = f"indextts-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    try:
        yield receiver, "@" + name
    finally:
        receiver.close()


def received(receiver: socket.socket) -> list[bytes]:
    """Every datagram waiting on ``receiver``, without blocking."""
    messages = []
    while True:
        try:
            messages.append(receiver.recv(4096, socket.MSG_DONTWAIT))
        except BlockingIOError:
            return messages


# --- the notify protocol -----------------------------------------------------------------------


def test_each_message_is_one_datagram_of_exact_assignments(notify_path: tuple[socket.socket, str]) -> None:
    receiver, path = notify_path
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("serving 3 sessions")
    assert notifier.watchdog()
    assert notifier.extend_timeout(90)
    assert notifier.extend_timeout(0.5)
    assert notifier.stopping()
    assert received(receiver) == [
        b"READY=1",
        b"STATUS=serving 3 sessions",
        b"WATCHDOG=1",
        b"EXTEND_TIMEOUT_USEC=90000000",
        b"EXTEND_TIMEOUT_USEC=500000",
        b"STOPPING=1",
    ]


def test_ready_and_stopping_can_carry_a_status_in_the_same_datagram(
    notify_path: tuple[socket.socket, str],
) -> None:
    receiver, path = notify_path
    notifier = Notifier(path)
    notifier.ready("listening on ws://0.0.0.0:8770")
    notifier.stopping("draining 2 tasks")
    assert received(receiver) == [
        b"READY=1\nSTATUS=listening on ws://0.0.0.0:8770",
        b"STOPPING=1\nSTATUS=draining 2 tasks",
    ]


def test_a_status_is_kept_on_one_line(notify_path: tuple[socket.socket, str]) -> None:
    receiver, path = notify_path
    Notifier(path).status("loading\nmodel")
    assert received(receiver) == [b"STATUS=loading model"]


def test_an_abstract_notify_socket_is_reached_by_its_at_name(
    notify_abstract: tuple[socket.socket, str],
) -> None:
    receiver, name = notify_abstract
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.ready()
    assert received(receiver) == [b"READY=1"]


def test_without_notify_socket_every_call_is_a_silent_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.extend_timeout(10)
    assert not notifier.stopping()
    assert notifier.watchdog_interval() is None
    notifier.close()


def test_an_unsupported_notify_address_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_vanished_notify_socket_is_logged_at_debug_and_never_raises(
    notify_path: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, path = notify_path
    notifier = Notifier(path)
    receiver.close()
    os.unlink(path)
    with caplog.at_level(logging.DEBUG, logger="indextts_server"):
        assert not notifier.ready()
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "READY=1" in caplog.records[0].getMessage()


def test_a_full_notify_socket_never_blocks_the_sender(notify_path: tuple[socket.socket, str]) -> None:
    _, path = notify_path
    notifier = Notifier(path)
    results = [notifier.watchdog() for _ in range(5000)]  # nobody reads: the queue fills up
    assert results[0]
    assert not all(results)


def test_the_watchdog_interval_is_half_the_timeout(notify_path: tuple[socket.socket, str]) -> None:
    _, path = notify_path
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environ(env).watchdog_interval() == 15.0
    ours = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_environ(ours).watchdog_interval() == 15.0


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},  # meant for another process
    ],
)
def test_no_watchdog_interval_unless_systemd_set_one_for_this_process(
    notify_path: tuple[socket.socket, str], extra: dict[str, str]
) -> None:
    _, path = notify_path
    assert Notifier.from_environ({"NOTIFY_SOCKET": path, **extra}).watchdog_interval() is None


async def test_the_watchdog_is_pinged_each_interval_only_while_alive(
    notify_path: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    receiver, path = notify_path
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"})
    alive = True
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run_watchdog, lambda: alive)
        await trio.sleep(40)  # pings at 0, 15, 30
        assert received(receiver) == [b"WATCHDOG=1"] * 3
        alive = False
        await trio.sleep(30)  # 45 and 60 pass in silence
        assert received(receiver) == []
        alive = True
        await trio.sleep(15)  # 75
        assert received(receiver) == [b"WATCHDOG=1"]
        nursery.cancel_scope.cancel()


async def test_without_a_watchdog_run_watchdog_returns_at_once() -> None:
    with trio.fail_after(5):
        await Notifier.from_environ({}).run_watchdog(lambda: True)


# --- socket activation -------------------------------------------------------------------------


def test_no_listen_fds_means_no_sockets() -> None:
    assert listen_sockets({}) == []


@pytest.mark.parametrize(
    "env",
    [
        {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},  # another process's
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "many"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"},
        {"LISTEN_PID": "{pid}"},
    ],
)
def test_listen_fds_not_meant_for_us_are_ignored_and_unset(env: dict[str, str]) -> None:
    environ = {key: value.format(pid=os.getpid()) for key, value in env.items()}
    environ["PATH"] = "/bin"
    assert listen_sockets(environ) == []
    assert environ == {"PATH": "/bin"}


CHILD = textwrap.dedent(
    """
    import os, socket
    from indextts_server.io.operations.systemd import listen_sockets
    sockets = listen_sockets()
    leftover = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    (sock,) = sockets
    print(sock.fileno(), sock.family.name, sock.type.name, os.get_inheritable(3), leftover, flush=True)
    conn, _ = sock.accept()
    conn.sendall(b"adopted")
    conn.close()
    """
)


LAUNCHER = textwrap.dedent(
    """
    import os, sys
    fd, child = int(sys.argv[1]), sys.argv[2]
    os.dup2(fd, 3)
    if fd != 3:
        os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="ws")
    os.execv(sys.executable, [sys.executable, "-c", child])
    """
)


def test_an_activated_socket_is_adopted_from_fd_3() -> None:
    # The launcher plays systemd: the socket becomes fd 3 and LISTEN_PID names the process that
    # execs into the server.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        command = [sys.executable, "-c", LAUNCHER, str(listener.fileno()), CHILD]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, pass_fds=(listener.fileno(),))
        try:
            assert child.stdout is not None
            assert child.stdout.readline().split() == ["3", "AF_INET", "SOCK_STREAM", "False", "[]"]
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                assert client.recv(100) == b"adopted"
            assert child.wait(timeout=10) == 0
        finally:
            child.kill()
            child.wait()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate")
def test_systemd_socket_activate_hands_over_its_socket() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    # systemd-socket-activate listens, then execs the child on the first connection.
    command = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", sys.executable, "-c", CHILD]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stderr is not None
        assert child.stderr.readline().startswith(f"Listening on 127.0.0.1:{port} as 3")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert child.stdout.readline().split() == ["3", "AF_INET", "SOCK_STREAM", "False", "[]"]
            assert client.recv(100) == b"adopted"
        assert child.wait(timeout=10) == 0
    finally:
        child.kill()
        child.wait()


async def test_adopted_sockets_serve_trio_streams() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        (listener,) = trio_listeners([sock])
        with trio.fail_after(10):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            server = await listener.accept()
            await client.send_all(b"ping")
            assert await server.receive_some(4) == b"ping"
            await client.aclose()
            await server.aclose()
