"""Where the audio goes: a file or stdout, whole at the end or segment by segment as it comes."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO, Final

_WAV_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")
OPEN_ENDED: Final = 0xFFFFFFFF
"""The size a streamed WAV header carries while the length is unknown (readers play to the end)."""


def wav_header(sample_rate: int, data_bytes: int = OPEN_ENDED) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV holding ``data_bytes`` of samples."""
    riff = OPEN_ENDED if data_bytes == OPEN_ENDED else 36 + data_bytes
    return _WAV_HEADER.pack(
        b"RIFF", riff, b"WAVE", b"fmt ", 16,
        1, 1, sample_rate, sample_rate * 2, 2, 16,  # PCM, mono, byte rate, block align, bits
        b"data", data_bytes,
    )  # fmt: skip


class AudioOutput:
    """Writes the audio of one task to ``path`` (``-``: stdout).

    Streaming, every segment is written (and flushed) as it arrives; a file is finished in
    place, its WAV sizes patched at the end. Otherwise the audio is kept until the task ends
    and the file appears whole (written beside it, then renamed), so a failed task leaves no
    half file. ``wav`` adds a header to the raw PCM the server sends.
    """

    def __init__(self, path: str, *, streaming: bool, wav: bool):
        self.path = path
        self.streaming = streaming
        self.wav = wav
        self.sample_rate = 22050
        self.bytes_written = 0
        self._chunks: list[bytes] = []
        self._file: BinaryIO | None = None
        self._owned = path != "-"

    @property
    def to_stdout(self) -> bool:
        return not self._owned

    def begin(self, sample_rate: int | None) -> None:
        if sample_rate:
            self.sample_rate = sample_rate
        if self.streaming:
            self._file = open(self.path, "wb") if self._owned else sys.stdout.buffer
            if self.wav:
                self._file.write(wav_header(self.sample_rate))

    def segment(self, data: bytes) -> None:
        self.bytes_written += len(data)
        if self._file is None:
            self._chunks.append(data)
            return
        self._file.write(data)
        self._file.flush()

    def finish(self) -> None:
        """The task ended well: complete the file."""
        if self._file is not None:
            if self._owned:
                if self.wav:
                    self._file.seek(0)
                    self._file.write(wav_header(self.sample_rate, self.bytes_written))
                self._file.close()
            return
        header = wav_header(self.sample_rate, self.bytes_written) if self.wav else b""
        if not self._owned:
            sys.stdout.buffer.write(header)
            sys.stdout.buffer.writelines(self._chunks)
            sys.stdout.buffer.flush()
            return
        partial = Path(f"{self.path}.part")
        try:
            with open(partial, "wb") as file:
                file.write(header)
                file.writelines(self._chunks)
            os.replace(partial, self.path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def abandon(self) -> None:
        """The task failed: a file being streamed is removed (stdout keeps what it got)."""
        self._chunks.clear()
        if self._file is not None and self._owned:
            self._file.close()
            Path(self.path).unlink(missing_ok=True)
