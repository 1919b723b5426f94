"""The documentation keeps up: its links and anchors resolve, and every flag is on the command-line page."""

from __future__ import annotations

import re
import shutil
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from indextts_server.io.operations.cli import DESCRIPTION
from indextts_server.io.operations.flags import parser

from .conftest import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")


def pages(root: Path) -> list[Path]:
    """The Markdown a reader follows links through: the README, docs/, and the benchmark's."""
    found = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [path for path in [*found, root / "bench" / "README.md"] if path.is_file()]


def prose(path: Path) -> Iterator[str]:
    """The lines of ``path`` outside fenced code blocks."""
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path):
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match is None:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(root: Path) -> list[str]:
    """``page: target`` for every relative link whose file or ``#anchor`` does not exist."""
    broken = []
    for page in pages(root):
        for line in prose(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue  # http:, https:, mailto:
                path_part, _, anchor = target.partition("#")
                resolved = (page.parent / path_part).resolve() if path_part else page
                if not resolved.exists():
                    broken.append(f"{page.relative_to(root)}: {target}")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    broken.append(f"{page.relative_to(root)}: {target}")
    return broken


def undocumented_flags(page: Path) -> list[str]:
    """Every flag ``indextts-server --help`` prints that ``page`` does not name."""
    printed = set(FLAG.findall(parser("indextts-server", DESCRIPTION).format_help())) - {"--help"}
    documented = {flag for line in prose(page) for flag in FLAG.findall(line)}
    return sorted(printed - documented)


def test_every_relative_link_and_anchor_resolves() -> None:
    assert broken_links(REPO) == []


def test_every_flag_help_prints_is_on_the_command_line_page() -> None:
    assert undocumented_flags(REPO / "docs" / "command-line.md") == []


def test_the_readme_stays_a_front_door() -> None:
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


def test_anchors_follow_githubs_rule() -> None:
    assert slug("9. Cluster mode on Redis") == "9-cluster-mode-on-redis"
    assert slug("The `tone` engine") == "the-tone-engine"
    assert slug("Cluster mode: one queue across machines") == "cluster-mode-one-queue-across-machines"
    assert slug("错误与消息") == "错误与消息"


def copy_of_the_docs(tmp_path: Path) -> Path:
    """A scratch tree a test may break: the README and docs/ copied, everything else linked."""
    for entry in REPO.iterdir():
        if entry.name == ".git":
            continue
        if entry.name in ("README.md", "docs"):
            copy = shutil.copytree if entry.is_dir() else shutil.copy
            copy(entry, tmp_path / entry.name)
        else:
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def test_a_broken_link_or_a_missing_anchor_is_caught(tmp_path: Path) -> None:
    copy = copy_of_the_docs(tmp_path)
    assert broken_links(copy) == []
    readme = copy / "README.md"
    text = readme.read_text(encoding="utf-8")
    text = text.replace("(docs/cluster.md)", "(docs/clusters.md)", 1)
    text = text.replace("(docs/clients.md#the-demo-page)", "(docs/clients.md#the-demo-pages)", 1)
    readme.write_text(text, encoding="utf-8")
    assert sorted(broken_links(copy)) == [
        "README.md: docs/clients.md#the-demo-pages",
        "README.md: docs/clusters.md",
    ]


def test_an_undocumented_flag_is_caught(tmp_path: Path) -> None:
    page = copy_of_the_docs(tmp_path) / "docs" / "command-line.md"
    assert undocumented_flags(page) == []
    rows = page.read_text(encoding="utf-8").splitlines()
    page.write_text("\n".join(row for row in rows if not row.startswith("| `--lease`")), encoding="utf-8")
    assert undocumented_flags(page) == ["--lease"]
