"""The container image for real: the light target built the daemonless way, run, and driven from the host.

There is no Docker daemon or registry here, so (as ``docs/container.md`` describes): a Debian
bookworm made with ``debootstrap`` (python3 included) stands in for ``python:3.11-slim-bookworm``,
``podman build --isolation chroot`` builds the repository's ``Dockerfile`` from a wheel folder (no
package index inside the build), and ``buildah run --isolation chroot`` runs the image's entrypoint
with the image's user, working directory and environment, on the host's network. ``scripts/test``
installs podman, buildah and debootstrap from Debian. The base is cached (a tarball under
``~/.cache/indextts-server``, and the imported image, both keyed by what they hold), as are the
dependencies' wheels (keyed by ``pyproject.toml``): after the first run only the project's wheel
and the image are built again. The image's HEALTHCHECK command is also tested on the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import soundfile
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from indextts_server.core.texts import SHUTTING_DOWN
from indextts_server.io.operations.cli import DESCRIPTION
from indextts_server.io.operations.flags import parse
from indextts_server.io.operations.healthcheck import health_url, server_flags
from indextts_server.io.operations.healthcheck import main as healthcheck

from .conftest import REPO, CliServer, tts
from .test_contract_clients import assert_contract_python_client_runs

pytestmark = pytest.mark.timeout(900)

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
"""What ``python:3.11-slim-bookworm`` has that a minimal Debian lacks (bookworm's python3 is 3.11)."""
BASE_KEY = hashlib.sha256(f"{SUITE} minbase {' '.join(BASE_PACKAGES)} {MIRROR}".encode()).hexdigest()[:12]
BASE_IMAGE = f"localhost/indextts-test-python:{SUITE}-{BASE_KEY}"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "indextts-server"
USER_ID = 10001
"""The Dockerfile's ``indextts`` user."""


def run(*command: str, timeout: float = 600) -> str:
    """Run ``command``; its stdout, or a failure that shows what it said."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def tools() -> None:
    # Not skipped without them: scripts/test installs them, and a missing one fails here.
    missing = [tool for tool in ("podman", "buildah", "debootstrap") if shutil.which(tool) is None]
    assert not missing, f"{missing} needed (scripts/test installs Debian's podman, buildah, debootstrap)"


@pytest.fixture(scope="module")
def base_image(tools: None) -> str:
    """The stand-in Python base, imported into podman's storage: debootstrap once, then cached."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode == 0:
        return BASE_IMAGE
    tarball = CACHE / f"container-base-{SUITE}-{BASE_KEY}.tar"
    if not tarball.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        root = CACHE / f"container-base-{BASE_KEY}.{os.getpid()}"
        try:
            run(
                "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                SUITE, str(root), MIRROR,
            )  # fmt: skip
            partial = tarball.with_suffix(f".{os.getpid()}.partial")
            run("tar", "-C", str(root), "-cf", str(partial), ".")
            partial.rename(tarball)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    run("podman", "import", str(tarball), BASE_IMAGE)
    return BASE_IMAGE


@pytest.fixture(scope="module")
def base_python(base_image: str) -> str:
    """The stand-in base's Python version (bookworm's 3.11.2, where this machine may have 3.11.7)."""
    container = run("buildah", "from", base_image).strip()
    try:
        version = run("buildah", "run", "--isolation", "chroot", container, "--", "python3", "--version")
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    return version.split()[1]


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build context: what a fresh clone of this checkout holds (tracked and new files)."""
    folder = tmp_path_factory.mktemp("context")
    listed = run("git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def dependency_wheels(context: Path, base_python: str) -> Path:
    """Wheels of every dependency of ``.[cluster,zeroconf]`` for the base's Python, built once per ``pyproject.toml``."""
    key = hashlib.sha256((context / "pyproject.toml").read_bytes() + base_python.encode()).hexdigest()[:12]
    folder = CACHE / f"container-wheels-{key}"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        run(
            sys.executable, "-m", "pip", "wheel", "--quiet", f"{context}[cluster,zeroconf]", "-w", str(folder)
        )
        # pip resolves markers for this interpreter only: add what the base's Python also needs.
        if wanted := missing_for(folder, base_python):
            run(sys.executable, "-m", "pip", "wheel", "--quiet", *wanted, "-w", str(folder))
        for own in folder.glob("indextts_server-*.whl"):
            own.unlink()  # built fresh for each image
        (folder / ".complete").touch()
    return folder


def missing_for(folder: Path, python_full_version: str) -> list[str]:
    """Requirements of the wheels in ``folder`` that hold for ``python_full_version`` and no wheel meets."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    environment: dict[str, str] = {
        **{name: str(value) for name, value in default_environment().items()},
        "python_full_version": python_full_version,
        "python_version": ".".join(python_full_version.split(".")[:2]),
    }
    wheels = list(folder.glob("*.whl"))
    present = {canonicalize_name(parse_wheel_filename(wheel.name)[0]) for wheel in wheels}
    missing: list[str] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
            lines = archive.read(metadata).decode("utf-8").splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            applies = requirement.marker is None or any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in ("", "cluster")
            )
            if applies and canonicalize_name(requirement.name) not in present:
                missing.append(str(requirement).split(";")[0])
    return sorted(set(missing))


@pytest.fixture(scope="module")
def light_image(base_image: str, context: Path, dependency_wheels: Path) -> Iterator[str]:
    """The Dockerfile's ``light`` target, built from the context and a wheel folder in it."""
    wheels = context / "wheels"
    shutil.copytree(dependency_wheels, wheels, ignore=shutil.ignore_patterns(".complete"))
    # This checkout's own wheel, always fresh.
    run(
        sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        str(context), "-w", str(wheels),
    )  # fmt: skip
    shutil.rmtree(context / "build", ignore_errors=True)
    tag = f"localhost/indextts-server-test:light-{os.getpid()}"
    run(
        "podman", "build", "--isolation", "chroot", "--format", "docker", "--layers=false",
        "--build-arg", f"BASE={base_image}", "--build-arg", "WHEELS=wheels",
        "--target", "light", "-t", tag, str(context),
    )  # fmt: skip
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "--force", tag], capture_output=True)


def image_config(image: str) -> dict[str, Any]:
    """The image's run configuration, its health check included (podman shows that one apart)."""
    inspected = json.loads(run("podman", "image", "inspect", image))[0]
    config: dict[str, Any] = dict(inspected["Config"])
    if "Healthcheck" in inspected:
        config["Healthcheck"] = inspected["Healthcheck"]
    return config


class Container:
    """``buildah run`` of the image's entrypoint: a server on the host's loopback, and its log."""

    def __init__(self, image: str, flags: Sequence[str] = ()) -> None:
        self.image = image
        self.port, self.http_port = free_port(), free_port()
        # Configured through the environment, as `docker run -e …` would; loopback only.
        self.env = {
            "INDEXTTS_SERVER_HOST": "127.0.0.1",
            "INDEXTTS_SERVER_PORT": str(self.port),
            "INDEXTTS_SERVER_HTTP_PORT": str(self.http_port),
        }
        self.name = run("buildah", "from", image).strip()
        config = image_config(image)
        command = [*(config.get("Entrypoint") or ()), *(config.get("Cmd") or ()), *flags]
        self.log: list[str] = []
        self.process = subprocess.Popen(
            ["buildah", "run", "--isolation", "chroot", *self._env_flags(), self.name, "--", *command],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self._wait_until_serving()
            self.pid = self._server_pid()
        except BaseException:
            self.process.kill()
            subprocess.run(["buildah", "rm", self.name], capture_output=True)
            raise

    def _wait_until_serving(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if "http on http://" in line:
                break
        else:
            raise AssertionError(f"the container exited ({self.process.wait()}) before serving:\n{self.text}")
        # The rest of the log is read by a thread, so that the pipe never fills.
        threading.Thread(target=self.log.extend, args=(self.process.stderr,), daemon=True).start()

    def _env_flags(self) -> list[str]:
        return [flag for name, value in self.env.items() for flag in ("--env", f"{name}={value}")]

    @property
    def text(self) -> str:
        return "".join(self.log)

    def _server_pid(self) -> int:
        """The server's process among ``buildah run``'s descendants (no PID namespace with chroot)."""
        parents: dict[int, int] = {}
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                found = re.search(r"^PPid:\s+(\d+)", status.read_text(), re.M)
            except OSError:
                continue
            if found:
                parents[int(status.parent.name)] = int(found.group(1))

        def descends(pid: int) -> bool:
            while pid > 1:
                if pid == self.process.pid:
                    return True
                pid = parents.get(pid, 0)
            return False

        # buildah's own helper processes carry the command line too: the server is the innermost.
        named = set()
        for pid in parents:
            if pid != self.process.pid and descends(pid):
                try:
                    if b"indextts-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        named.add(pid)
                except OSError:
                    continue
        innermost = [pid for pid in named if not any(parents.get(other) == pid for other in named)]
        assert len(innermost) == 1, f"server processes under buildah run: {sorted(named)}"
        return innermost[0]

    def ids(self) -> tuple[set[int], set[int]]:
        """The server process's uids and gids (real, effective, saved, filesystem), from the host."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M)
        assert uids and gids
        return {int(x) for x in uids.group(1).split()}, {int(x) for x in gids.group(1).split()}

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """``command`` in the same container (its filesystem, user and environment), as a health check runs."""
        return subprocess.run(
            ["buildah", "run", "--isolation", "chroot", *self._env_flags(), self.name, "--", *command],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the server, as ``docker stop`` sends it; the exit status of ``buildah run``."""
        try:
            if self.process.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
            return self.process.wait(timeout=timeout)
        finally:
            self.process.kill()
            subprocess.run(["buildah", "rm", self.name], capture_output=True)


@pytest.fixture(scope="module")
def container(light_image: str) -> Iterator[Container]:
    served = Container(light_image)
    try:
        yield served
    finally:
        served.stop()


def test_the_image_declares_its_ports_volumes_user_health_check_and_entrypoint(light_image: str) -> None:
    config = image_config(light_image)
    assert set(config["ExposedPorts"]) == {"8770/tcp", "8771/tcp"}
    assert set(config["Volumes"]) == {"/models", "/voices"}
    assert config["User"] == "indextts"
    assert config["Entrypoint"] == ["indextts-server"]
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"]["Test"] == [
        "CMD",
        "python",
        "-m",
        "indextts_server.io.operations.healthcheck",
    ]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HOME"] == "/models/huggingface" and env["INDEXTTS_SERVER_ENGINE"] == "tone"
    assert env["XDG_CACHE_HOME"] == "/models/cache"  # IndexTTS-2.5's grammar cache outlives a container
    assert env["INDEXTTS_SERVER_MODEL_DIR"] == "/models/IndexTTS-2"
    assert env["INDEXTTS_SERVER_VOICES_DIR"] == "/voices"


def test_the_server_runs_as_the_images_non_root_user(container: Container) -> None:
    uids, gids = container.ids()
    assert uids == {USER_ID} and gids == {USER_ID}
    writable = container.exec(
        "sh", "-c", "touch /models/probe /voices/probe /models/huggingface/probe /models/cache/probe && id -u"
    )
    assert writable.returncode == 0, writable.stderr
    assert writable.stdout.strip() == str(USER_ID)


def test_the_contracts_python_client_runs_unchanged_against_the_container(
    container: Container, tmp_path: Path
) -> None:
    assert_contract_python_client_runs(container.port, tmp_path)


def test_openai_speech_from_the_host(container: Container, tmp_path: Path) -> None:
    import httpx

    response = httpx.post(
        f"http://127.0.0.1:{container.http_port}/v1/audio/speech",
        json={"model": "indextts2", "voice": "alloy", "input": "你好，容器。", "response_format": "wav"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/wav")
    (tmp_path / "speech.wav").write_bytes(response.content)
    audio, rate = soundfile.read(tmp_path / "speech.wav")
    assert rate > 0 and len(audio) > rate // 2


def test_the_images_health_check_passes_while_serving(container: Container, light_image: str) -> None:
    test = image_config(light_image)["Healthcheck"]["Test"]
    result = container.exec(*test[1:])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"http://127.0.0.1:{container.http_port}/healthz: 200"


def test_sigterm_drains_the_running_task_cancels_the_waiting_one_and_exits_0(light_image: str) -> None:
    # Each task spends about two seconds of wall time, so the first is running when SIGTERM comes.
    served = Container(light_image, ["--tone-rtf", "0.5"])
    try:
        messages: list[Any] = []
        with connect(f"ws://127.0.0.1:{served.port}", max_size=None) as ws:
            json.loads(ws.recv())  # welcome
            ws.send(json.dumps(tts(), ensure_ascii=False))
            ws.send(json.dumps(tts("第二句，排在后面。"), ensure_ascii=False))
            while not any(isinstance(m, dict) and m.get("type") == "start" for m in messages):
                messages.append(_decoded(ws.recv(timeout=30)))
            began = time.monotonic()
            os.kill(served.pid, signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    messages.append(_decoded(ws.recv(timeout=60)))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, served.text
        assert served.process.wait(timeout=60) == 0, served.text
        assert time.monotonic() - began < 30  # the drain did not wait out --drain-timeout
    finally:
        served.stop()
    kinds = [m if isinstance(m, bytes) else m.get("type") or m.get("status") for m in messages]
    audio = [m for m in messages if isinstance(m, bytes)]
    assert kinds.count("end") == 1 and len(audio) == 1 and len(audio[0]) > 10_000
    errors = [m for m in messages if isinstance(m, dict) and m.get("status") == "error"]
    assert [error["message"] for error in errors] == [SHUTTING_DOWN]
    assert "SIGTERM received; draining" in served.text


def _decoded(message: str | bytes) -> Any:
    return message if isinstance(message, bytes) else json.loads(message)


# --- the image's HEALTHCHECK command, on the host ---------------------------------------------


def test_the_health_check_finds_the_servers_flags_in_its_command_line() -> None:
    script = b"/opt/venv/bin/python\0/opt/venv/bin/indextts-server\0--http-port\x009000\0"
    assert server_flags(script) == ["--http-port", "9000"]
    assert server_flags(b"python\0-m\0indextts_server\0--role\0worker\0") == ["--role", "worker"]
    assert server_flags(b"/sbin/init\0splash\0") is None


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        ([], "http://127.0.0.1:8771/healthz"),
        (["--metrics-port", "9780"], "http://127.0.0.1:9780/healthz"),
        (["--host", "::", "--http-port", "9"], "http://[::1]:9/healthz"),
        (["--host", "10.0.0.7", "--http-host", "127.0.0.2"], "http://127.0.0.2:8771/healthz"),
        (
            ["--role", "worker", "--broker", "redis://r:6379/0"],
            None,
        ),  # a worker serves HTTP only on --metrics-port
        (["--http-port", "off"], None),
    ],
)
def test_the_health_check_probes_the_metrics_port_else_the_http_port_on_loopback(
    argv: list[str], url: str | None
) -> None:
    assert health_url(parse(argv, "indextts-server", DESCRIPTION, {})) == url


def test_the_health_check_passes_against_a_serving_server_and_fails_without_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = CliServer(["--engine", "tone", "--port", "0"])
    try:
        assert healthcheck(["--http-port", str(server.http_port)]) == 0
        assert capsys.readouterr().out == f"http://127.0.0.1:{server.http_port}/healthz: 200\n"
    finally:
        assert server.stop() == 0
    assert healthcheck(["--http-port", str(server.http_port)]) == 1
    assert f"127.0.0.1:{server.http_port}/healthz" in capsys.readouterr().err
    assert healthcheck(["--http-port", "off"]) == 1
    assert "--metrics-port" in capsys.readouterr().err
