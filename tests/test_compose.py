"""compose.yaml: it validates, and its cluster set-up runs the flags the cluster docs and units give."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from indextts_server.core.config import Settings
from indextts_server.io.operations.cli import DESCRIPTION
from indextts_server.io.operations.flags import options, parse

from .conftest import REPO

COMPOSE = REPO / "compose.yaml"
UNITS = REPO / "deploy"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def image_environment(target: str = "full") -> dict[str, str]:
    """The ``INDEXTTS_SERVER_…`` defaults the Dockerfile's ENV lines give ``target`` and its parents."""
    text = (REPO / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stages: dict[str, tuple[str, str]] = {}
    for block in re.split(r"^FROM ", text, flags=re.M)[1:]:
        found = re.match(r"(\S+) AS (\S+)", block)
        assert found, block[:80]
        stages[found.group(2)] = (found.group(1), block)
    environ: dict[str, str] = {}
    while target in stages:
        target, block = stages[target]
        lines = re.findall(r"^ENV (.*)$", block, re.M)
        inherited = dict(re.findall(r"\b(INDEXTTS_SERVER_[A-Z_]+)=(\S+)", " ".join(lines)))
        environ = {**inherited, **environ}
    return environ


def service_settings(service: dict[str, Any]) -> tuple[Settings, set[str]]:
    """What the server in ``service`` runs with, and the flags it sets (by flag or by variable)."""
    environ = {**image_environment(), **{k: str(v) for k, v in (service.get("environment") or {}).items()}}
    command = [str(word) for word in service["command"]]
    by_env = {option.env: option.name for option in options()}
    given = {word for word in command if word.startswith("--")} | {
        by_env[name] for name, value in environ.items() if name in by_env and value
    }
    return parse(command, "indextts-server", DESCRIPTION, environ), given


def unit_flags(unit: str) -> set[str]:
    """The flags a systemd unit's ExecStart gives the server."""
    text = (UNITS / unit).read_text(encoding="utf-8").replace("\\\n", " ")
    found = re.search(r"^ExecStart=(.*)$", text, re.M)
    assert found, unit
    return set(re.findall(r"(--[a-z0-9-]+)", found.group(1)))


@pytest.mark.parametrize("profile", ["server", "cluster", "home-assistant"])
def test_compose_file_validates(profile: str) -> None:
    # Debian's docker-compose checks the file against its schema without any daemon.
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is needed (scripts/test installs Debian's docker-compose package)"
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_cluster_runs_the_units_flags_one_broker_and_a_gpu_per_worker() -> None:
    services = compose()["services"]
    cluster = {name: s for name, s in services.items() if "cluster" in s.get("profiles", ())}
    workers = {name: s for name, s in cluster.items() if name.startswith("worker")}
    assert set(cluster) == {"redis", "gateway", *workers} and len(workers) >= 2

    gateway, flags = service_settings(cluster["gateway"])
    assert gateway.cluster.role == "gateway"
    assert unit_flags("indextts-gateway.service") <= flags
    broker = gateway.cluster.broker
    assert broker is not None and broker.startswith("redis://redis:6379/")

    devices, metrics_ports = [], []
    for name, service in workers.items():
        worker, flags = service_settings(service)
        assert worker.cluster.role == "worker", name
        assert unit_flags("indextts-worker@.service") <= flags, name
        assert (worker.cluster.broker, worker.cluster.lease) == (broker, gateway.cluster.lease), name
        assert worker.engine.devices == ("cuda",), name  # the container sees only its own GPU
        reserved = service["deploy"]["resources"]["reservations"]["devices"]
        assert [(r["driver"], r["capabilities"]) for r in reserved] == [("nvidia", ["gpu"])], name
        devices.extend(reserved[0]["device_ids"])
        metrics_ports.append(worker.ops.metrics_port)
    # Each worker pinned to a GPU of its own; metrics on 9780 + N, as the worker unit has them.
    assert len(set(devices)) == len(devices) == len(workers)
    assert metrics_ports == [9780 + int(device) for device in devices]


def test_health_checks_restarts_and_stop_grace_keep_a_broker_restart_harmless() -> None:
    services = compose()["services"]
    redis = services["redis"]
    command = [str(word) for word in redis["command"]]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--save") + 1] == "" and command[command.index("--appendonly") + 1] == "no"
    for name, service in services.items():
        assert service["restart"] in ("always", "unless-stopped"), name
        assert service["healthcheck"]["test"][0] == "CMD", name
        if name == "redis":
            continue
        assert service["healthcheck"]["test"][1:] == [
            "python",
            "-m",
            "indextts_server.io.operations.healthcheck",
        ]
        settings, _ = service_settings(service)
        grace = float(service["stop_grace_period"].rstrip("s"))
        assert grace > settings.server.drain_timeout, name
        if "cluster" in service["profiles"]:
            assert service["depends_on"]["redis"] == {"condition": "service_healthy"}, name


def test_the_single_server_has_a_gpu_its_volumes_and_both_ports() -> None:
    server = compose()["services"]["server"]
    settings, _ = service_settings(server)
    assert settings.cluster.broker is None and settings.engine.download
    assert settings.engine.model_dir.startswith("/models/") and settings.server.voices_dir == "/voices"
    assert sorted(server["volumes"]) == ["models:/models", "voices:/voices"]
    assert sorted(server["ports"]) == ["8770:8770", "8771:8771"]
    reserved = server["deploy"]["resources"]["reservations"]["devices"]
    assert reserved == [{"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["0"]}]


def test_the_home_assistant_server_serves_wyoming_on_10200_and_announces_it() -> None:
    server = compose()["services"]["home-assistant"]
    settings, _ = service_settings(server)
    assert (settings.ops.wyoming_port, settings.ops.wyoming_zeroconf) == (10200, True)
    assert settings.cluster.broker is None and settings.engine.download
    assert server["network_mode"] == "host"  # multicast DNS reaches the LAN


def test_the_dockerfiles_defaults_are_flags_the_server_has() -> None:
    environ = image_environment()
    known = {option.env for option in options()}
    assert set(environ) <= known, set(environ) - known
    settings = parse([], "indextts-server", DESCRIPTION, environ)
    assert settings.engine.cfg_path == str(Path(settings.engine.model_dir) / "config.yaml")
