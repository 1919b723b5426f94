"""Cues, pure: where each segment falls in the output audio, and the cues as SRT and WebVTT."""

from __future__ import annotations

import io

import numpy as np
import srt
import webvtt

from indextts_server.core.contract.protocol import Cue
from indextts_server.core.cues import Timeline, subtitles
from indextts_server.core.engine import SAMPLE_RATE

SECOND = SAMPLE_RATE


def segment(speech: int, pause: int = 0) -> np.ndarray:
    """``speech`` samples of sound, then ``pause`` of silence."""
    return np.concatenate([np.full(speech, 1000, np.int16), np.zeros(pause, np.int16)])


def test_a_cue_starts_after_every_segment_and_pause_before_it_and_leaves_out_its_own_pause() -> None:
    timeline = Timeline(200)  # a pause of 0.2 s ends every segment but the last
    first = timeline.add(0, "一。", segment(2 * SECOND, SECOND // 5), last=False)
    second = timeline.add(1, "二。", segment(3 * SECOND, SECOND // 5), last=False)
    last = timeline.add(2, "三。", segment(SECOND), last=True)
    assert first == Cue(index=0, text="一。", start=0.0, duration=2.0)
    assert second == Cue(index=1, text="二。", start=2.2, duration=3.0)
    assert last == Cue(index=2, text="三。", start=5.4, duration=1.0)


def test_speed_divides_the_times_and_the_rate_places_each_edge_on_an_output_sample() -> None:
    fast = Timeline(200, speed=2.0)
    fast.add(0, "a", segment(2 * SECOND, SECOND // 5), last=False)
    assert fast.add(1, "b", segment(SECOND), last=True) == Cue(index=1, text="b", start=1.1, duration=0.5)
    # 1 s + 1 engine sample at 8 kHz is on output sample 8000: the edge does not move by a fraction.
    narrow = Timeline(0, sample_rate=8000)
    assert narrow.add(0, "a", segment(SECOND + 1), last=False).duration == 1.0


def test_the_pause_is_the_silence_the_engine_left_at_most_interval_silence_long() -> None:
    # An engine that renders the pause shorter (its own speed change): the cue ends where sound does.
    short = Timeline(200)
    assert short.add(0, "a", segment(SECOND, SECOND // 10), last=False).duration == 1.0
    # Silence in the speech itself beyond the pause's length still belongs to the cue.
    long = Timeline(200)
    assert long.add(0, "a", segment(SECOND, SECOND // 2), last=False).duration == 1.3


def test_srt_and_vtt_carry_the_text_as_written_and_leave_out_cues_without_text() -> None:
    cues = [
        Cue(index=0, text="大家好，{不是标签}。", start=0.0, duration=1.5),
        Cue(index=1, text="", start=1.7, duration=1.0),
        Cue(index=2, text="Hello <b>world</b>!", start=2.9, duration=0.25),
    ]
    read = list(srt.parse(subtitles(cues, "srt")))
    assert [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in read] == [
        (0.0, 1.5, "大家好，{不是标签}。"),
        (2.9, 3.15, "Hello <b>world</b>!"),
    ]
    vtt = webvtt.from_buffer(io.StringIO(subtitles(cues, "vtt")))
    assert [(c.start, c.end) for c in vtt.captions] == [
        ("00:00:00.000", "00:00:01.500"),
        ("00:00:02.900", "00:00:03.150"),
    ]
    # WebVTT's markup is escaped: a player shows the text as written.
    assert [c.raw_text for c in vtt.captions] == ["大家好，{不是标签}。", "Hello &lt;b&gt;world&lt;/b&gt;!"]


def test_a_text_on_several_lines_becomes_one_line() -> None:
    cues = [Cue(index=0, text="第一行\n\n第二行", start=0.0, duration=1.0)]
    assert [s.content for s in srt.parse(subtitles(cues, "srt"))] == ["第一行 第二行"]


def test_a_pause_that_straddles_two_segments_belongs_to_neither_cue() -> None:
    # A time-stretch inside the engine delays its output: part of the pause opens the next segment.
    timeline = Timeline(200)
    first = timeline.add(0, "a", segment(SECOND, SECOND // 10), last=False)
    opening = np.concatenate([np.zeros(SECOND // 10, np.int16), segment(SECOND)])
    second = timeline.add(1, "b", opening, last=True)
    assert (first.start, first.duration) == (0.0, 1.0)
    assert (second.start, second.duration) == (1.2, 1.0)
