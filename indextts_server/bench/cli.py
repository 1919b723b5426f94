"""Command line of the load generator: start the targets, run the same load on each, report."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import msgspec
import trio

from .drive.agents import LongTask, long_frame, long_task, pcm_speech_bodies, run_agents_load
from .drive.corpus import load_corpus, parse_field, reply_sizes, request_frames
from .drive.http import run_http_load, speech_bodies
from .drive.load import LoadPlan, LoadResult, run_load
from .drive.progress import Progress
from .drive.spawn import SpawnError, free_port, is_loopback_url, raise_open_file_limit, spawn
from .drive.wyoming import run_wyoming_load, wyoming_texts
from .results.report import (
    AgentLevel,
    Report,
    Scaling,
    Settings,
    Summary,
    agent_level,
    ratios,
    render,
    summarise,
)

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
SPARE_FILES = 256
"""Descriptors beyond one per connection: pipes, the listener, libraries, logs."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indextts_server.bench",
        description=(
            "Load generator for the indextts-server WebSocket protocol. Runs the same closed-loop "
            "load against the server and against a floor server (the same frames, no work), and "
            "reports the server's figures as ratios to the floor's. Targets must be on loopback."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--url", help="an already running server (ws://127.0.0.1:PORT); default: start one on a free port"
    )
    p.add_argument(
        "--server-args",
        default="--engine tone",
        help="arguments for the server this starts (python -m indextts_server …; host and port are set)",
    )
    p.add_argument("-c", "--connections", type=_positive, default=1, help="connections sending requests")
    p.add_argument("-n", "--requests", type=_positive, default=100, help="requests in all (all connections)")
    p.add_argument("--corpus", type=Path, help="one text per line (default: built-in zh/en lines, ~3 s each)")
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="set a request field, e.g. max_tokens=60 or stream=true (repeatable)",
    )
    p.add_argument("--idle", type=_non_negative, default=0, help="extra idle connections held open meanwhile")
    p.add_argument("--warmup", type=_non_negative, default=2, help="requests sent before the clock starts")
    p.add_argument(
        "--duration-limit",
        type=_positive_float,
        default=300.0,
        help="seconds after which the load stops, per target; unanswered requests count as lost",
    )
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="latency and queue-depth plot (matplotlib)")
    p.add_argument(
        "--http",
        action="store_true",
        help="also run the same load over the started server's HTTP port (POST /v1/audio/speech, "
        "voice 'default', WAV unless --field format=…) right after the WebSocket load, and report "
        "HTTP/WebSocket ratios",
    )
    p.add_argument(
        "--wyoming",
        action="store_true",
        help="also run the same texts over the started server's Wyoming port, whole (synthesize) and "
        "streamed (synthesize-start, a chunk per word, synthesize-stop), and report Wyoming/WebSocket "
        "ratios (time to first audio: give the WebSocket --field stream=true)",
    )
    p.add_argument(
        "--agents",
        type=_levels,
        metavar="N[,N...]",
        help="also time voice agents on the started server's /tts/websocket: N agents at once, each "
        "sentence a context sent whole; time to the first chunk against the same sentences over HTTP "
        "(streamed pcm, time to first byte), then beside a long contract task; -n sentences per "
        "condition and level",
    )
    p.add_argument(
        "--batch-size",
        type=_batch_sizes,
        metavar="N[,N...]",
        help="start the server with --batch-size N; several values run the same load once per value, "
        "each on a server of its own, and report each value's throughput and latency against the first's",
    )
    p.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the load against the floor server and report ratios",
    )
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _batch_sizes(text: str) -> list[int]:
    values = [_positive(part) for part in text.split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("each batch size once")
    return values


def _levels(text: str) -> list[int]:
    values = [_positive(part) for part in text.split(",")]
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError("each number of agents once")
    return values


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


@dataclass(frozen=True, slots=True)
class Options:
    url: str | None
    server_command: list[str]
    frames: list[str]
    connections: int
    requests: int
    idle: int
    warmup: int
    duration_limit: float
    floor_sizes: Path | None
    http: bool = False
    wyoming: bool = False
    batch_sizes: tuple[int, ...] = ()
    agents: tuple[int, ...] = ()

    def plan(self, url: str) -> LoadPlan:
        return LoadPlan(
            url=url,
            frames=self.frames,
            connections=self.connections,
            requests=self.requests,
            idle=self.idle,
            duration_limit=self.duration_limit,
            warmup=self.warmup,
        )


def server_cwd() -> Path:
    """Where a started server runs: the repository, so the default prompt_audio resolves."""
    return REPO if (REPO / "asset").is_dir() else Path.cwd()


async def measure_spawned(label: str, command: list[str], options: Options) -> tuple[Summary, LoadResult]:
    """Start ``command`` on a free loopback port (appended as --host/--port), load it, stop it."""
    port = free_port(LOOPBACK)
    command = [*command, "--host", LOOPBACK, "--port", str(port)]
    async with spawn(command, LOOPBACK, port, cwd=server_cwd()) as target:
        result = await run_load(options.plan(target.url), Progress(label, options.requests))
        peak = await target.peak_rss_kib()
    return summarise(label, result, command=command, peak_rss_kib=peak), result


class Others(NamedTuple):
    """What ran on the same server after the WebSocket load: ``--http``, ``--wyoming``."""

    http: Summary | None = None
    wyoming: Summary | None = None
    wyoming_streamed: Summary | None = None
    agents: list[AgentLevel] | None = None


async def measure_server(options: Options) -> tuple[Summary, LoadResult, Others]:
    """Start the server (its HTTP port on a free port with ``--http``, else none; its Wyoming port
    with ``--wyoming``), load it over the WebSocket, then (``--http``) the same load over HTTP,
    then (``--wyoming``) over Wyoming, whole and streamed, then stop it."""
    port = free_port(LOOPBACK)
    http_port = free_port(LOOPBACK) if options.http or options.agents else None
    command = [*options.server_command, "--host", LOOPBACK, "--port", str(port)]
    command += ["--http-port", "off" if http_port is None else str(http_port)]
    wyoming_port = free_port(LOOPBACK) if options.wyoming else None
    command += [] if wyoming_port is None else ["--wyoming-port", str(wyoming_port)]
    http = wyoming = streamed = None
    agents: list[AgentLevel] | None = None
    async with spawn(command, LOOPBACK, port, cwd=server_cwd()) as target:
        result = await run_load(options.plan(target.url), Progress("server", options.requests))
        if http_port is not None and options.http:
            url = f"http://{LOOPBACK}:{http_port}"
            plan = replace(
                options.plan(url), frames=[body.decode() for body in speech_bodies(options.frames)]
            )
            http = summarise("http", await run_http_load(plan, Progress("http", options.requests)))
        if wyoming_port is not None:
            plan = replace(
                options.plan(f"tcp://{LOOPBACK}:{wyoming_port}"), frames=wyoming_texts(options.frames)
            )
            whole = await run_wyoming_load(plan, Progress("wyoming", options.requests), streamed=False)
            wyoming = summarise("wyoming", whole)
            flowing = await run_wyoming_load(plan, Progress("streamed", options.requests), streamed=True)
            streamed = summarise("streamed", flowing)
        if http_port is not None and options.agents:
            agents = [await measure_agents(options, target.url, http_port, n) for n in options.agents]
        peak = await target.peak_rss_kib()
    summary = summarise("server", result, command=command, peak_rss_kib=peak)
    return summary, result, Others(http, wyoming, streamed, agents)


async def measure_agents(options: Options, ws_url: str, http_port: int, agents: int) -> AgentLevel:
    """``agents`` at once, three conditions one after another on the same server: the sentences over
    HTTP (the baseline), as voice agents, and as voice agents beside a long contract task."""
    texts = wyoming_texts(options.frames)
    plan = replace(options.plan(f"http://{LOOPBACK}:{http_port}"), connections=agents)
    http = await run_http_load(
        replace(plan, frames=pcm_speech_bodies(texts)), Progress(f"http×{agents}", plan.requests)
    )
    plan = replace(plan, url=f"ws://{LOOPBACK}:{http_port}/tts/websocket", frames=texts)
    alone = await run_agents_load(plan, Progress(f"agents×{agents}", plan.requests))
    long = LongTask()
    async with trio.open_nursery() as nursery:
        await nursery.start(long_task, ws_url, long_frame(options.frames), long)
        beside = await run_agents_load(plan, Progress(f"beside×{agents}", plan.requests))
        nursery.cancel_scope.cancel()
    return agent_level(
        agents,
        summarise(f"http×{agents}", http),
        summarise(f"agents×{agents}", alone),
        summarise(f"beside×{agents}", beside),
        (long.tasks, long.segments, long.audio_seconds, long.errors),
    )


async def measure_batch(options: Options, size: int) -> tuple[Summary, LoadResult]:
    """The load on a server of its own started with ``--batch-size size``."""
    command = [*options.server_command, "--batch-size", str(size), "--http-port", "off"]
    return await measure_spawned(f"batch-{size}", command, options)


async def bench(options: Options) -> tuple[Summary, Summary | None, dict[str, LoadResult], Others]:
    """The server first, then the floor, one at a time so that each has the machine to itself."""
    results: dict[str, LoadResult] = {}
    others = Others()
    if options.url is not None:
        result = await run_load(options.plan(options.url), Progress("server", options.requests))
        server = summarise("server", result)
    elif len(options.batch_sizes) > 1:
        scaled = [await measure_batch(options, size) for size in options.batch_sizes]
        server, result = scaled[0]
        results.update(
            (f"batch-{size}", run) for size, (_, run) in zip(options.batch_sizes, scaled, strict=True)
        )
    else:
        server, result, others = await measure_server(options)
    results["server"] = result
    floor = None
    if options.floor_sizes is not None:
        floor_module = "indextts_server.bench.drive.floor"
        command = [sys.executable, "-m", floor_module, "--sizes", str(options.floor_sizes)]
        floor, results["floor"] = await measure_spawned("floor", command, options)
    return server, floor, results, others


def _scaling(batch_sizes: list[int], results: dict[str, LoadResult]) -> list[Scaling]:
    summaries = [summarise(f"batch-{size}", results[f"batch-{size}"]) for size in batch_sizes]
    return [
        Scaling(batch_size=size, summary=summary, ratios=ratios(summary, summaries[0]))
        for size, summary in zip(batch_sizes, summaries, strict=True)
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.http and args.url is not None:
        raise SystemExit("--http needs a server the benchmark starts itself (no --url)")
    if args.agents and (args.url is not None or len(args.batch_size or []) > 1):
        raise SystemExit("--agents needs a server the benchmark starts itself (no --url), one --batch-size")
    if args.wyoming and (args.url is not None or len(args.batch_size or []) > 1):
        raise SystemExit("--wyoming needs a server the benchmark starts itself (no --url), one --batch-size")
    if args.url is not None and not is_loopback_url(args.url):
        raise SystemExit(f"--url must be a loopback address (127.0.0.1, ::1, localhost): {args.url}")
    try:
        fields = dict(parse_field(spec) for spec in args.field)
        frames = request_frames(load_corpus(args.corpus), fields)
    except (ValueError, OSError) as exc:
        raise SystemExit(str(exc)) from None
    batch_sizes: list[int] = args.batch_size or []
    if batch_sizes and args.url is not None:
        raise SystemExit("--batch-size needs a server the benchmark starts itself (no --url)")
    if len(batch_sizes) > 1 and args.http:
        raise SystemExit("--http takes one --batch-size")
    server_args = shlex.split(args.server_args)
    if len(batch_sizes) == 1:
        server_args += ["--batch-size", str(batch_sizes[0])]
    connections = max([args.connections, *(n + 1 for n in args.agents or ())])
    soft, raised_from = raise_open_file_limit(connections + args.idle + SPARE_FILES)
    if raised_from is not None:
        print(f"open-file limit raised from {raised_from} to {soft}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="indextts-bench-") as tmp:
        sizes_path = None
        if args.floor:
            # Rendered before any clock starts: the floor only looks replies up.
            sizes_path = Path(tmp) / "sizes.json"
            sizes_path.write_text(json.dumps(reply_sizes(frames), ensure_ascii=False), encoding="utf-8")
        options = Options(
            url=args.url,
            server_command=[sys.executable, "-m", "indextts_server", *server_args],
            frames=frames,
            connections=args.connections,
            requests=args.requests,
            idle=args.idle,
            warmup=args.warmup,
            duration_limit=args.duration_limit,
            floor_sizes=sizes_path,
            http=args.http,
            wyoming=args.wyoming,
            batch_sizes=tuple(batch_sizes),
            agents=tuple(args.agents or ()),
        )
        try:
            server, floor, results, others = trio.run(bench, options)
        except SpawnError as exc:
            raise SystemExit(f"could not start a target: {exc}") from None

    report = Report(
        settings=Settings(
            connections=args.connections,
            requests=args.requests,
            idle=args.idle,
            warmup=args.warmup,
            duration_limit_s=args.duration_limit,
            corpus_texts=len(frames),
            fields=fields,
            server_args=None if args.url else server_args,
            nofile_soft_limit=soft,
            nofile_raised_from=raised_from,
        ),
        server=server,
        floor=floor,
        ratios=ratios(server, floor) if floor is not None else None,
        http=others.http,
        http_ratios=ratios(others.http, server) if others.http is not None else None,
        wyoming=others.wyoming,
        wyoming_ratios=ratios(others.wyoming, server) if others.wyoming is not None else None,
        wyoming_streamed=others.wyoming_streamed,
        wyoming_streamed_ratios=(
            ratios(others.wyoming_streamed, server) if others.wyoming_streamed is not None else None
        ),
        scaling=_scaling(batch_sizes, results) if len(batch_sizes) > 1 else None,
        agents=others.agents,
    )
    print(render(report))
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    if args.plot is not None:
        from .results.plot import PlotUnavailable, save_plot

        try:
            save_plot(args.plot, results)
        except PlotUnavailable as exc:
            print(exc, file=sys.stderr)
