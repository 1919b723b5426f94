"""Command line: start-up of the server from its settings (see `flags`), signals, systemd and logging."""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

import trio

from ...core.config import ClusterOptions, EngineOptions, ServerConfig
from ...core.engine import Engine
from ..engines.thread import close_engine, start_engine
from ..http.app import HttpApi
from ..scheduling.scheduler import Scheduler
from ..service.service import Service
from ..transport.http import bound_port, serve_http
from ..transport.websocket import WebSocketTransport
from ..transport.wyoming import WyomingTransport
from .cpus import cpu_engine_count, set_torch_threads
from .flags import parse
from .logs import setup_logging
from .metrics import Metrics
from .systemd import Notifier, listen_sockets, trio_listeners

if TYPE_CHECKING:  # the cluster's modules need redis, an optional extra: imported only when used
    from ..scheduling.broker.gateway import BrokerScheduler
    from ..service.node import WorkerNode

log = logging.getLogger("indextts_server")

STATUS_PERIOD: Final = 5.0
"""Seconds between systemd STATUS= lines."""
LOAD_STEP_TIMEOUT: Final = 900.0
"""Start-up time asked of systemd (EXTEND_TIMEOUT_USEC) for each model loading step."""
DEFAULT_STALL_LIMIT: Final = 600.0
"""Without --task-timeout: a busy inference task silent this long stops the watchdog pings."""


DESCRIPTION: Final = "IndexTTS2 WebSocket 语音合成服务 (the contract's protocol on Trio)"


def build_engines(options: EngineOptions, progress: Callable[[str], None]) -> list[Engine]:
    """The engines to serve with; for indextts2 this loads the model, before anything listens.

    Every engine lives on a thread of its own (`start_engine`), the tone engine too.
    """
    if options.kind == "tone":
        from ..engines.tone import ToneEngine

        tone = partial(
            ToneEngine, options.tone_rtf, gate=options.tone_gate, chunked=options.chunked_streaming
        )
        return [start_engine(tone, f"engine-tone-{index}") for index in range(options.workers)]
    from ..engines.loading import LoadFailed, load_engines

    try:
        return load_engines(options, progress)
    except LoadFailed as failure:
        print(f"模型加载失败: {failure}\n提示: {failure.hint}", file=sys.stderr)
        raise SystemExit(2) from None


class Drainable(Protocol):
    """What receives the signals: the `Service`, or a worker-only node."""

    @property
    def draining(self) -> bool: ...

    async def drain(self) -> None: ...


async def _watch_signals(
    server: Drainable,
    notifier: Notifier,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGINT/SIGTERM drains the server; a second one exits at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not server.draining:
                    log.info("%s received; draining (a second signal exits at once)", name)
                    notifier.stopping("draining")
                    nursery.start_soon(server.drain)
                else:
                    print(f"{name} received again; exiting now", file=sys.stderr, flush=True)
                    os._exit(1)


def _alive(service: Service, stall_limit: float) -> Callable[[], bool]:
    """For the watchdog: every inference task runs, and a busy one produced audio lately."""
    return lambda: service.scheduler.alive(stall_limit)


async def _report_status(service: Service, notifier: Notifier) -> None:
    while True:
        notifier.status(f"{len(service.sessions)} connections, {service.scheduler.status_line()}")
        await trio.sleep(STATUS_PERIOD)


async def serve(
    service: Service,
    notifier: Notifier,
    metrics: Metrics,
    *,
    listeners: Sequence[trio.SocketListener] = (),
    metrics_address: tuple[str, int] | None = None,
    http_address: tuple[str, int] | None = None,
    wyoming_address: tuple[str, int] | None = None,
    zeroconf: bool = False,
) -> None:
    """Run ``service`` and its transports (the contract's WebSocket port, the HTTP port, the
    Wyoming port, the operations port) until a signal has drained it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, service, notifier)
        if metrics_address is not None:
            host, port = metrics_address
            ops = HttpApi(service, metrics, ops_only=True)
            urls = await nursery.start(partial(serve_http, ops, host, port, errors=metrics))
            log.info("metrics on http://%s:%s/metrics (also /healthz, /readyz)", host, bound_port(urls))
        stall_limit = service.config.task_timeout or DEFAULT_STALL_LIMIT
        await nursery.start(notifier.run_watchdog, _alive(service, stall_limit))
        await nursery.start(_run_then_stop, service, nursery.cancel_scope)
        contract = WebSocketTransport(service, listeners)
        await nursery.start(contract.run)
        if http_address is not None:
            host, port = http_address
            api = HttpApi(service, metrics, ws_port=contract.port)
            # The HTTP listener closes when the drain starts, as the WebSocket one does; requests in
            # flight get the drain's time and a little more to finish.
            urls = await nursery.start(
                partial(
                    serve_http,
                    api,
                    host,
                    port,
                    shutdown=service.drain_started.wait,
                    graceful_timeout=service.config.drain_timeout + 10,
                    errors=metrics,
                )
            )
            contract.page_port = bound_port(urls)  # the page it serves may use the WebSocket
            log.info("http on http://%s:%s (OpenAI-compatible API under /v1)", host, bound_port(urls))
        if wyoming_address is not None:
            host, port = wyoming_address
            bound = await nursery.start(WyomingTransport(service, host, port).run)
            if zeroconf:
                from .discovery import advertise

                nursery.start_soon(advertise, host, bound, service.drain_started)
        notifier.ready(f"listening; engine {service.scheduler.engine_name}")
        nursery.start_soon(_report_status, service, notifier)


async def _run_then_stop(
    service: Service,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the service; once its drain has finished, stop everything else with it."""
    await service.run(task_status=task_status)
    scope.cancel()


async def serve_worker(
    node: WorkerNode,
    notifier: Notifier,
    metrics: Metrics,
    metrics_address: tuple[str, int] | None = None,
) -> None:
    """Run a worker-only node (``--role worker``) and its operations endpoints until drained."""
    from ..http.ops import OpsApi

    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, node, notifier)
        if metrics_address is not None:
            host, port = metrics_address
            ops = OpsApi(lambda: node.ready, metrics)
            urls = await nursery.start(partial(serve_http, ops, host, port, errors=metrics))
            log.info("metrics on http://%s:%s/metrics (also /healthz, /readyz)", host, bound_port(urls))
        stall_limit = node.task_timeout or DEFAULT_STALL_LIMIT
        await nursery.start(notifier.run_watchdog, lambda: node.scheduler.alive(stall_limit))
        await nursery.start(node.run)
        notifier.ready(f"working; engine {node.scheduler.engine_name}")
        nursery.start_soon(_report_worker_status, node, notifier)
        await node.stopped.wait()
        nursery.cancel_scope.cancel()


async def _report_worker_status(node: WorkerNode, notifier: Notifier) -> None:
    while True:
        notifier.status(node.scheduler.status_line())
        await trio.sleep(STATUS_PERIOD)


def _cluster(
    cluster: ClusterOptions,
    config: ServerConfig,
    engines: list[Engine],
    metrics: Metrics,
) -> tuple[BrokerScheduler, Callable[[], None]]:
    """A cluster process's scheduler (``--broker``), its redis client imported only now."""
    assert cluster.broker is not None
    try:
        from ..scheduling.broker.gateway import BrokerScheduler
        from ..scheduling.broker.store import Store
        from ..scheduling.broker.worker import BrokerWorker, worker_name

        store = Store(
            cluster.broker, lease=cluster.lease, task_ttl=config.task_ttl, max_queue=config.max_queue
        )
    except ImportError as exc:
        print(f'--broker 需要安装可选依赖: pip install -e ".[cluster]" ({exc})', file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as exc:
        print(f"--broker 地址无效: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    workers = [
        BrokerWorker(
            engine,
            store,
            name=worker_name(index),
            task_timeout=config.task_timeout,
            on_engine_error=metrics.engine_error,
        )
        for index, engine in enumerate(engines)
    ]
    scheduler = BrokerScheduler(
        store,
        gateway=cluster.role != "worker",
        workers=workers,
        max_deliveries=cluster.max_deliveries,
        metrics=metrics,
    )
    metrics.set_fleet_source(lambda: (scheduler.fleet.queue_depth, scheduler.fleet.workers))
    return scheduler, store.close


def port_taken(host: str, port: int) -> bool:
    """Whether another process listens on ``host:port`` (binding it as trio's listeners do fails)."""
    if port == 0:
        return False
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside ``group`` and its nested groups."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse(argv, "indextts-server", DESCRIPTION)
    config, ops = settings.server, settings.ops
    setup_logging(ops.log_level)
    # Torch's CPU threads, set before torch is imported (OpenMP reads them once). A gateway and the
    # tone engine load no torch, so they neither set nor log them.
    if settings.cluster.role != "gateway" and settings.engine.kind != "tone":
        log.info("%s", set_torch_threads(cpu_engine_count(settings.engine.kind, settings.engine.devices)))
    notifier = Notifier.from_environ()
    adopted = listen_sockets()

    def progress(status: str) -> None:
        log.info("%s", status)
        notifier.status(status)
        notifier.extend_timeout(LOAD_STEP_TIMEOUT)

    metrics = Metrics()
    metrics_address = None
    if ops.metrics_port is not None:
        metrics_address = (ops.metrics_host or config.host, ops.metrics_port)
    http_address = None
    if ops.http_port is not None:
        http_address = (ops.http_host or config.host, ops.http_port)
    wyoming_address = None
    if ops.wyoming_port is not None:
        wyoming_address = (ops.wyoming_host or config.host, ops.wyoming_port)
    cluster = settings.cluster
    if cluster.broker is None and cluster.role != "all":
        print("--role gateway/worker 需要 --broker redis://HOST:PORT/DB", file=sys.stderr)
        raise SystemExit(2)
    engines = build_engines(settings.engine, progress) if cluster.role != "gateway" else []
    scheduler: Scheduler | None = None
    close: Callable[[], None] = lambda: None  # noqa: E731
    if cluster.broker is not None:
        if config.batch_size > 1:
            log.warning("--batch-size applies to the embedded board: --broker workers run one task at a time")
        scheduler, close = _cluster(cluster, config, engines, metrics)

    async def start() -> None:
        if cluster.role == "worker":
            from ..scheduling.broker.gateway import BrokerScheduler
            from ..service.node import WorkerNode

            assert isinstance(scheduler, BrokerScheduler)
            node = WorkerNode(scheduler, drain_timeout=config.drain_timeout, task_timeout=config.task_timeout)
            metrics.set_queue_depth_source(lambda: node.scheduler.queue_depth)
            await serve_worker(node, notifier, metrics, metrics_address)
            return
        service = Service(config, engines, metrics=metrics, scheduler=scheduler)
        service.voices.prepare()
        metrics.set_queue_depth_source(lambda: service.scheduler.queue_depth)
        await serve(
            service,
            notifier,
            metrics,
            listeners=trio_listeners(adopted),
            metrics_address=metrics_address,
            http_address=http_address,
            wyoming_address=wyoming_address,
            zeroconf=ops.wyoming_zeroconf,
        )

    try:
        trio.run(start)
    except* OSError as failure:
        if not all(isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE for exc in _leaves(failure)):
            raise
        ports = [("--port", config.host, config.port)]
        ports += [("--http-port", *http_address)] if http_address else []
        ports += [("--metrics-port", *metrics_address)] if metrics_address else []
        ports += [("--wyoming-port", *wyoming_address)] if wyoming_address else []
        # Ours are closed by now: a port that still cannot be bound is the one another process
        # holds. Should the holder have let go meanwhile, every port is named.
        named = [f"{flag} {port}" for flag, host, port in ports if port_taken(host, port)]
        taken = "、".join(named or [f"{flag} {port}" for flag, _, port in ports])
        print(f"端口已被占用，无法监听（{taken}）：请换一个端口或停止占用它的进程", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        close()
        for engine in engines:
            close_engine(engine)
        notifier.close()
    log.info("stopped")
