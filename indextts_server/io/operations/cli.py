"""Command line: the seed's flags plus the project's, logging set-up, and start-up of the server."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

import trio
from trio_websocket import WebSocketServer

from ...core.config import ServerConfig
from ...core.engine import Engine
from ...core.voices import VoiceLimits
from ..http.app import HttpApi
from ..scheduling.scheduler import Scheduler
from ..transport.http import bound_port, serve_http
from ..transport.websocket import Server
from .logs import setup_logging
from .metrics import Metrics
from .systemd import Notifier, listen_sockets, trio_listeners

if TYPE_CHECKING:  # the cluster's modules need redis, an optional extra: imported only when used
    from ..scheduling.broker.gateway import BrokerScheduler
    from ..scheduling.broker.node import WorkerNode

log = logging.getLogger("indextts_server")

STATUS_PERIOD: Final = 5.0
"""Seconds between systemd STATUS= lines."""
LOAD_STEP_TIMEOUT: Final = 900.0
"""Start-up time asked of systemd (EXTEND_TIMEOUT_USEC) for each model loading step."""
DEFAULT_STALL_LIMIT: Final = 600.0
"""Without --task-timeout: a busy inference task silent this long stops the watchdog pings."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="indextts-server",
        description="IndexTTS2 WebSocket 语音合成服务 (the seed's protocol on Trio)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    seed = p.add_argument_group("the seed's flags")
    seed.add_argument("--model-dir", default="models/IndexTTS-2", help="IndexTTS 模型目录路径")
    seed.add_argument("--cfg-path", default="models/IndexTTS-2/config.yaml", help="IndexTTS 配置文件路径")
    seed.add_argument("--device", default="cuda", help="运行设备（cuda 或 cpu）")
    seed.add_argument("--host", default="0.0.0.0", help="服务器绑定地址")
    seed.add_argument("--port", type=int, default=8770, help="服务器端口号 (0: any free port)")

    srv = p.add_argument_group("server")
    srv.add_argument(
        "--engine",
        choices=("indextts2", "tone"),
        default="indextts2",
        help="indextts2: the real model; tone: weight-free tones for protocol work and load tests",
    )
    srv.add_argument(
        "--tone-rtf",
        type=_non_negative,
        default=0.0,
        help="tone engine: wall seconds spent per second of audio produced",
    )
    srv.add_argument("--max-queue", type=_positive_int, default=100, help="tasks that may wait")
    srv.add_argument(
        "--task-ttl", type=_non_negative, default=300.0, help="seconds a finished task stays queryable"
    )
    srv.add_argument("--max-text-chars", type=_positive_int, default=2000, help="longest accepted text")
    srv.add_argument(
        "--max-message-bytes",
        type=_positive_int,
        default=1 << 20,
        help="largest accepted client frame; bigger ones close the connection with 1009",
    )
    srv.add_argument(
        "--audio-root",
        action="append",
        dest="audio_roots",
        metavar="DIR",
        help="directory that prompt_audio/emo_audio must lie in (repeatable; default: the working directory)",
    )
    srv.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="tone engine: inference tasks sharing the FIFO (indextts2: one per --device entry)",
    )
    srv.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    model = p.add_argument_group("indextts2 engine")
    model.add_argument("--fp16", action="store_true", help="half-precision inference (CUDA)")
    model.add_argument("--cuda-kernel", action="store_true", help="BigVGAN's fused CUDA kernel")
    model.add_argument("--deepspeed", action="store_true", help="DeepSpeed inference for the GPT")
    model.add_argument("--accel", action="store_true", help="the model's accelerated GPT engine")
    model.add_argument("--torch-compile", action="store_true", help="torch.compile the s2mel model")
    model.add_argument(
        "--max-mel-tokens",
        type=_positive_int,
        default=1500,
        help="cap on generated mel tokens per segment (the model's own default)",
    )
    model.add_argument(
        "--speaker-cache",
        type=_positive_int,
        default=8,
        help="prompt conditionings kept per model (speakers and emotion references)",
    )
    model.add_argument(
        "--download",
        action="store_true",
        help="download IndexTeam/IndexTTS-2 into --model-dir if it is missing",
    )

    http = p.add_argument_group("HTTP API and voice library")
    http.add_argument(
        "--http-port",
        type=_port_or_off,
        default=8771,
        help="HTTP port: the OpenAI-compatible API, the voice library, /healthz, /readyz, /metrics "
        "and the demo page (0: any free port; off: none)",
    )
    http.add_argument("--http-host", default=None, help="address for --http-port (default: --host)")
    http.add_argument("--voices-dir", default="voices", help="where uploaded voices are kept")
    http.add_argument(
        "--default-voice",
        default="asset/zero_shot_prompt.wav",
        help="the bundled voice 'default' (also what OpenAI's stock voice names mean); empty: none",
    )
    limits = VoiceLimits()
    http.add_argument(
        "--voice-max-bytes", type=_positive_int, default=limits.max_bytes, help="largest upload"
    )
    http.add_argument(
        "--voice-min-seconds", type=_non_negative, default=limits.min_seconds, help="shortest sample, decoded"
    )
    http.add_argument(
        "--voice-max-seconds", type=_non_negative, default=limits.max_seconds, help="longest sample, decoded"
    )
    http.add_argument(
        "--voice-max-count", type=_positive_int, default=limits.max_count, help="voices kept at most"
    )
    http.add_argument(
        "--voice-name-max-chars", type=_positive_int, default=limits.max_name_chars, help="longest voice name"
    )

    fleet = p.add_argument_group("cluster mode (needs the [cluster] extra)")
    fleet.add_argument(
        "--broker",
        default=None,
        metavar="redis://HOST:PORT/DB",
        help="share one queue, task status and cancel across processes and machines through this "
        "Redis (>= 7) or Valkey; default: none, one process with its own queue",
    )
    fleet.add_argument(
        "--role",
        choices=("all", "gateway", "worker"),
        default="all",
        help="with --broker: gateway holds client connections and loads no model; worker runs the "
        "engine and listens on no client port; all is both",
    )
    fleet.add_argument(
        "--lease",
        type=_positive,
        default=5.0,
        help="with --broker: seconds after which a silent worker or gateway counts as lost "
        "(its task re-run elsewhere or failed, its tasks cancelled)",
    )
    fleet.add_argument(
        "--max-deliveries",
        type=_positive_int,
        default=3,
        help="with --broker: times a task is handed to a worker before a lost worker fails it for good",
    )

    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="also serve /metrics, /healthz and /readyz alone on this port, e.g. a private one "
        "(default: off; the HTTP port serves them too)",
    )
    ops.add_argument("--metrics-host", default=None, help="address for --metrics-port (default: --host)")
    ops.add_argument(
        "--drain-timeout",
        type=_non_negative,
        default=30.0,
        help="on SIGTERM/SIGINT, seconds the running task may take to finish",
    )
    ops.add_argument(
        "--max-pending-per-session",
        type=_non_negative_int,
        default=16,
        help="tasks one connection may have waiting or running (0: no limit)",
    )
    ops.add_argument(
        "--task-timeout",
        type=_non_negative,
        default=600.0,
        help="seconds a task may run before it fails (0: no limit)",
    )
    ops.add_argument(
        "--idle-timeout",
        type=_non_negative,
        default=600.0,
        help="close connections silent this long with nothing in flight (0: never)",
    )
    ops.add_argument(
        "--ping-interval",
        type=_non_negative,
        default=20.0,
        help="seconds between heartbeat pings (0: no pings)",
    )
    ops.add_argument("--ping-timeout", type=_non_negative, default=20.0, help="seconds to wait for a pong")
    ops.add_argument(
        "--max-session-buffer",
        type=_positive_int,
        default=32 << 20,
        metavar="BYTES",
        help="bytes of replies and audio one connection may leave unread before it is closed (1008)",
    )
    ops.add_argument(
        "--max-total-buffer",
        type=_positive_int,
        default=256 << 20,
        metavar="BYTES",
        help="bytes left unread by all connections together; past it the one holding most is closed",
    )
    ops.add_argument(
        "--auth-token",
        default=os.environ.get("INDEXTTS_SERVER_AUTH_TOKEN"),
        help="require this token (Authorization: Bearer, or ?token=); "
        "default: $INDEXTTS_SERVER_AUTH_TOKEN, else no auth",
    )
    ops.add_argument(
        "--allow-origin",
        action="append",
        dest="allowed_origins",
        metavar="ORIGIN",
        help="accept only handshakes from this Origin (repeatable; default: any)",
    )
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _port_or_off(text: str) -> int | None:
    if text.lower() == "off":
        return None
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be a port number (0: any free one) or off")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def config_from(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        max_queue=args.max_queue,
        task_ttl=args.task_ttl,
        max_text_chars=args.max_text_chars,
        max_message_bytes=args.max_message_bytes,
        audio_roots=tuple(args.audio_roots or (".",)),
        drain_timeout=args.drain_timeout,
        max_pending_per_session=args.max_pending_per_session,
        task_timeout=args.task_timeout,
        idle_timeout=args.idle_timeout,
        ping_interval=args.ping_interval,
        ping_timeout=args.ping_timeout,
        auth_token=args.auth_token or None,
        allowed_origins=tuple(args.allowed_origins or ()),
        max_session_buffer=args.max_session_buffer,
        max_total_buffer=args.max_total_buffer,
        voices_dir=args.voices_dir,
        default_voice=args.default_voice or None,
        voice_limits=VoiceLimits(
            max_bytes=args.voice_max_bytes,
            min_seconds=args.voice_min_seconds,
            max_seconds=args.voice_max_seconds,
            max_count=args.voice_max_count,
            max_name_chars=args.voice_name_max_chars,
        ),
    )


def build_engines(args: argparse.Namespace, progress: Callable[[str], None]) -> list[Engine]:
    """The engines to serve with; for indextts2 this loads the model, before anything listens."""
    if args.engine == "tone":
        from ..engines.tone import ToneEngine

        return [ToneEngine(args.tone_rtf) for _ in range(args.workers)]
    from ..engines.loading import LoadFailed, load_engines

    devices = [device.strip() for device in args.device.split(",") if device.strip()]
    try:
        return load_engines(
            model_dir=args.model_dir,
            cfg_path=args.cfg_path,
            devices=devices or ["cuda"],
            download=args.download,
            max_mel_tokens=args.max_mel_tokens,
            speaker_cache=args.speaker_cache,
            fp16=args.fp16,
            cuda_kernel=args.cuda_kernel,
            deepspeed=args.deepspeed,
            accel=args.accel,
            torch_compile=args.torch_compile,
            progress=progress,
        )
    except LoadFailed as failure:
        print(f"模型加载失败: {failure}\n提示: {failure.hint}", file=sys.stderr)
        raise SystemExit(2) from None


class Service(Protocol):
    """What receives the signals: the WebSocket `Server`, or a worker-only node."""

    @property
    def draining(self) -> bool: ...

    async def drain(self) -> None: ...


async def _watch_signals(
    server: Service,
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


def _alive(server: Server, stall_limit: float) -> Callable[[], bool]:
    """For the watchdog: every inference task runs, and a busy one produced audio lately."""
    return lambda: server.scheduler.alive(stall_limit)


async def _report_status(server: Server, notifier: Notifier) -> None:
    while True:
        notifier.status(f"{len(server.sessions)} connections, {server.scheduler.status_line()}")
        await trio.sleep(STATUS_PERIOD)


async def serve(
    server: Server,
    notifier: Notifier,
    metrics: Metrics,
    metrics_address: tuple[str, int] | None = None,
    http_address: tuple[str, int] | None = None,
) -> None:
    """Run ``server``, its HTTP port and its operations endpoints until a signal has drained it."""
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, server, notifier)
        if metrics_address is not None:
            host, port = metrics_address
            ops = HttpApi(server, metrics, ops_only=True)
            urls = await nursery.start(partial(serve_http, ops, host, port))
            log.info("metrics on http://%s:%s/metrics (also /healthz, /readyz)", host, bound_port(urls))
        stall_limit = server.config.task_timeout or DEFAULT_STALL_LIMIT
        await nursery.start(notifier.run_watchdog, _alive(server, stall_limit))
        await nursery.start(_run_then_stop, server, nursery.cancel_scope)
        if http_address is not None:
            host, port = http_address
            api = HttpApi(server, metrics)
            # The HTTP listener closes when the drain starts, as the WebSocket one does; requests in
            # flight get the drain's time and a little more to finish.
            urls = await nursery.start(
                partial(
                    serve_http,
                    api,
                    host,
                    port,
                    shutdown=server.drain_started.wait,
                    graceful_timeout=server.config.drain_timeout + 10,
                )
            )
            log.info("http on http://%s:%s (OpenAI-compatible API under /v1)", host, bound_port(urls))
        notifier.ready(f"listening; engine {server.scheduler.engine_name}")
        nursery.start_soon(_report_status, server, notifier)


async def _run_then_stop(
    server: Server,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await server.run(task_status=task_status)
    scope.cancel()


async def serve_worker(
    node: WorkerNode,
    notifier: Notifier,
    metrics: Metrics,
    metrics_address: tuple[str, int] | None = None,
) -> None:
    """Run a worker-only node (``--role worker``) and its operations endpoints until drained."""
    from ..scheduling.broker.node import OpsApi

    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, node, notifier)
        if metrics_address is not None:
            host, port = metrics_address
            ops = OpsApi(lambda: node.ready, metrics)
            urls = await nursery.start(partial(serve_http, ops, host, port))
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
    args: argparse.Namespace,
    config: ServerConfig,
    engines: list[Engine],
    metrics: Metrics,
) -> tuple[BrokerScheduler, Callable[[], None]]:
    """A cluster process's scheduler (``--broker``), its redis client imported only now."""
    try:
        from ..scheduling.broker.gateway import BrokerScheduler
        from ..scheduling.broker.store import Store
        from ..scheduling.broker.worker import BrokerWorker, worker_name

        store = Store(args.broker, lease=args.lease, task_ttl=config.task_ttl, max_queue=config.max_queue)
    except ImportError as exc:
        print(f"--broker 需要安装可选依赖: pip install -e \".[cluster]\" ({exc})", file=sys.stderr)
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
        gateway=args.role != "worker",
        workers=workers,
        max_deliveries=args.max_deliveries,
        metrics=metrics,
    )
    metrics.set_fleet_source(lambda: (scheduler.fleet.queue_depth, scheduler.fleet.workers))
    return scheduler, store.close


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    notifier = Notifier.from_environ()
    adopted = listen_sockets()

    def progress(status: str) -> None:
        log.info("%s", status)
        notifier.status(status)
        notifier.extend_timeout(LOAD_STEP_TIMEOUT)

    metrics = Metrics()
    metrics_address = None
    if args.metrics_port is not None:
        metrics_address = (args.metrics_host or args.host, args.metrics_port)
    http_address = None
    if args.http_port is not None:
        http_address = (args.http_host or args.host, args.http_port)
    config = config_from(args)
    if args.broker is None and args.role != "all":
        print("--role gateway/worker 需要 --broker redis://HOST:PORT/DB", file=sys.stderr)
        raise SystemExit(2)
    engines = build_engines(args, progress) if args.role != "gateway" else []
    scheduler: Scheduler | None = None
    close: Callable[[], None] = lambda: None  # noqa: E731
    if args.broker is not None:
        scheduler, close = _cluster(args, config, engines, metrics)

    async def start() -> None:
        if args.role == "worker":
            from ..scheduling.broker.gateway import BrokerScheduler
            from ..scheduling.broker.node import WorkerNode

            assert isinstance(scheduler, BrokerScheduler)
            node = WorkerNode(scheduler, drain_timeout=config.drain_timeout, task_timeout=config.task_timeout)
            metrics.set_queue_depth_source(lambda: node.scheduler.queue_depth)
            await serve_worker(node, notifier, metrics, metrics_address)
            return
        server = Server(
            config, engines, metrics=metrics, listeners=trio_listeners(adopted), scheduler=scheduler
        )
        server.voices.prepare()
        metrics.set_queue_depth_source(lambda: server.scheduler.queue_depth)
        await serve(server, notifier, metrics, metrics_address, http_address)

    try:
        trio.run(start)
    finally:
        close()
        notifier.close()
    log.info("stopped")
