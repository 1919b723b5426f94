"""The voice library on disk: uploaded samples decoded, checked and stored atomically, one file each.

Each voice is one file, ``<name>.wav`` (mono 16-bit at the engine's rate), whose metadata
(``ref_text``, ``created_at``) rides in a chunk of its own after the samples; WAV readers skip
chunks they do not know. A voice therefore appears or is replaced by a single ``rename``: a crash
mid-upload leaves at most a hidden ``.tmp-*`` file, removed at the next start. Every method blocks
(file system, decoding): call them from a worker thread.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Final

import av
import msgspec
import numpy as np
import soundfile

from ...core.config import VoiceLimits
from ...core.engine import PCM, SAMPLE_RATE
from ...core.tasks import iso
from ...core.voices import (
    DEFAULT_VOICE,
    VoiceError,
    builtin_voice,
    check_voice_name,
    library_full,
    ref_text_too_long,
    sample_duration,
    sample_not_audio,
    sample_too_big,
    unknown_voice,
    voice_exists,
)
from .encoding import wav_bytes

log = logging.getLogger("indextts_server")

SUFFIX: Final = ".wav"
TEMP_PREFIX: Final = ".tmp-"
META_CHUNK: Final = b"ixvm"
"""The RIFF chunk holding a voice's metadata as JSON (unknown to every other reader, so skipped)."""

CONTAINERS: Final = frozenset(
    {"wav", "w64", "flac", "mp3", "ogg", "webm", "matroska", "mp4", "m4a", "mov", "aiff"}
)
"""FFmpeg demuxers an upload may use: the formats people record and browsers produce."""

OPENAI_VOICES: Final = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "nova",
        "onyx",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)
"""OpenAI's stock voice names: clients default to them, so they mean the bundled voice here."""


class Meta(msgspec.Struct, frozen=True, kw_only=True):
    created_at: str
    ref_text: str | None = None


class Voice(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of ``GET /v1/audio/voices`` (``id`` and ``name`` are what Open WebUI reads)."""

    id: str
    name: str
    duration: float
    created_at: str | None
    ref_text: str | None = None
    builtin: bool = False


_meta_decoder: Final = msgspec.json.Decoder(Meta)


def decode_sample(data: bytes, limits: VoiceLimits) -> PCM:
    """Any allowed container's first audio stream as mono int16 at ``SAMPLE_RATE``.

    Decoding stops as soon as the sample is known to be too long, so a small file that expands
    to hours costs no more than ``max_seconds`` of audio.
    """
    if len(data) > limits.max_bytes:
        raise sample_too_big(limits.max_bytes)
    most = int(limits.max_seconds * SAMPLE_RATE) + 1
    chunks: list[PCM] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not CONTAINERS.intersection(container.format.name.split(",")) or not container.streams.audio:
                raise sample_not_audio()
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                    chunks.append(chunk)
                    total += len(chunk)
                if total > most:
                    raise sample_duration(total / SAMPLE_RATE, limits)
            for out in resampler.resample(None):
                chunk = out.to_ndarray().reshape(-1).astype(np.int16, copy=False)
                chunks.append(chunk)
                total += len(chunk)
    except av.FFmpegError:
        raise sample_not_audio() from None
    if total == 0:
        raise sample_not_audio()
    seconds = total / SAMPLE_RATE
    if not limits.min_seconds <= seconds <= limits.max_seconds:
        raise sample_duration(seconds, limits)
    return np.concatenate(chunks)


def voice_file(pcm: PCM, meta: Meta) -> bytes:
    """A WAV file of ``pcm`` with ``meta`` in its own chunk after the samples."""
    wav = wav_bytes(pcm)
    payload = msgspec.json.encode(meta)
    if len(payload) % 2:
        payload += b" "  # RIFF chunks are word-aligned
    chunk = META_CHUNK + struct.pack("<I", len(payload)) + payload
    riff_size = len(wav) - 8 + len(chunk)
    return wav[:4] + struct.pack("<I", riff_size) + wav[8:] + chunk


def read_meta(path: Path) -> Meta | None:
    """The metadata chunk of a voice file, or ``None`` if it has none (or it is unreadable)."""
    try:
        with path.open("rb") as file:
            head = file.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
                return None
            while header := file.read(8):
                if len(header) < 8:
                    return None
                chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
                if chunk_id == META_CHUNK:
                    return _meta_decoder.decode(file.read(size).rstrip(b" "))
                file.seek(size + (size % 2), os.SEEK_CUR)
    except (OSError, msgspec.DecodeError):
        return None
    return None


class VoiceLibrary:
    """The voices in ``folder``, plus the bundled default voice (``default_voice``, a file path)."""

    def __init__(self, folder: str | os.PathLike[str], limits: VoiceLimits, default_voice: str | None = None):
        self.folder = Path(folder)
        self.limits = limits
        self.default_voice = default_voice
        # Names found lately, so a busy server does not look each one up on disk per request. Every
        # change made through this library clears it; the file itself is read by the engine, whose
        # speaker cache keys it by size, mtime and inode, so a replaced voice is never stale.
        self._found: dict[str, str] = {}

    def recall(self, name: str) -> str | None:
        """The file of voice ``name`` if it was found lately (no I/O), else ``None``."""
        return self._found.get(name)

    def prepare(self) -> None:
        """Remove what an interrupted upload left behind (the folder itself appears at the first upload)."""
        for leftover in self.folder.glob(f"{TEMP_PREFIX}*"):
            log.warning("removing an interrupted upload: %s", leftover)
            leftover.unlink(missing_ok=True)

    def _file(self, name: str) -> Path:
        path = self.folder / f"{name}{SUFFIX}"
        # check_voice_name already forbids every path character; this is the belt to those braces.
        if path.parent != self.folder:
            raise unknown_voice("name", name)
        return path

    def resolve(self, field: str, name: str) -> str:
        """The absolute file of voice ``name``, for a request's ``field``; `VoiceError` (404) if none."""
        try:
            canonical = check_voice_name(name, self.limits.max_name_chars)
        except VoiceError:
            raise unknown_voice(field, name) from None
        path = self._file(canonical)
        if path.is_file():
            found = os.path.realpath(path)
        elif self.default_voice and (canonical == DEFAULT_VOICE or canonical in OPENAI_VOICES):
            found = os.path.realpath(self.default_voice)
        else:
            raise unknown_voice(field, name)
        if len(self._found) > 4 * self.limits.max_count:
            self._found.clear()
        self._found[name] = found
        return found

    def names(self) -> Iterator[str]:
        for path in self.folder.glob(f"*{SUFFIX}"):
            name = path.name[: -len(SUFFIX)]
            if not name.startswith(".") and path.is_file():
                yield name

    def list(self) -> list[Voice]:
        voices = []
        if self.default_voice and not self._file(DEFAULT_VOICE).is_file():
            voices.append(self._builtin())
        for name in sorted(self.names()):
            voice = self._describe(name, self._file(name))
            if voice is not None:
                voices.append(voice)
        return voices

    def _builtin(self) -> Voice:
        assert self.default_voice is not None
        try:
            duration = round(soundfile.info(self.default_voice).duration, 3)
        except (soundfile.LibsndfileError, RuntimeError, OSError):
            duration = 0.0
        return Voice(id=DEFAULT_VOICE, name=DEFAULT_VOICE, duration=duration, created_at=None, builtin=True)

    def _describe(self, name: str, path: Path) -> Voice | None:
        try:
            duration = round(soundfile.info(str(path)).duration, 3)
        except (soundfile.LibsndfileError, RuntimeError, OSError):
            return None
        meta = read_meta(path)
        if meta is None:
            created = iso(datetime.fromtimestamp(path.stat().st_mtime))
            return Voice(id=name, name=name, duration=duration, created_at=created)
        return Voice(
            id=name, name=name, duration=duration, created_at=meta.created_at, ref_text=meta.ref_text
        )

    def add(self, name: str, data: bytes, *, ref_text: str | None = None, replace: bool = False) -> Voice:
        """Check everything, then store the voice in one atomic step; `VoiceError` says what is wrong.

        Callers serialise calls (the count limit is checked here, and two uploads of one name
        must not race); without ``replace`` an existing name is refused, even one that appears
        between the check and the write.
        """
        canonical = check_voice_name(name, self.limits.max_name_chars)
        if ref_text is not None and len(ref_text) > self.limits.max_ref_text_chars:
            raise ref_text_too_long(self.limits.max_ref_text_chars)
        target = self._file(canonical)
        exists = target.is_file()
        if exists and not replace:
            raise voice_exists(canonical)
        if not exists and sum(1 for _ in self.names()) >= self.limits.max_count:
            raise library_full(self.limits.max_count)
        pcm = decode_sample(data, self.limits)
        self._found.clear()
        meta = Meta(created_at=iso(datetime.now()), ref_text=ref_text or None)
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}{SUFFIX}"
        try:
            with temp.open("wb") as file:
                file.write(voice_file(pcm, meta))
                file.flush()
                os.fsync(file.fileno())
            if replace:
                os.replace(temp, target)
            else:
                try:
                    os.link(temp, target)  # fails if the name appeared meanwhile: never clobbers
                except FileExistsError:
                    raise voice_exists(canonical) from None
        finally:
            temp.unlink(missing_ok=True)
        self._sync_folder()
        log.info(
            "voice %s name=%s seconds=%.2f",
            "replaced" if exists else "added",
            canonical,
            len(pcm) / SAMPLE_RATE,
        )
        return Voice(
            id=canonical,
            name=canonical,
            duration=round(len(pcm) / SAMPLE_RATE, 3),
            created_at=meta.created_at,
            ref_text=meta.ref_text,
        )

    def delete(self, name: str) -> str:
        """Remove voice ``name``; return its canonical name. `VoiceError` (404) if there is none."""
        try:
            canonical = check_voice_name(name, self.limits.max_name_chars)
        except VoiceError:
            raise unknown_voice("name", name) from None
        target = self._file(canonical)
        self._found.clear()
        try:
            target.unlink()
        except FileNotFoundError:
            if canonical == DEFAULT_VOICE and self.default_voice:
                raise builtin_voice(canonical) from None
            raise unknown_voice("name", name) from None
        self._sync_folder()
        log.info("voice deleted name=%s", canonical)
        return canonical

    def _sync_folder(self) -> None:
        """Make the rename itself durable."""
        try:
            descriptor = os.open(self.folder, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)
