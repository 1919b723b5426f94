"""The optional figure: latency histogram and CDFs, and the queue depth over time (needs matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..drive.load import LoadResult
from .report import queue_depth


class PlotUnavailable(Exception):
    """matplotlib is not installed; the rest of the benchmark does not need it."""


def save_plot(path: Path, results: Mapping[str, LoadResult]) -> None:
    """Draw every target in ``results`` (label -> run) into one PNG at ``path``."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        from matplotlib import pyplot  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib: pip install matplotlib") from None

    fig, (hist, cdf, depth) = pyplot.subplots(3, 1, figsize=(9, 11))
    for label, result in results.items():
        done = [r for r in result.records if r.completed and r.end is not None]
        latency = np.array([(r.end - r.sent) * 1000 for r in done if r.end is not None])
        first = np.array([(r.first_audio - r.sent) * 1000 for r in done if r.first_audio is not None])
        if latency.size:
            hist.hist(latency, bins=60, alpha=0.5, label=label)
            cdf.plot(np.sort(latency), np.linspace(0, 1, latency.size), label=f"{label} latency")
        if first.size:
            cdf.plot(
                np.sort(first), np.linspace(0, 1, first.size), linestyle="--", label=f"{label} first audio"
            )
        times, depths = queue_depth(result.records)
        depth.step(times, depths, where="post", label=label)
    hist.set(title="latency", xlabel="ms", ylabel="requests")
    cdf.set(title="latency and time to first audio (CDF)", xlabel="ms", ylabel="fraction", xscale="log")
    depth.set(title="queue depth (tasks waiting)", xlabel="s since the clock started", ylabel="tasks")
    for axes in (hist, cdf, depth):
        axes.legend()
        axes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
