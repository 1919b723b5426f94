"""Command line: the seed's flags plus the project's, logging set-up, and start-up of the server."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from ..core.engine import Engine
from .server import Server, ServerConfig

log = logging.getLogger("indextts_server")


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
    srv.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
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
    )


def build_engine(args: argparse.Namespace) -> Engine:
    if args.engine == "tone":
        from .tone import ToneEngine

        return ToneEngine(args.tone_rtf)
    raise SystemExit(
        "模型加载失败: the indextts2 engine is not available in this build; "
        "start with --engine tone to try the protocol"
    )


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


async def serve(server: Server) -> None:
    """Run ``server`` until SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(server.run)
            async for signum in signals:
                log.info("%s received; stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    setup_logging(args.log_level)
    engine = build_engine(args)
    trio.run(serve, Server(config_from(args), engine))
