"""What one request went through, as the client saw it, and the audio length of its binaries."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

from ...core.engine import SAMPLE_RATE

_UNKNOWN_SIZES: Final = (0, 0xFFFFFFFF)  # streaming writers leave the size open


@dataclass(frozen=True, slots=True)
class PcmFormat:
    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    sample_bytes: int = 2

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * self.channels * self.sample_bytes


def audio_seconds(message: bytes, fmt: PcmFormat) -> tuple[float, PcmFormat]:
    """Seconds of audio in one binary message, and the format later headerless chunks use.

    A message is either a WAV file (its header may be open-ended when streamed) or raw PCM
    continuing the format of the last header seen.
    """
    if len(message) < 12 or message[:4] != b"RIFF" or message[8:12] != b"WAVE":
        return len(message) / fmt.bytes_per_second, fmt
    offset = 12
    while offset + 8 <= len(message):
        chunk, size = struct.unpack_from("<4sI", message, offset)
        body = offset + 8
        if chunk == b"fmt " and body + 16 <= len(message):
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", message, body)
            if channels and rate and bits:
                fmt = PcmFormat(rate, channels, max(1, bits // 8))
        elif chunk == b"data":
            available = len(message) - body
            data = available if size in _UNKNOWN_SIZES or size > available else size
            return data / fmt.bytes_per_second, fmt
        offset = body + size + (size & 1)
    return 0.0, fmt


@dataclass(slots=True)
class Record:
    """Times are seconds since the run's clock started; ``None`` means it never happened."""

    connection: int
    sent: float
    queued: float | None = None
    start: float | None = None
    first_audio: float | None = None
    end: float | None = None
    binaries: int = 0
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    error: str | None = None
    fmt: PcmFormat = field(default_factory=PcmFormat)

    @property
    def completed(self) -> bool:
        return self.end is not None and self.error is None

    @property
    def lost(self) -> bool:
        """No final ``end`` or error arrived before the connection closed or the deadline."""
        return self.end is None

    def audio(self, now: float, message: bytes) -> None:
        if self.first_audio is None:
            self.first_audio = now
        self.binaries += 1
        self.audio_bytes += len(message)
        seconds, self.fmt = audio_seconds(message, self.fmt)
        self.audio_seconds += seconds
