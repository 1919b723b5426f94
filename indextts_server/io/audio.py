"""Audio at the edges: WAV encoding of engine output, and checking the audio paths clients name."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import soundfile

from ..core.engine import PCM, SAMPLE_RATE
from ..core.protocol import AudioFormat

_WAV_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_bytes(pcm: PCM, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A complete mono 16-bit PCM WAV file holding ``pcm`` (the samples are copied once)."""
    samples = np.ascontiguousarray(pcm, dtype="<i2")
    size = samples.nbytes
    header = _WAV_HEADER.pack(
        b"RIFF", 36 + size, b"WAVE", b"fmt ", 16,
        1, 1, sample_rate, sample_rate * 2, 2, 16,  # PCM, mono, byte rate, block align, bits
        b"data", size,
    )  # fmt: skip
    return b"".join((header, samples.data.cast("B")))


def encode_audio(pcm: PCM, audio_format: AudioFormat) -> bytes:
    """``pcm`` as one complete file (or raw little-endian samples for ``pcm``).

    WAV and PCM are cheap; FLAC and MP3 go through libsndfile, so call those from a thread.
    """
    if audio_format == "wav":
        return wav_bytes(pcm)
    if audio_format == "pcm":
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    buffer = io.BytesIO()
    subtype = "PCM_16" if audio_format == "flac" else "MPEG_LAYER_III"
    soundfile.write(buffer, pcm, SAMPLE_RATE, format=audio_format.upper(), subtype=subtype)
    return buffer.getvalue()


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
        raise AudioPathError(f"{field} 不在允许的音频目录内: {value}")
    if not resolved.exists():
        raise AudioPathError(f"{field} 文件不存在: {value}")
    if not resolved.is_file():
        raise AudioPathError(f"{field} 不是文件: {value}")
    try:
        info = soundfile.info(str(resolved))
    except (soundfile.LibsndfileError, RuntimeError, OSError):
        raise AudioPathError(f"{field} 无法解码为音频: {value}") from None
    if info.frames <= 0:
        raise AudioPathError(f"{field} 音频为空: {value}")
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
