"""Torch's CPU threads are sized from the CPUs the process may really use, unless the operator chose."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from indextts_server.io.operations import cpus
from indextts_server.io.operations.cpus import (
    cgroup_cpu_limit,
    choose_threads,
    cpu_engine_count,
    set_torch_threads,
)

from .conftest import CliServer


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_quota_on_the_service_or_any_parent_is_read_in_cpus(tmp_path: Path) -> None:
    _write(tmp_path / "system.slice" / "cpu.max", "400000 100000\n")
    _write(tmp_path / "system.slice" / "indextts.service" / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/system.slice/indextts.service\n") == 1.5
    _write(tmp_path / "system.slice" / "indextts.service" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/system.slice/indextts.service\n") == 4.0


def test_no_quota_anywhere_is_no_limit(tmp_path: Path) -> None:
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(tmp_path, "0::/\n") is None
    assert cgroup_cpu_limit(tmp_path / "absent", "0::/\n") is None


def test_a_cgroup_v1_quota_is_read_and_minus_one_means_none(tmp_path: Path) -> None:
    _write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    _write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(tmp_path, "2:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n") == 2.0
    _write(tmp_path / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(tmp_path, "2:cpu,cpuacct:/docker/abc\n") is None


@pytest.mark.parametrize(
    ("engines", "affinity", "limit", "threads"),
    [
        (1, 64, 2.0, 2),  # a 2-CPU container on a 64-core host: 2, not 64
        (1, 64, 1.5, 2),  # a fractional quota rounds up
        (1, 2, None, 2),  # no quota: the affinity mask
        (1, 4, 16.0, 4),  # a quota above the mask: the mask
        (2, 8, None, 4),  # two CPU engines share the CPUs
        (3, 2, None, 1),  # never below one
        (0, 8, 4.0, 4),  # GPU engines: their CPU-side work gets the usable CPUs
    ],
)
def test_threads_per_engine(engines: int, affinity: int, limit: float | None, threads: int) -> None:
    assert choose_threads(engines, affinity, limit).threads == threads


def test_the_operators_omp_num_threads_wins_and_is_copied_to_mkl() -> None:
    environ = {"OMP_NUM_THREADS": "3"}
    line = set_torch_threads(1, environ)
    assert environ == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert "OMP_NUM_THREADS=3 (set by the operator)" in line


def test_unset_variables_are_set_from_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpus, "affinity_cpus", lambda: 16)
    monkeypatch.setattr(cpus, "cgroup_cpu_limit", lambda: 3.0)
    environ: dict[str, str] = {"MKL_NUM_THREADS": "1"}
    line = set_torch_threads(1, environ)
    assert environ == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "1"}
    assert "3 per engine (16 CPUs in the affinity mask, cgroup quota 3 CPUs)" in line


def test_engines_on_the_cpu_are_counted_per_device() -> None:
    assert cpu_engine_count("indextts2", ("cpu", "cpu")) == 2
    assert cpu_engine_count("indextts2", ("cuda:0", "cuda:1")) == 0
    assert cpu_engine_count("tone", ("cpu",)) == 0


def test_the_tone_engine_loads_no_torch_and_logs_no_torch_threads() -> None:
    env = {key: value for key, value in os.environ.items() if key not in cpus.THREAD_VARS}
    server = CliServer(["--engine", "tone", "--port", "0"], env=env)
    try:
        text = server.text
    finally:
        server.stop(timeout=30)
    assert "listening on ws://" in text
    assert "torch CPU threads" not in text
