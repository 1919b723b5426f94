"""``--wyoming-zeroconf``: the Wyoming port advertised as ``_wyoming._tcp`` so Home Assistant finds it."""

from __future__ import annotations

import logging
import socket
from functools import partial
from typing import Final

import trio

log = logging.getLogger("indextts_server")

SERVICE_TYPE: Final = "_wyoming._tcp.local."
ANY: Final = ("", "0.0.0.0", "::")


def advertised_address(host: str) -> str:
    """The IPv4 address to advertise: ``host`` itself, or this machine's for a wildcard."""
    if host not in ANY:
        return socket.gethostbyname(host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: it picks the outgoing interface
            address: str = probe.getsockname()[0]
        except OSError:
            address = "127.0.0.1"
    return address


async def advertise(
    host: str, port: int, stop: trio.Event, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Announce the Wyoming port by multicast DNS until ``stop`` is set (the drain), then withdraw it.

    The ``zeroconf`` package (the optional ``[zeroconf]`` extra) runs its own threads; its blocking
    calls run on worker threads here. Started with the service's name and the instance's host name.
    """
    try:
        from zeroconf import ServiceInfo, Zeroconf
    except ImportError:
        log.warning('--wyoming-zeroconf 需要安装可选依赖: pip install -e ".[zeroconf]"; not advertising')
        task_status.started("")
        return
    address = advertised_address(host)
    hostname = socket.gethostname().split(".")[0] or "indextts"
    name = f"indextts-server-{hostname}-{port}.{SERVICE_TYPE}"
    info = ServiceInfo(
        SERVICE_TYPE,
        name,
        addresses=[socket.inet_aton(address)],
        port=port,
        properties={},
        server=f"{hostname}.local.",
    )
    interfaces = [address] if host not in ANY else None
    zc = await trio.to_thread.run_sync(partial(Zeroconf, interfaces=interfaces) if interfaces else Zeroconf)
    try:
        await trio.to_thread.run_sync(zc.register_service, info)
        log.info("wyoming advertised by zeroconf as %s at %s:%d", name, address, port)
        task_status.started(name)
        await stop.wait()
    finally:
        with trio.move_on_after(5, shield=True):
            await trio.to_thread.run_sync(zc.unregister_service, info)
            await trio.to_thread.run_sync(zc.close)
