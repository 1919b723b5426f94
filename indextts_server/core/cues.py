"""Timestamps: each segment's cue in the output audio's time, and a task's cues as SRT or WebVTT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

import pysubs2

from .contract.protocol import Cue
from .engine import SAMPLE_RATE, pause_samples

SubtitleFormat = Literal["srt", "vtt"]
SUBTITLE_TYPES: Final[dict[SubtitleFormat, str]] = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class Timeline:
    """Places a task's segments in its output audio, one `Cue` per segment, as they are made.

    The engine's samples are counted at ``SAMPLE_RATE``; every segment but the last ends with the
    job's pause, which belongs to no cue. Times are those of the audio the client receives: played
    ``speed`` times as fast (a tempo change applied after the engine) and at ``sample_rate``, each
    boundary on the output sample it falls on, in seconds rounded to the millisecond.
    """

    def __init__(self, interval_silence: int, *, speed: float = 1.0, sample_rate: int = SAMPLE_RATE):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._pause = pause_samples(interval_silence)
        self._speed = speed
        self._rate = sample_rate
        self._at = 0  # engine samples before the next segment

    def add(self, index: int, text: str, samples: int, *, last: bool) -> Cue:
        """The cue of segment ``index``: ``samples`` long at the engine's rate, its pause included."""
        speech = samples if last else max(0, samples - self._pause)
        start, end = self._seconds(self._at), self._seconds(self._at + speech)
        self._at += samples
        return Cue(index=index, text=text, start=start, duration=round(end - start, 3))

    def _seconds(self, samples: int) -> float:
        out = round(samples * self._rate / (SAMPLE_RATE * self._speed))
        return round(out / self._rate, 3)


def subtitles(cues: Sequence[Cue], kind: SubtitleFormat) -> str:
    """The cues as an SRT or WebVTT document (pysubs2 writes it); a cue without text is left out."""
    document = pysubs2.SSAFile()
    for cue in cues:
        if not cue.text.strip():
            continue
        start = round(cue.start * 1000)
        event = pysubs2.SSAEvent(start=start, end=start + round(cue.duration * 1000))
        event.plaintext = cue.text
        document.append(event)
    return document.to_string(kind)
