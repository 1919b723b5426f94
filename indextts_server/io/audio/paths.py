"""Audio paths that clients name: resolved, kept inside the allowed roots, and checked to be audio."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import soundfile
import trio

from ...core import texts


class AudioPathError(Exception):
    """A client-named audio path that cannot be used; ``str(error)`` names the field."""


def resolve_roots(roots: Sequence[str | os.PathLike[str]]) -> tuple[Path, ...]:
    return tuple(Path(os.path.realpath(root)) for root in roots)


def check_audio_path(field: str, value: str, roots: Sequence[Path]) -> str:
    """Resolve ``value`` (symlinks included) and make sure it is decodable audio inside a root.

    Blocking (it opens the file): call it from a worker thread. Returns the resolved path.
    """
    resolved = Path(os.path.realpath(value))
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise AudioPathError(texts.outside_roots(field, value))
    if not resolved.exists():
        raise AudioPathError(texts.file_missing(field, value))
    if not resolved.is_file():
        raise AudioPathError(texts.not_a_file(field, value))
    try:
        info = soundfile.info(str(resolved))
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        raise AudioPathError(texts.undecodable(field, value)) from None
    if info.frames <= 0:
        raise AudioPathError(texts.empty_audio(field, value))
    return str(resolved)


class AudioPaths:
    """`check_audio_path` with a memory: a path checked in the last ``ttl`` seconds is trusted.

    Under load the same few prompt files come back request after request; re-checking each one
    costs a worker-thread hop per request. A file that changes or vanishes within the ttl is
    still caught later, by the engine, which fails only that task.
    """

    def __init__(self, roots: Sequence[Path], ttl: float = 5.0):
        self.roots = tuple(roots)
        self.ttl = ttl
        self._checked: dict[tuple[str, str], tuple[str, float]] = {}

    async def resolve(self, fields: Mapping[str, str]) -> dict[str, str]:
        """Each field's path, checked and resolved; `AudioPathError` for the first bad one.

        Paths checked lately are answered at once; otherwise the checks run in a worker thread.
        """
        now = time.monotonic()
        resolved = self.recall_all(fields, now)
        if resolved is None:
            resolved = await trio.to_thread.run_sync(self.check_all, fields, now)
        return resolved

    def recall_all(self, fields: Mapping[str, str], now: float) -> dict[str, str] | None:
        """Every field's resolved path if each was checked lately, else ``None`` (no I/O)."""
        resolved: dict[str, str] = {}
        for field, value in fields.items():
            path = self.recall(value, now)
            if path is None:
                return None
            resolved[field] = path
        return resolved

    def check_all(self, fields: Mapping[str, str], now: float) -> dict[str, str]:
        """Blocking (call from a worker thread): check every field's path, in order."""
        return {field: self.check(field, value, now) for field, value in fields.items()}

    def recall(self, value: str, now: float) -> str | None:
        """The resolved path if ``value`` was checked recently (no I/O)."""
        hit = self._checked.get((os.getcwd(), value))
        if hit is None or hit[1] < now:
            return None
        return hit[0]

    def check(self, field: str, value: str, now: float) -> str:
        """Blocking (call from a worker thread): check ``value`` and remember the answer."""
        resolved = check_audio_path(field, value, self.roots)
        if len(self._checked) > 1024:
            self._checked.clear()
        self._checked[(os.getcwd(), value)] = (resolved, now + self.ttl)
        return resolved
