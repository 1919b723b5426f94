"""Torch's CPU threads: as many as the process may really use, chosen before torch is imported.

torch sizes its OpenMP teams (intra-op threads) by the CPUs it sees, which in a container or
under systemd's ``CPUQuota=`` is the host's CPU count, not the share the process is given: a
2-CPU quota on a 64-core host would run 64-thread teams, time-sliced on two CPUs' worth of
time. The server therefore sets ``OMP_NUM_THREADS`` (and ``MKL_NUM_THREADS``) from the affinity
mask and the cgroup's CPU quota, split between the engines that run on the CPU, unless the
operator has set them. OpenMP reads them once, when torch loads, so this runs first.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Final, NamedTuple

THREAD_VARS: Final = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Set together; an operator's ``OMP_NUM_THREADS`` wins and is copied to the other where unset."""


class ThreadChoice(NamedTuple):
    threads: int
    reason: str  # for the start-up log line


def _quota_v2(text: str) -> float | None:
    """``cpu.max``: ``"max 100000"`` (no limit) or ``"<quota> <period>"`` in microseconds."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"), proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup (or the tightest of its ancestors), in CPUs; None if none.

    cgroup v2: ``cpu.max`` along the path ``/proc/self/cgroup`` names (inside a container with its
    own cgroup namespace that path is ``/``). cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    limits: list[float] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = Path(path.lstrip("/"))
        if hierarchy == "0" and controllers == "":  # v2
            for folder in (relative, *relative.parents):
                text = _read(root / folder / "cpu.max")
                limit = None if text is None else _quota_v2(text)
                if limit is not None:
                    limits.append(limit)
        elif "cpu" in controllers.split(","):  # v1
            for base in (root / "cpu" / relative, root / "cpu"):
                quota, period = _read(base / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
                if quota is not None and period is not None:
                    if int(quota) > 0 and int(period) > 0:
                        limits.append(int(quota) / int(period))
                    break
    return min(limits) if limits else None


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def choose_threads(cpu_engines: int, affinity: int, limit: float | None) -> ThreadChoice:
    """Intra-op threads per engine: the usable CPUs (the quota rounded up, at most the affinity
    mask), shared out between the engines that run on the CPU; at least one."""
    usable = affinity if limit is None else max(1, min(affinity, math.ceil(limit)))
    threads = max(1, usable // max(1, cpu_engines))
    quota = "" if limit is None else f", cgroup quota {limit:g} CPUs"
    where = f"{affinity} CPUs in the affinity mask{quota}"
    share = "" if cpu_engines <= 1 else f", shared by {cpu_engines} CPU engines"
    return ThreadChoice(threads, where + share)


def set_torch_threads(cpu_engines: int, environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``THREAD_VARS`` in ``environ`` unless the operator did; returns the line to log."""
    given = environ.get("OMP_NUM_THREADS")
    if given:
        for name in THREAD_VARS:
            environ.setdefault(name, given)
        return f"torch CPU threads: OMP_NUM_THREADS={given} (set by the operator)"
    choice = choose_threads(cpu_engines, affinity_cpus(), cgroup_cpu_limit())
    for name in THREAD_VARS:
        environ.setdefault(name, str(choice.threads))
    return (
        f"torch CPU threads: {choice.threads} per engine ({choice.reason}); "
        "set OMP_NUM_THREADS to choose otherwise"
    )


def cpu_engine_count(kind: str, devices: tuple[str, ...]) -> int:
    """How many engines will run torch on the CPU (``auto`` counts: without CUDA it is the CPU)."""
    if kind == "tone":
        return 0
    return sum(device in ("cpu", "auto") for device in devices)
