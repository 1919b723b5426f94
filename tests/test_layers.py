"""The package's layers: which parts may import which (read from the source, no module imported)."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "indextts_server"

RULES: list[tuple[str, tuple[str, ...]]] = [
    # (modules under this prefix, may not import anything under these)
    ("indextts_server.core", ("trio", "torch", "indextts_server.io", "hypercorn", "trio_websocket")),
    ("indextts_server.io.scheduling", ("indextts_server.io.transport", "indextts_server.io.http")),
    ("indextts_server.io.scheduling", ("indextts_server.io.service",)),
    ("indextts_server.io.service", ("indextts_server.io.transport", "indextts_server.io.http")),
    # The WebSocket transport, the HTTP one (its server and its application) and Wyoming's know only
    # the service.
    (
        "indextts_server.io.transport.websocket",
        ("indextts_server.io.http", "indextts_server.io.transport.http"),
    ),
    (
        "indextts_server.io.transport.http",
        ("indextts_server.io.http", "indextts_server.io.transport.websocket"),
    ),
    (
        "indextts_server.io.http",
        ("indextts_server.io.transport.websocket", "indextts_server.io.transport.wyoming"),
    ),
    (
        "indextts_server.io.transport.wyoming",
        (
            "indextts_server.io.http",
            "indextts_server.io.transport.websocket",
            "indextts_server.io.transport.http",
        ),
    ),
]


def module_name(path: Path, repo: Path) -> str:
    parts = path.relative_to(repo).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` (module ``name``) imports, as an absolute dotted name (``from x import
    y`` counts x.y too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(package: Path) -> list[str]:
    """``module imports forbidden`` for every import under ``package`` that breaks a rule in `RULES`."""
    broken = []
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, package.parent)
        for prefix, forbidden in RULES:
            if name != prefix and not name.startswith(prefix + "."):
                continue
            for imported in sorted(imports(path, name)):
                for banned in forbidden:
                    if imported == banned or imported.startswith(banned + "."):
                        broken.append(f"{name} imports {imported}")
    return sorted(set(broken))


def test_no_transport_imports_another_and_scheduling_and_the_service_import_none() -> None:
    assert violations(PACKAGE) == []


def test_the_check_catches_a_transport_importing_another_and_scheduling_importing_the_service(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "indextts_server"
    speech = copy / "io" / "http" / "speech.py"
    speech.parent.mkdir(parents=True)
    source = (PACKAGE / "io" / "http" / "speech.py").read_text(encoding="utf-8")
    speech.write_text(source + "\nfrom ..transport.websocket import WebSocketTransport\n", encoding="utf-8")
    board = copy / "io" / "scheduling" / "board.py"
    board.parent.mkdir(parents=True)
    board.write_text("from ..service.session import Session\n", encoding="utf-8")
    assert violations(copy) == [
        "indextts_server.io.http.speech imports indextts_server.io.transport.websocket",
        "indextts_server.io.http.speech imports indextts_server.io.transport.websocket.WebSocketTransport",
        "indextts_server.io.scheduling.board imports indextts_server.io.service.session",
        "indextts_server.io.scheduling.board imports indextts_server.io.service.session.Session",
    ]
