"""Engine output as the bytes clients receive: WAV, raw PCM, FLAC and MP3."""

from __future__ import annotations

import io
import struct
from typing import Final

import numpy as np
import soundfile

from ...core.engine import PCM, SAMPLE_RATE
from ...core.protocol import AudioFormat

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
