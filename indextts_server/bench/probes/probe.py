"""Event-loop responsiveness probe: welcome and ping/pong times on fresh connections while the server works.

    python -m indextts_server.bench.probes.probe --url ws://127.0.0.1:8770 --duration 30

Run it beside a load (``python -m indextts_server.bench --url …``): every ``--interval`` it opens a
new connection and times connect → welcome, and times a ping → pong on a connection kept open.
Both stay small only if the event loop never waits on the engine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import trio
from trio_websocket import open_websocket_url

from ..drive.spawn import is_loopback_url


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def probe(url: str, duration: float, interval: float) -> dict[str, dict[str, float]]:
    welcome: list[float] = []
    pong: list[float] = []
    async with open_websocket_url(url) as keeper:
        await keeper.get_message()
        deadline = trio.current_time() + duration
        while trio.current_time() < deadline:
            began = trio.current_time()
            async with open_websocket_url(url) as ws:
                await ws.get_message()
                welcome.append(trio.current_time() - began)
            began = trio.current_time()
            await keeper.ping()
            pong.append(trio.current_time() - began)
            await trio.sleep(interval)
    return {
        name: {
            "count": len(samples),
            "p50_ms": 1000 * percentile(samples, 0.50),
            "p95_ms": 1000 * percentile(samples, 0.95),
            "p99_ms": 1000 * percentile(samples, 0.99),
            "max_ms": 1000 * max(samples),
        }
        for name, samples in (("welcome", welcome), ("ping", pong))
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m indextts_server.bench.probes.probe", description=__doc__)
    parser.add_argument("--url", required=True, help="a running server (loopback only)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds to probe")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between probes")
    args = parser.parse_args(argv)
    if not is_loopback_url(args.url):
        raise SystemExit(f"--url must be a loopback address: {args.url}")
    report = trio.run(probe, args.url, args.duration, args.interval)
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
