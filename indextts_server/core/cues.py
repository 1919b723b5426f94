"""Timestamps: each segment's cue in the output audio's time, and a task's cues as SRT or WebVTT."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import timedelta
from typing import Final, Literal

import numpy as np
import srt
import webvtt

from .contract.protocol import Cue
from .engine import PCM, SAMPLE_RATE, pause_samples

SubtitleFormat = Literal["srt", "vtt"]
SUBTITLE_TYPES: Final[dict[SubtitleFormat, str]] = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


class Timeline:
    """Places a task's segments in its output audio, one `Cue` per segment, as they are made.

    Every segment but the last ends with the job's pause, which belongs to no cue. The pause is
    the silence the engine put there: the segment's trailing zero samples, at most
    ``interval_silence`` long, and what is left of that length may open the next segment (a
    time-stretch inside the engine delays its output, so a pause can straddle two segments).
    Counting it in the audio rather than from the request keeps the cues right when an engine
    renders the pause shorter (a speed change inside the engine).
    Samples are counted at the engine's rate; times are those of the audio the client receives:
    played ``speed`` times as fast (a tempo change applied after the engine) and at
    ``sample_rate``, each boundary on the output sample it falls on, in seconds rounded to the
    millisecond. ``opening`` and ``closing`` (ms, SSML's breaks at either end) are silence that
    may open the first segment and close the last, outside their cues too.
    """

    def __init__(
        self,
        interval_silence: int,
        *,
        speed: float = 1.0,
        sample_rate: int = SAMPLE_RATE,
        opening: int = 0,
        closing: int = 0,
    ):
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._pause = pause_samples(interval_silence)
        self._closing = pause_samples(closing)
        self._speed = speed
        self._rate = sample_rate
        self._at = 0  # engine samples before the next segment
        self._open = pause_samples(opening)  # samples of silence that may still open the next segment

    def add(self, index: int, text: str, pcm: PCM, *, last: bool) -> Cue:
        """The cue of segment ``index``, made of ``pcm`` (its pause included, unless ``last``)."""
        lead = leading_silence(pcm, self._open)
        tail = trailing_silence(pcm[lead:], self._closing if last else self._pause)
        self._open = 0 if last else self._pause - tail
        start = self._seconds(self._at + lead)
        end = self._seconds(self._at + len(pcm) - tail)
        self._at += len(pcm)
        return Cue(index=index, text=text, start=start, duration=round(max(0.0, end - start), 3))

    def _seconds(self, samples: int) -> float:
        out = round(samples * self._rate / (SAMPLE_RATE * self._speed))
        return round(out / self._rate, 3)


def trailing_silence(pcm: PCM, most: int) -> int:
    """How many of ``pcm``'s last samples are zero, counting at most ``most``."""
    tail = pcm[len(pcm) - min(most, len(pcm)) :]
    sound = np.flatnonzero(tail)
    return len(tail) - (int(sound[-1]) + 1 if len(sound) else 0)


def leading_silence(pcm: PCM, most: int) -> int:
    """How many of ``pcm``'s first samples are zero, counting at most ``most``."""
    head = pcm[: min(most, len(pcm))]
    sound = np.flatnonzero(head)
    return int(sound[0]) if len(sound) else len(head)


def subtitles(cues: Sequence[Cue], kind: SubtitleFormat) -> str:
    """The cues as a SubRip (written by ``srt``) or WebVTT (by ``webvtt-py``) document.

    A cue's text goes on one line, its whitespace collapsed (a blank line would end the block);
    WebVTT's markup characters are escaped, so the text shows as written. A cue without text
    (an engine that cannot say what a segment read) is left out.
    """
    kept = [(cue, " ".join(cue.text.split())) for cue in cues]
    lines = [(cue, text) for cue, text in kept if text]
    if kind == "srt":
        entries = [
            srt.Subtitle(index=number, start=_delta(cue.start), end=_delta(_end(cue)), content=text)
            for number, (cue, text) in enumerate(lines, start=1)
        ]
        return str(srt.compose(entries, reindex=False))
    document = webvtt.WebVTT()
    for cue, text in lines:
        escaped = html.escape(text, quote=False)
        document.captions.append(webvtt.Caption(start=_stamp(cue.start), end=_stamp(_end(cue)), text=escaped))
    return str(document.content)


def _end(cue: Cue) -> float:
    return cue.start + cue.duration


def _delta(seconds: float) -> timedelta:
    return timedelta(milliseconds=round(seconds * 1000))


def _stamp(seconds: float) -> str:
    """WebVTT's ``hh:mm:ss.ttt``."""
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}.{rest % 1000:03d}"
