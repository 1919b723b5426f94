"""Timestamps: one cue per segment, timed in the audio the client receives; the cues as SRT and WebVTT."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import srt
import webvtt

from indextts_server.core.engine import SAMPLE_RATE, Segment, SynthesisJob, pause_samples
from indextts_server.core.segment import split_segments
from indextts_server.io.audio.encoding import Tempo
from indextts_server.io.engines.tone import ToneEngine

from .conftest import Running, StartServer, decode_wav, tts
from .test_speech import THREE_SEGMENTS

PAUSE_MS = 300
TOLERANCE = 0.010
"""Seconds a cue's edge may be from the silence the audio really has there."""


@pytest.fixture
async def api(start_http: StartServer) -> Running:
    return await start_http()


def pauses(
    pcm: np.ndarray, rate: int, *, shortest: float = 0.1, level: int = 300
) -> list[tuple[float, float]]:
    """Where the audio is silent for at least ``shortest`` seconds: (start, end) in seconds."""
    quiet = np.abs(pcm.astype(np.int32)) <= level
    edges = np.flatnonzero(np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]])))
    runs = zip(edges[::2], edges[1::2], strict=True)
    return [(a / rate, b / rate) for a, b in runs if (b - a) / rate >= shortest and 0 < a and b < len(pcm)]


def assert_cues_fit_the_audio(
    cues: list[tuple[float, float]],
    pcm: np.ndarray,
    rate: int,
    tolerance: float = TOLERANCE,
    *,
    level: int = 300,
) -> None:
    """Between each cue's end and the next cue's start lies a pause of the audio, within 10 ms;
    the first cue starts at 0 and the last ends with the audio. ``level``: the loudest sample
    that still counts as silence."""
    gaps = pauses(pcm, rate, level=level)
    assert len(gaps) == len(cues) - 1, (gaps, cues)
    for (start, end), (next_start, _), (quiet, loud) in zip(cues, cues[1:], gaps, strict=False):
        assert abs(end - quiet) <= tolerance and abs(next_start - loud) <= tolerance, (cues, gaps)
        assert start < end
    assert cues[0][0] == 0
    assert abs(cues[-1][1] - len(pcm) / rate) <= tolerance


def spans(cues: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(cue["start"], cue["start"] + cue["duration"]) for cue in cues]


# --- over the WebSocket ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [None, 16000])
async def test_each_streamed_segment_is_announced_by_its_cue_and_end_lists_them(
    api: Running, rate: int | None
) -> None:
    extra = {} if rate is None else {"sample_rate": rate}
    request = tts(
        THREE_SEGMENTS, max_tokens=20, interval_silence=PAUSE_MS, stream=True, timestamps=True, **extra
    )
    async with api.connect() as client:
        await client.send(request)
        queued = await client.recv_json()
        assert (await client.recv_json())["type"] == "start"
        cues, files = [], []
        while (message := await client.recv_json())["type"] == "cue":
            cues.append(message)
            files.append(await client.recv_audio())  # the cue comes first, then its segment
        end = message
    task_id, session_id = queued["task_id"], client.session_id
    texts = split_segments(THREE_SEGMENTS, 20)
    assert [(c["type"], c["task_id"], c["session_id"], c["index"], c["text"]) for c in cues] == [
        ("cue", task_id, session_id, index, text) for index, text in enumerate(texts)
    ]
    assert end["type"] == "end" and end["cues"] == [
        {key: cue[key] for key in ("index", "text", "start", "duration")} for cue in cues
    ]
    decoded = [decode_wav(f) for f in files]
    out_rate = decoded[0][1]
    assert out_rate == (rate or SAMPLE_RATE)
    # Each cue starts where its segment's file does and ends where the file's pause begins.
    at = 0
    pause = round(pause_samples(PAUSE_MS) * out_rate / SAMPLE_RATE)
    for index, (pcm, _, _) in enumerate(decoded):
        speech = len(pcm) - (pause if index < len(decoded) - 1 else 0)
        assert cues[index]["start"] == pytest.approx(at / out_rate, abs=0.0015)
        assert cues[index]["duration"] == pytest.approx(speech / out_rate, abs=0.0015)
        at += len(pcm)
    assert_cues_fit_the_audio(spans(cues), np.concatenate([pcm for pcm, _, _ in decoded]), out_rate)


async def test_a_whole_file_request_gets_its_cues_before_the_file(api: Running) -> None:
    request = tts(THREE_SEGMENTS, max_tokens=20, interval_silence=PAUSE_MS, timestamps=True)
    async with api.connect() as client:
        await client.send(request)
        await client.recv_json()  # queued
        start = await client.recv_json()
        assert (start["type"], start["stream"], start["sample_rate"]) == ("start", False, SAMPLE_RATE)
        cues = [await client.recv_json() for _ in range(3)]
        wav = await client.recv_audio()
        end = await client.recv_json()
    assert [cue["type"] for cue in cues] == ["cue"] * 3 and len(end["cues"]) == 3
    pcm, rate, _ = decode_wav(wav)
    assert_cues_fit_the_audio(spans(cues), pcm, rate)


async def test_without_timestamps_no_cue_is_sent(api: Running) -> None:
    async with api.connect() as client:
        await client.send(tts(THREE_SEGMENTS, max_tokens=20, stream=True))
        kinds = []
        while True:
            message = await client.recv()
            kinds.append("audio" if isinstance(message, bytes) else message["type"])
            if kinds[-1] == "end":
                assert "cues" not in message
                break
    assert kinds == ["queued", "start", "audio", "audio", "audio", "end"]


async def test_timestamps_must_be_a_boolean(api: Running) -> None:
    async with api.connect() as client:
        reply = await client.error(tts(timestamps="yes"))
        assert reply == client.error_reply("timestamps 必须是布尔值（true 或 false）")


# --- kept with the task, served over HTTP -----------------------------------------------------------


async def speech(api: Running, **fields: Any) -> httpx.Response:
    body = {"input": THREE_SEGMENTS, "max_tokens": 20, "interval_silence": PAUSE_MS, **fields}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(f"{api.http}/v1/audio/speech", json=body)


async def get(api: Running, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(f"{api.http}{path}")


def srt_spans(text: str) -> list[tuple[float, float, str]]:
    return [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in srt.parse(text)]


def vtt_spans(text: str) -> list[tuple[float, float, str]]:
    def seconds(stamp: str) -> float:
        hours, minutes, rest = stamp.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest)

    read = getattr(webvtt, "from_buffer", None) or webvtt.read_buffer  # the name changed in 0.5
    captions = read(io.StringIO(text)).captions
    return [(seconds(c.start), seconds(c.end), c.text) for c in captions]


@pytest.mark.parametrize(
    ("speed", "tolerance"),
    # A tempo change (FFmpeg's atempo, WSOLA) moves a pause's edges by up to about one of its
    # windows: measured 20 ms at 2x and 60 ms at 0.5x (two chained stages). The README says so.
    [(1.0, TOLERANCE), (2.0, 0.030), (0.5, 0.075)],
)
async def test_the_srt_and_vtt_of_an_http_task_match_its_audio(
    api: Running, speed: float, tolerance: float
) -> None:
    response = await speech(api, response_format="pcm", speed=speed)
    pcm = np.frombuffer(response.content, "<i2")
    task_id = response.headers["x-task-id"]
    as_srt = await get(api, f"/v1/tasks/{task_id}/subtitles.srt")
    as_vtt = await get(api, f"/v1/tasks/{task_id}/subtitles.vtt")
    assert as_srt.headers["content-type"] == "application/x-subrip; charset=utf-8"
    assert as_vtt.headers["content-type"] == "text/vtt; charset=utf-8"
    read_srt, read_vtt = srt_spans(as_srt.text), vtt_spans(as_vtt.text)
    assert read_srt == read_vtt
    assert [text for _, _, text in read_srt] == split_segments(THREE_SEGMENTS, 20)
    assert_cues_fit_the_audio([(start, end) for start, end, _ in read_srt], pcm, 24000, tolerance)


async def test_task_status_over_http_is_the_websockets_reply(api: Running) -> None:
    response = await speech(api, response_format="wav", stream=False)
    task_id = response.headers["x-task-id"]
    over_http = (await get(api, f"/v1/tasks/{task_id}")).json()
    async with api.connect() as client:
        await client.send({"type": "task_status", "task_id": task_id})
        over_ws = await client.recv_json()
    assert over_http.keys() == over_ws.keys()
    assert {k: v for k, v in over_http.items() if k != "session_id"} == {
        k: v for k, v in over_ws.items() if k != "session_id"
    }
    assert over_http["status"] == "completed" and over_http["type"] == "task_status"


async def test_a_websocket_task_has_subtitles_too(api: Running) -> None:
    async with api.connect() as client:
        task_id, wav = await client.request(tts(THREE_SEGMENTS, max_tokens=20, interval_silence=PAUSE_MS))
    read = srt_spans((await get(api, f"/v1/tasks/{task_id}/subtitles.srt")).text)
    pcm, rate, _ = decode_wav(wav)
    assert_cues_fit_the_audio([(start, end) for start, end, _ in read], pcm, rate)


async def test_an_unknown_task_is_404_naming_it(api: Running) -> None:
    for path in ("/v1/tasks/nope", "/v1/tasks/nope/subtitles.srt", "/v1/tasks/nope/subtitles.vtt"):
        response = await get(api, path)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "任务不存在或已过期: nope"
        assert response.json()["error"]["param"] == "task_id"


async def test_cues_are_forgotten_with_the_task_after_the_ttl(start_http: StartServer) -> None:
    api = await start_http(task_ttl=0)
    response = await speech(api, stream=False)
    task_id = response.headers["x-task-id"]
    assert (await get(api, f"/v1/tasks/{task_id}/subtitles.srt")).status_code == 404


class StretchingEngine:
    """The tone engine at twice the speed, stretched inside the engine (as an engine that renders
    ``speed`` itself does): the pauses it leaves are shorter than ``interval_silence``."""

    name = "tone"
    capabilities = ToneEngine.capabilities

    def __init__(self) -> None:
        self.inner = ToneEngine()

    def warm_up(self) -> None:
        pass

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        tempo = Tempo(2.0)
        for segment in self.inner.synthesize(job):
            pcm = tempo.feed(segment.pcm)
            if segment.last:
                pcm = np.concatenate([pcm, tempo.finish()])
            yield Segment(pcm, segment.last, segment.text)


async def test_cues_follow_pauses_an_engine_rendered_shorter(start_server: StartServer) -> None:
    server = await start_server(StretchingEngine())
    request = tts(THREE_SEGMENTS, max_tokens=20, interval_silence=PAUSE_MS, timestamps=True)
    async with server.connect() as client:
        await client.send(request)
        replies = [await client.recv() for _ in range(7)]  # queued, start, 3 cues, the WAV, end
    cues = [reply for reply in replies if isinstance(reply, dict) and reply.get("type") == "cue"]
    (wav,) = [reply for reply in replies if isinstance(reply, bytes)]
    pcm, rate, _ = decode_wav(wav)
    # The time-stretch blends a pause's edges over one of its windows (see the speed test above).
    assert_cues_fit_the_audio(spans(cues), pcm, rate, 0.030)
