"""Cluster-mode benchmark: fleet throughput with 1, 2 and 4 tone workers, and the broker's added latency.

    python -m indextts_server.bench.probes.cluster --json cluster.json

Starts its own ``redis-server`` (loopback, free port, no persistence; stopped by PID), then, one
after another on an emptied broker:

- **scaling**: one gateway and W worker processes (``--engine tone --tone-rtf R``) for each W in
  ``--workers``, loaded with 2W+2 closed-loop connections; throughput is reported against W=1's
  from the same run;
- **latency**: one connection, one request at a time, ``--tone-rtf 0``: the embedded server (no
  broker) and the broker path (a gateway and one worker process); the difference of the medians is
  what the broker adds per task.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import msgspec
import trio

from ..drive.corpus import load_corpus, request_frames
from ..drive.load import LoadPlan, run_load
from ..drive.progress import Progress
from ..drive.spawn import free_port, spawn
from ..results.report import Summary, summarise

REPO = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
READY_TIMEOUT = 60.0


class Scaling(msgspec.Struct, kw_only=True):
    workers: int
    connections: int
    throughput_rps: float
    speedup: float
    latency_p50_s: float | None
    completed: int
    errors: int
    lost: int


class Latency(msgspec.Struct, kw_only=True):
    target: str
    p50_s: float | None
    p95_s: float | None
    p99_s: float | None
    completed: int


class ClusterReport(msgspec.Struct, kw_only=True):
    tone_rtf: float
    requests_per_worker: int
    scaling: list[Scaling]
    latency: list[Latency]
    added_p50_ms: float | None
    redis_server: str


@asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (Debian: apt-get install redis-server)")
    port = free_port(HOST)
    settings = [
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    ]
    process = await trio.lowlevel.open_process([binary, *settings], stdout=subprocess.DEVNULL)
    try:
        with trio.fail_after(10):
            while True:
                try:
                    stream = await trio.open_tcp_stream(HOST, port)
                except OSError:
                    await trio.sleep(0.02)
                    continue
                await stream.aclose()
                break
        yield f"redis://{HOST}:{port}/0"
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def flush(url: str) -> None:
    import redis

    def run() -> None:
        client = redis.Redis.from_url(url)
        client.flushall()
        client.close()

    await trio.to_thread.run_sync(run)


@asynccontextmanager
async def worker(url: str, rtf: float) -> AsyncIterator[None]:
    """A ``--role worker`` process, ready once it says so; SIGTERM (then SIGKILL) on exit."""
    command = [sys.executable, "-m", "indextts_server", "--role", "worker", "--broker", url]
    command += ["--engine", "tone", "--tone-rtf", str(rtf), "--http-port", "off"]
    process = await trio.lowlevel.open_process(
        [*command, "--log-level", "INFO"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        async with trio.open_nursery() as nursery:
            ready = trio.Event()
            nursery.start_soon(_watch, process, ready)
            with trio.fail_after(READY_TIMEOUT):
                await ready.wait()
            yield
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _watch(process: trio.Process, ready: trio.Event) -> None:
    assert process.stderr is not None
    seen = b""
    async for chunk in process.stderr:
        if not ready.is_set():
            seen += chunk
            if b"worker ready" in seen:
                ready.set()
                seen = b""


async def measure(label: str, command: list[str], plan: LoadPlan, requests: int) -> Summary:
    port = free_port(HOST)
    command = [*command, "--host", HOST, "--port", str(port), "--http-port", "off"]
    async with spawn(command, HOST, port, cwd=REPO) as target:
        plan = LoadPlan(
            url=target.url,
            frames=plan.frames,
            connections=plan.connections,
            requests=requests,
            warmup=plan.warmup,
            duration_limit=plan.duration_limit,
        )
        result = await run_load(plan, Progress(label, requests))
    return summarise(label, result, command=command)


async def run(args: argparse.Namespace) -> ClusterReport:
    frames = request_frames(load_corpus(None), {})
    server = [sys.executable, "-m", "indextts_server", "--engine", "tone"]
    scaling: list[Scaling] = []
    latency: list[Latency] = []
    with tempfile.TemporaryDirectory(prefix="indextts-cluster-bench-") as tmp:
        async with redis_server(Path(tmp)) as url:
            gateway = [*server, "--role", "gateway", "--broker", url, "--log-level", "WARNING"]
            for count in args.workers:
                await flush(url)
                connections = 2 * count + 2
                requests = args.requests_per_worker * count
                plan = LoadPlan(
                    url="", frames=frames, connections=connections, requests=requests, warmup=count
                )
                async with AsyncExitStack() as stack:
                    for _ in range(count):
                        await stack.enter_async_context(worker(url, args.tone_rtf))
                    summary = await measure(f"{count} worker(s)", gateway, plan, requests)
                base = scaling[0].throughput_rps if scaling else summary.throughput_rps
                scaling.append(
                    Scaling(
                        workers=count,
                        connections=connections,
                        throughput_rps=round(summary.throughput_rps, 3),
                        speedup=round(summary.throughput_rps / base, 3) if base else 0.0,
                        latency_p50_s=summary.latency_s.p50,
                        completed=summary.completed,
                        errors=summary.errors,
                        lost=summary.lost,
                    )
                )
            plan = LoadPlan(url="", frames=frames, connections=1, requests=args.latency_requests, warmup=5)
            embedded = await measure(
                "embedded", [*server, "--log-level", "WARNING"], plan, args.latency_requests
            )
            await flush(url)
            async with worker(url, 0.0):
                broker = await measure("broker", gateway, plan, args.latency_requests)
            for measured in (embedded, broker):
                d = measured.latency_s
                latency.append(
                    Latency(
                        target=measured.target,
                        p50_s=d.p50,
                        p95_s=d.p95,
                        p99_s=d.p99,
                        completed=measured.completed,
                    )
                )
    added = None
    if embedded.latency_s.p50 is not None and broker.latency_s.p50 is not None:
        added = round((broker.latency_s.p50 - embedded.latency_s.p50) * 1000, 3)
    version = (
        (await trio.run_process(["redis-server", "--version"], capture_stdout=True)).stdout.decode().strip()
    )
    return ClusterReport(
        tone_rtf=args.tone_rtf,
        requests_per_worker=args.requests_per_worker,
        scaling=scaling,
        latency=latency,
        added_p50_ms=added,
        redis_server=version,
    )


def render(report: ClusterReport) -> str:
    lines = [f"tone engine, --tone-rtf {report.tone_rtf}; {report.redis_server}", ""]
    lines.append(
        "workers  connections  throughput (req/s)  vs 1 worker  p50 latency (s)  completed/errors/lost"
    )
    for row in report.scaling:
        p50 = "-" if row.latency_p50_s is None else f"{row.latency_p50_s:.3f}"
        lines.append(
            f"{row.workers:>7}  {row.connections:>11}  {row.throughput_rps:>18.2f}  {row.speedup:>10.2f}x"
            f"  {p50:>15}  {row.completed}/{row.errors}/{row.lost}"
        )
    lines += ["", "one connection, --tone-rtf 0: send -> end latency (ms)"]
    for lat in report.latency:
        cells = [
            "-" if value is None else f"{value * 1000:.2f}" for value in (lat.p50_s, lat.p95_s, lat.p99_s)
        ]
        lines.append(
            f"{lat.target:>9}: p50 {cells[0]}  p95 {cells[1]}  p99 {cells[2]}  ({lat.completed} requests)"
        )
    if report.added_p50_ms is not None:
        lines.append(f"the broker adds {report.added_p50_ms:+.2f} ms at the median")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m indextts_server.bench.probes.cluster", description=__doc__)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="worker counts to compare")
    p.add_argument("--tone-rtf", type=float, default=0.05, help="tone engine pace for the scaling runs")
    p.add_argument("--requests-per-worker", type=int, default=40, help="scaling: requests per worker")
    p.add_argument("--latency-requests", type=int, default=200, help="latency: requests per target")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    report = trio.run(run, args)
    print(render(report))
    if args.json is not None:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


if __name__ == "__main__":
    main()
