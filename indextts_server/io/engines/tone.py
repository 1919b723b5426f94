"""The weight-free ``tone`` engine: speech-length tone sequences for protocol work and load tests."""

from __future__ import annotations

import functools
import os
import time
import zlib
from collections.abc import Iterator

import numpy as np

from ...core.engine import (
    DEFAULT_SCHEDULE,
    PCM,
    SAMPLE_RATE,
    Capabilities,
    ChunkSchedule,
    Segment,
    SynthesisJob,
    pause_samples,
)
from ...core.segment import speech_seconds, split_segments, tokens
from .speed import stretched

_EDGE = int(0.005 * SAMPLE_RATE)  # 5 ms fades keep notes click-free


def _stable_hash(*parts: object) -> int:
    return zlib.crc32("\x1f".join(map(str, parts)).encode())


class ToneEngine:
    """Renders each text segment as one note per token, lasting about as long as speaking it.

    The voice (base pitch) comes from the prompt file's identity; each emotion input shifts
    pitch and brightness, scaled by ``emo_alpha``; ``use_random`` detunes the notes (seeded by
    the job's ``seed`` when given). ``rtf`` seconds of wall time are spent per second of audio,
    so queueing behaves like a real accelerator under load. With ``gate`` (a file path), every
    segment after a job's first waits until that file exists: a test in another process keeps a
    task running for as long as it needs, then creates the file.
    """

    name = "tone"
    capabilities = Capabilities(model="tone")
    """Every language, emotion mode and speed a request may name."""

    def __init__(
        self,
        rtf: float = 0.0,
        *,
        fail_on: str | None = None,
        gate: str | None = None,
        chunked: bool = False,
        schedule: ChunkSchedule = DEFAULT_SCHEDULE,
    ):
        if rtf < 0:
            raise ValueError("rtf must be >= 0")
        self.rtf = rtf
        # Test hook: a job whose text contains this marker raises, as a broken model would.
        self.fail_on = fail_on
        self.gate = gate
        self.chunked = chunked  # the server's default for jobs that do not say
        self.schedule = schedule

    def warm_up(self) -> None:
        pass

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        """One segment per text segment; ``job.speed`` by time-stretch (tones have no prosody)."""
        segments = self._segments(job)
        if self.chunked if job.chunked is None else job.chunked:
            segments = in_pieces(segments, self.schedule)
        return stretched(segments, job.speed)

    def _segments(self, job: SynthesisJob) -> Iterator[Segment]:
        segments = split_segments(job.text, job.max_tokens, job.quick_first)
        silence = np.zeros(pause_samples(job.interval_silence), dtype=np.int16)
        base, brightness = self._voice(job)
        rng = np.random.default_rng(job.seed) if job.use_random else None
        for index, segment in enumerate(segments):
            if index > 0 and self.gate is not None:
                while not os.path.exists(self.gate):  # a worker thread: sleeping blocks no one else
                    time.sleep(0.01)
            started = time.monotonic()
            if self.fail_on is not None and self.fail_on in segment:
                raise RuntimeError(f"tone engine failed on purpose ({self.fail_on!r})")
            if rng is None:
                pcm = self._render_cached(segment, base, brightness)
            else:
                pcm = self._render(segment, base, brightness, rng)
            if index < len(segments) - 1:
                pcm = np.concatenate([pcm, silence])
            if self.rtf:
                spent = time.monotonic() - started
                time.sleep(max(0.0, self.rtf * len(pcm) / SAMPLE_RATE - spent))
            yield Segment(pcm, index == len(segments) - 1, segment)

    def _voice(self, job: SynthesisJob) -> tuple[float, float]:
        try:
            stat = os.stat(job.prompt_audio)
            identity = _stable_hash(job.prompt_audio, stat.st_size, stat.st_mtime_ns)
        except OSError:
            identity = _stable_hash(job.prompt_audio)
        # 110–230 Hz, a speaking-voice range, in steps fine enough that two files almost never share one.
        base = 110.0 + identity % 12000 / 100
        shift, brightness = 0.0, 0.3
        if job.emo_mode == "vector" and job.emo_vector is not None:
            # happy, angry, sad, afraid, disgusted, melancholic, surprised, calm
            pitch = (0.25, 0.1, -0.2, 0.15, -0.05, -0.25, 0.3, 0.0)
            bright = (0.3, 0.6, -0.2, 0.1, 0.2, -0.25, 0.4, -0.1)
            shift = sum(w * p for w, p in zip(job.emo_vector, pitch, strict=False))
            brightness += sum(w * b for w, b in zip(job.emo_vector, bright, strict=False))
        elif job.emo_mode in ("audio", "text"):
            source = job.emo_audio if job.emo_mode == "audio" else job.emo_text
            mood = _stable_hash(job.emo_mode, source) % 1000 / 1000.0 - 0.5
            shift = 0.5 * mood * job.emo_alpha
            brightness += 0.4 * mood * job.emo_alpha
        return base * 2.0**shift, min(0.9, max(0.0, brightness))

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one engine per worker, kept for the process
    def _render_cached(self, text: str, base: float, brightness: float) -> PCM:
        """Deterministic renders repeat under load, so keep them: the engine should cost ~nothing."""
        pcm = self._render(text, base, brightness, None)
        pcm.flags.writeable = False
        return pcm

    def _render(self, text: str, base: float, brightness: float, rng: np.random.Generator | None) -> PCM:
        words = tokens(text) or [text]
        total = int(speech_seconds(text) * SAMPLE_RATE)
        per = max(2 * _EDGE + 1, total // len(words))
        t = np.arange(per, dtype=np.float32) / np.float32(SAMPLE_RATE)
        envelope = np.ones(per, dtype=np.float32)
        ramp = np.linspace(0.0, 1.0, _EDGE, dtype=np.float32)
        envelope[:_EDGE], envelope[-_EDGE:] = ramp, ramp[::-1]
        notes = []
        for word in words:
            semitones = float(_stable_hash(word) % 12 - 5)
            if rng is not None:
                semitones += rng.uniform(-1.0, 1.0)
            phase = np.float32(2 * np.pi * base * 2.0 ** (semitones / 12)) * t
            wave = np.sin(phase) + np.float32(brightness) * np.sin(2 * phase)
            notes.append(wave * envelope)
        audio = np.concatenate(notes) * np.float32(0.3 * 32767 / (1.0 + brightness))
        return audio.astype(np.int16)


def in_pieces(segments: Iterator[Segment], schedule: ChunkSchedule) -> Iterator[Segment]:
    """Each segment cut into pieces of ``schedule``'s sizes, as a chunked model yields them (the
    tone engine renders a segment at once: this exercises the delivery, not the model)."""
    for segment in segments:
        sizes = schedule.sizes()
        at = 0
        while (size := int(next(sizes) * SAMPLE_RATE)) < len(segment.pcm) - at:
            yield segment._replace(pcm=segment.pcm[at : at + size], last=False, partial=True)
            at += size
        yield segment._replace(pcm=segment.pcm[at:])
