"""The figures a run produces: per-target summaries, ratios to the floor, and their text table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

import msgspec
import numpy as np

from ..drive.load import LoadResult
from .record import Record


class Distribution(msgspec.Struct, kw_only=True):
    """Seconds; ``None`` when nothing was measured."""

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None


class Summary(msgspec.Struct, kw_only=True):
    target: str
    url: str
    command: list[str] | None
    requests: int
    sent: int
    completed: int
    errors: int
    lost: int
    not_sent: int
    timed_out: bool
    connection_errors: int
    elapsed_s: float
    throughput_rps: float
    latency_s: Distribution
    first_audio_s: Distribution
    queue_wait_s: Distribution
    audio_seconds_per_request: float | None
    bytes_per_request: float | None
    binaries_per_request: float | None
    rtf: float | None
    """Wall time of the run over the audio seconds it produced."""
    service_rtf_p50: float | None
    """Median over requests of (end - start) / audio seconds: the engine's pace, queueing excluded."""
    queue_depth_peak: int
    idle_requested: int
    idle_opened: int
    idle_dropped: int
    peak_rss_kib: int | None
    error_messages: dict[str, int]
    connection_error_messages: dict[str, int]


class Ratios(msgspec.Struct, kw_only=True):
    """Server figure over floor figure: above 1 is slower for latencies, below 1 is fewer for throughput."""

    p50_latency: float | None
    p95_latency: float | None
    p99_latency: float | None
    p50_first_audio: float | None
    throughput: float | None


class Settings(msgspec.Struct, kw_only=True):
    connections: int
    requests: int
    idle: int
    warmup: int
    duration_limit_s: float
    corpus_texts: int
    fields: dict[str, object]
    server_args: list[str] | None
    nofile_soft_limit: int
    nofile_raised_from: int | None


class Scaling(msgspec.Struct, kw_only=True):
    """``--batch-size`` with several values: one server per value, the same load on each."""

    batch_size: int
    summary: Summary
    ratios: Ratios
    """This value's figure over the first value's."""


class AgentLevel(msgspec.Struct, kw_only=True):
    """``--agents``: one number of concurrent voice agents, three conditions on the same server.

    First audio is the figure: send -> first byte (HTTP) or first ``chunk`` (agents)."""

    agents: int
    http: Summary
    """The baseline: the same sentences over ``/v1/audio/speech`` (streamed pcm), as many connections."""
    alone: Summary
    """The agents, each sentence a context sent whole (``continue: false``)."""
    beside: Summary
    """The same agents while a contract client streams a long multi-segment text, re-sent as it ends."""
    alone_vs_http: Ratios
    beside_vs_alone: Ratios
    p95_first_audio_alone_vs_http: float | None
    p95_first_audio_beside_vs_alone: float | None
    long_tasks: int
    """Long contract tasks finished while ``beside`` ran (the one running at its end not counted)."""
    long_segments: int
    """The long tasks' segments received meanwhile, the running task's included."""
    long_audio_seconds: float
    """Their audio: over ``long_segments``, the audio of one segment, whose time an agent may wait."""
    long_errors: list[str]


class Report(msgspec.Struct, kw_only=True):
    settings: Settings
    server: Summary
    floor: Summary | None
    ratios: Ratios | None
    http: Summary | None = None
    """``--http``: the same load over the HTTP port of the same server, right after the WebSocket's."""
    http_ratios: Ratios | None = None
    """HTTP figure over WebSocket figure."""
    wyoming: Summary | None = None
    """``--wyoming``: the same load over the Wyoming port, one ``synthesize`` per request."""
    wyoming_ratios: Ratios | None = None
    """Wyoming (whole) figure over WebSocket figure."""
    wyoming_streamed: Summary | None = None
    """``--wyoming``: the same texts streamed (``synthesize-start``, a chunk per word, ``-stop``)."""
    wyoming_streamed_ratios: Ratios | None = None
    """Wyoming (streamed) figure over WebSocket figure."""
    scaling: list[Scaling] | None = None
    """``--batch-size N,M,…``: each value's run, the first of which is ``server``."""
    agents: list[AgentLevel] | None = None
    """``--agents N,M,…``: voice agents against the HTTP API, alone and beside a long contract task."""


def distribution(values: Sequence[float]) -> Distribution:
    if not values:
        return Distribution(p50=None, p95=None, p99=None, mean=None, max=None)
    data = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(data, [50, 95, 99]))
    return Distribution(p50=p50, p95=p95, p99=p99, mean=float(data.mean()), max=float(data.max()))


def queue_depth(records: Iterable[Record]) -> tuple[list[float], list[int]]:
    """Tasks waiting in the server's queue over time, from every client's queued/start/end times.

    A task waits from its ``queued`` until its ``start`` (or until its end, or the error that
    took it off the queue, when it never started).
    """
    changes: list[tuple[float, int]] = []
    for record in records:
        if record.queued is None:
            continue
        changes.append((record.queued, 1))
        left = record.start if record.start is not None else record.end
        if left is not None:
            changes.append((left, -1))
    changes.sort()
    times, depths, depth = [0.0], [0], 0
    for when, change in changes:
        depth += change
        times.append(when)
        depths.append(depth)
    return times, depths


def summarise(
    target: str,
    result: LoadResult,
    *,
    command: list[str] | None = None,
    peak_rss_kib: int | None = None,
) -> Summary:
    records = result.records
    done = [r for r in records if r.completed]
    latency = [r.end - r.sent for r in done if r.end is not None]
    first_audio = [r.first_audio - r.sent for r in done if r.first_audio is not None]
    queue_wait = [r.start - r.sent for r in done if r.start is not None]
    audio_total = sum(r.audio_seconds for r in done)
    service_rtf = [
        (r.end - r.start) / r.audio_seconds
        for r in done
        if r.end is not None and r.start is not None and r.audio_seconds > 0
    ]
    elapsed = result.elapsed
    return Summary(
        target=target,
        url=result.plan.url,
        command=command,
        requests=result.plan.requests,
        sent=len(records),
        completed=len(done),
        errors=sum(r.error is not None for r in records),
        lost=sum(r.lost for r in records),
        not_sent=result.not_sent,
        timed_out=result.timed_out,
        connection_errors=len(result.connection_errors),
        elapsed_s=elapsed,
        throughput_rps=len(done) / elapsed if elapsed > 0 else 0.0,
        latency_s=distribution(latency),
        first_audio_s=distribution(first_audio),
        queue_wait_s=distribution(queue_wait),
        audio_seconds_per_request=audio_total / len(done) if done else None,
        bytes_per_request=sum(r.audio_bytes for r in done) / len(done) if done else None,
        binaries_per_request=sum(r.binaries for r in done) / len(done) if done else None,
        rtf=elapsed / audio_total if audio_total > 0 else None,
        service_rtf_p50=float(np.median(service_rtf)) if service_rtf else None,
        queue_depth_peak=max(queue_depth(records)[1]),
        idle_requested=result.plan.idle,
        idle_opened=result.idle_opened,
        idle_dropped=result.idle_dropped,
        peak_rss_kib=peak_rss_kib,
        error_messages=dict(Counter(r.error for r in records if r.error is not None).most_common(10)),
        connection_error_messages=dict(Counter(result.connection_errors).most_common(10)),
    )


def _ratio(server: float | None, floor: float | None) -> float | None:
    if server is None or floor is None or floor <= 0:
        return None
    return server / floor


def ratios(server: Summary, floor: Summary) -> Ratios:
    return Ratios(
        p50_latency=_ratio(server.latency_s.p50, floor.latency_s.p50),
        p95_latency=_ratio(server.latency_s.p95, floor.latency_s.p95),
        p99_latency=_ratio(server.latency_s.p99, floor.latency_s.p99),
        p50_first_audio=_ratio(server.first_audio_s.p50, floor.first_audio_s.p50),
        throughput=_ratio(server.throughput_rps, floor.throughput_rps),
    )


def agent_level(
    agents: int, http: Summary, alone: Summary, beside: Summary, long: tuple[int, int, float, list[str]]
) -> AgentLevel:
    """One ``--agents`` level's three summaries and the ratios between them."""
    tasks, segments, seconds, errors = long
    return AgentLevel(
        agents=agents,
        http=http,
        alone=alone,
        beside=beside,
        alone_vs_http=ratios(alone, http),
        beside_vs_alone=ratios(beside, alone),
        p95_first_audio_alone_vs_http=_ratio(alone.first_audio_s.p95, http.first_audio_s.p95),
        p95_first_audio_beside_vs_alone=_ratio(beside.first_audio_s.p95, alone.first_audio_s.p95),
        long_tasks=tasks,
        long_segments=segments,
        long_audio_seconds=seconds,
        long_errors=errors,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def _num(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"


_ROWS: tuple[tuple[str, str, bool, str | None], ...] = (
    # label, figure in Summary, shown in ms, ratio in Ratios
    ("completed", "completed", False, None),
    ("errors", "errors", False, None),
    ("lost replies", "lost", False, None),
    ("not sent", "not_sent", False, None),
    ("connection errors", "connection_errors", False, None),
    ("throughput (req/s)", "throughput_rps", False, "throughput"),
    ("latency p50 (ms)", "latency_s.p50", True, "p50_latency"),
    ("latency p95 (ms)", "latency_s.p95", True, "p95_latency"),
    ("latency p99 (ms)", "latency_s.p99", True, "p99_latency"),
    ("first audio p50 (ms)", "first_audio_s.p50", True, "p50_first_audio"),
    ("first audio p95 (ms)", "first_audio_s.p95", True, None),
    ("first audio p99 (ms)", "first_audio_s.p99", True, None),
    ("queue wait p50 (ms)", "queue_wait_s.p50", True, None),
    ("queue depth peak", "queue_depth_peak", False, None),
    ("audio s / request", "audio_seconds_per_request", False, None),
    ("binaries / request", "binaries_per_request", False, None),
    ("RTF (wall / audio)", "rtf", False, None),
    ("service RTF p50", "service_rtf_p50", False, None),
    ("idle opened", "idle_opened", False, None),
    ("idle dropped", "idle_dropped", False, None),
    ("peak RSS (MiB)", "peak_rss_mib", False, None),
    ("elapsed (s)", "elapsed_s", False, None),
)


def render(report: Report) -> str:
    """The report as an aligned table: server, floor, and server/floor."""
    server, floor, ratio = report.server, report.floor, report.ratios

    def cell(summary: Summary | None, figure: str, in_ms: bool) -> str:
        if summary is None:
            return ""
        value = _lookup(summary, figure)
        return _ms(value) if in_ms else _num(value)

    table = [("", "server", "floor" if floor else "", "server/floor" if ratio else "")]
    for label, figure, in_ms, ratio_name in _ROWS:
        if figure.startswith("idle_") and not server.idle_requested:
            continue
        ratio_value = getattr(ratio, ratio_name) if ratio and ratio_name else None
        shown = "" if ratio_value is None else f"{ratio_value:.2f}x"
        table.append((label, cell(server, figure, in_ms), cell(floor, figure, in_ms), shown))
    lines = _align(table)
    settings = report.settings
    plural = "" if settings.connections == 1 else "s"
    idle = f" (+{settings.idle} idle)" if settings.idle else ""
    title = f"{settings.requests} requests on {settings.connections} connection{plural}{idle}, {server.url}"
    notes = [
        f"  ! {summary.target}: {message} (x{count})"
        for summary in (server, floor, report.http, report.wyoming, report.wyoming_streamed)
        if summary is not None
        for message, count in [*summary.error_messages.items(), *summary.connection_error_messages.items()]
    ]
    others = [
        *_against_websocket(report, report.http, report.http_ratios, "http", "HTTP"),
        *_against_websocket(report, report.wyoming, report.wyoming_ratios, "wyoming", "Wyoming, whole"),
        *_against_websocket(
            report, report.wyoming_streamed, report.wyoming_streamed_ratios, "streamed", "Wyoming, streamed"
        ),
    ]
    notes += [
        f"  ! {summary.target}: {message} (x{count})"
        for level in report.agents or []
        for summary in (level.http, level.alone, level.beside)
        for message, count in [*summary.error_messages.items(), *summary.connection_error_messages.items()]
    ]
    return "\n".join([title, *lines, *others, *_scaling_table(report), *_agents_table(report), *notes])


_HTTP_ROWS: Final = (
    ("completed", "completed", False, None),
    ("errors", "errors", False, None),
    ("throughput (req/s)", "throughput_rps", False, "throughput"),
    ("latency p50 (ms)", "latency_s.p50", True, "p50_latency"),
    ("latency p95 (ms)", "latency_s.p95", True, "p95_latency"),
    ("latency p99 (ms)", "latency_s.p99", True, "p99_latency"),
    ("first audio p50 (ms)", "first_audio_s.p50", True, "p50_first_audio"),
    ("audio s / request", "audio_seconds_per_request", False, None),
)


def _against_websocket(
    report: Report, other: Summary | None, ratio: Ratios | None, name: str, title: str
) -> list[str]:
    """With ``--http`` or ``--wyoming``: the WebSocket and another path of the same server, side by side."""
    if other is None:
        return []
    table = [("", "websocket", name, f"{name}/websocket")]
    for label, figure, in_ms, ratio_name in _HTTP_ROWS:
        cells = []
        for summary in (report.server, other):
            value = _lookup(summary, figure)
            cells.append(_ms(value) if in_ms else _num(value))
        ratio_value = getattr(ratio, ratio_name) if ratio and ratio_name else None
        table.append((label, cells[0], cells[1], "" if ratio_value is None else f"{ratio_value:.2f}x"))
    lines = _align(table)
    return ["", f"the same load over {title} ({other.url}):", *lines]


def _align(table: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in table
    ]


def _scaling_table(report: Report) -> list[str]:
    """With ``--batch-size N,M,…``: each batch size's throughput and latency, and their ratios."""
    if not report.scaling:
        return []
    first = report.scaling[0].batch_size
    table = [
        (
            "batch size",
            "completed",
            "errors",
            "tasks/s",
            f"vs {first}",
            "latency p50 (ms)",
            f"vs {first}",
            "latency p95 (ms)",
            "binaries / request",
        )
    ]
    for row in report.scaling:
        summary, ratio = row.summary, row.ratios
        table.append(
            (
                str(row.batch_size),
                str(summary.completed),
                str(summary.errors + summary.lost),
                _num(summary.throughput_rps),
                "-" if ratio.throughput is None else f"{ratio.throughput:.2f}x",
                _ms(summary.latency_s.p50),
                "-" if ratio.p50_latency is None else f"{ratio.p50_latency:.2f}x",
                _ms(summary.latency_s.p95),
                _num(summary.binaries_per_request),
            )
        )
    return ["", "the same load at each --batch-size (one server each, in this order):", *_align(table)]


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _agents_table(report: Report) -> list[str]:
    """With ``--agents``: first audio of each condition at each number of agents, and the ratios."""
    if not report.agents:
        return []
    table = [
        (
            "agents",
            "HTTP p50/p95 (ms)",
            "agents p50/p95 (ms)",
            "agents/HTTP p50/p95",
            "beside long task p50/p95 (ms)",
            "beside/alone p50/p95",
            "sentences ok",
            "long tasks (segments, s/segment)",
        )
    ]
    for level in report.agents:
        cells = [
            f"{_ms(s.first_audio_s.p50)} / {_ms(s.first_audio_s.p95)}"
            for s in (level.http, level.alone, level.beside)
        ]
        done = "/".join(str(s.completed) for s in (level.http, level.alone, level.beside))
        table.append(
            (
                str(level.agents),
                cells[0],
                cells[1],
                f"{_times(level.alone_vs_http.p50_first_audio)} / "
                f"{_times(level.p95_first_audio_alone_vs_http)}",
                cells[2],
                f"{_times(level.beside_vs_alone.p50_first_audio)} / "
                f"{_times(level.p95_first_audio_beside_vs_alone)}",
                done,
                f"{level.long_tasks} ({level.long_segments}, "
                f"{level.long_audio_seconds / max(1, level.long_segments):.1f})",
            )
        )
    return [
        "",
        "voice agents: sentence sent -> first audio (HTTP: first byte; agents: first chunk):",
        *_align(table),
    ]


def _lookup(summary: Summary, path: str) -> float | int | None:
    if path == "peak_rss_mib":
        return None if summary.peak_rss_kib is None else summary.peak_rss_kib / 1024
    value: object = summary
    for part in path.split("."):
        value = getattr(value, part)
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int | float):
        return value
    raise TypeError(f"{path} is not a number")
