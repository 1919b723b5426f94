"""Prometheus metrics for the server, kept in a private registry and rendered for ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of :meth:`Metrics.render`'s output (Prometheus text format 0.0.4)."""

Outcome = Literal["completed", "failed", "cancelled", "refused"]
"""How a task ended, as the ``outcome`` label of ``indextts_tasks_total``."""

FINISHED = ("completed", "failed", "cancelled")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RTF_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class Metrics:
    """The server's counters, gauges and histograms; plain sync methods, safe from any thread."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.connections = Gauge("indextts_connections", "Open WebSocket connections.", registry=r)
        self.queue_depth = Gauge("indextts_queue_depth", "Tasks waiting in the queue.", registry=r)
        self.tasks_total = Counter("indextts_tasks", "Tasks by how they ended.", ["outcome"], registry=r)
        for outcome in get_args(Outcome):
            self.tasks_total.labels(outcome)  # exported as 0 before the first one
        self.task_latency_seconds = Histogram(
            "indextts_task_latency_seconds",
            "Seconds from queued to end, for completed tasks.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.task_queue_wait_seconds = Histogram(
            "indextts_task_queue_wait_seconds",
            "Seconds from queued to start, for tasks that ran.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.task_rtf = Histogram(
            "indextts_task_rtf",
            "Real-time factor of completed tasks: compute seconds per second of audio.",
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.audio_seconds_total = Counter(
            "indextts_audio_seconds", "Seconds of audio delivered to clients.", registry=r
        )
        self.engine_errors_total = Counter(
            "indextts_engine_errors", "Exceptions raised by the engine.", registry=r
        )
        self.unexpected_errors_total = Counter(
            "indextts_unexpected_errors",
            "Exceptions that escaped one connection's tasks (WebSocket or HTTP); that connection was closed.",
            registry=r,
        )

    def set_queue_depth_source(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from ``depth()`` at each scrape, e.g. ``lambda: board.queue_depth``."""
        self.queue_depth.set_function(depth)

    def set_fleet_source(self, fleet: Callable[[], FleetView]) -> None:
        """Cluster mode: export the fleet's queue depth and each worker's activity at each scrape."""
        self.registry.register(_FleetCollector(fleet))

    def connection_opened(self) -> None:
        self.connections.inc()

    def connection_closed(self) -> None:
        self.connections.dec()

    def task_refused(self) -> None:
        """A request was turned away because the queue was full."""
        self.tasks_total.labels("refused").inc()

    def task_finished(
        self,
        outcome: str,
        latency: float,
        queue_wait: float | None = None,
        audio_seconds: float = 0.0,
        compute_seconds: float = 0.0,
    ) -> None:
        """A task reached a final state: ``completed``, ``failed`` or ``cancelled``.

        ``latency`` is queued → final; ``queue_wait`` is queued → running, ``None`` if it never
        ran (cancelled while waiting); ``audio_seconds`` and ``compute_seconds`` (engine wall
        time) count for completed tasks only, which alone feed the latency and RTF histograms.
        """
        if outcome not in FINISHED:
            raise ValueError(f"not a final task outcome: {outcome!r}")
        self.tasks_total.labels(outcome).inc()
        if queue_wait is not None:
            self.task_queue_wait_seconds.observe(max(queue_wait, 0.0))
        if outcome != "completed":
            return
        self.task_latency_seconds.observe(max(latency, 0.0))
        if audio_seconds > 0:
            self.audio_seconds_total.inc(audio_seconds)
            self.task_rtf.observe(max(compute_seconds, 0.0) / audio_seconds)

    def engine_error(self) -> None:
        self.engine_errors_total.inc()

    def unexpected_error(self) -> None:
        """An exception escaped one connection's tasks; the connection was closed, the server went on."""
        self.unexpected_errors_total.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


FleetView = tuple[int, Mapping[str, tuple[bool, str | None, int]]]
"""Fleet queue depth, and per worker: alive, the task it runs (or None), tasks it completed."""


class _FleetCollector(Collector):
    def __init__(self, fleet: Callable[[], FleetView]):
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        depth, workers = self.fleet()
        yield GaugeMetricFamily(
            "indextts_fleet_queue_depth", "Tasks waiting in the fleet's queue (all gateways).", value=depth
        )
        up = GaugeMetricFamily(
            "indextts_fleet_worker_up", "1 while the worker's lease is live.", labels=["worker"]
        )
        busy = GaugeMetricFamily(
            "indextts_fleet_worker_busy", "1 while the worker runs a task.", labels=["worker"]
        )
        done = GaugeMetricFamily(
            "indextts_fleet_worker_completed",
            "Tasks the worker completed since it started.",
            labels=["worker"],
        )
        for name, (alive, task, completed) in sorted(workers.items()):
            up.add_metric([name], 1 if alive else 0)
            busy.add_metric([name], 1 if task else 0)
            done.add_metric([name], completed)
        yield up
        yield busy
        yield done
