"""Audio paths that clients name: resolved, kept inside the allowed roots, and checked to be audio."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import soundfile

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
