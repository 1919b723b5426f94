"""``POST /v1/audio/speech`` driven by the official ``openai`` package against the tone engine."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
import trio

from indextts_server.core.engine import SAMPLE_RATE, Segment, SynthesisJob
from indextts_server.io.engines.tone import ToneEngine

from .conftest import GatedEngine, JobsEngine, Running, StartServer, decode_wav, tts, wait_until
from .test_voices import sample, stored, upload

TEXT = "大家好，我现在正在体验 AI 科技！今天天气很好。"
THREE_SEGMENTS = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"
FORMATS: list[Any] = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
RATE_ERROR = "sample_rate 必须是 8000/11025/12000/16000/22050/24000/32000/44100/48000 之一"
PCM_RATE = 24000
"""What the openai SDK's player, pipecat, livekit and Home Assistant play ``pcm`` at."""


def sdk(api: Running, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.http}/v1", api_key="unused", max_retries=0, **options)


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


def seconds(data: bytes, response_format: str, pcm_rate: int = PCM_RATE) -> float:
    """The duration a decoder finds in ``data`` (raw ``pcm`` read at OpenAI's 24 kHz, as its clients do)."""
    if response_format == "pcm":
        return len(data) / 2 / pcm_rate
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = list(container.decode(audio=0))
    return sum(frame.samples for frame in frames) / frames[0].sample_rate


def peak_hz(pcm: np.ndarray) -> float:
    # Zero-padded to a fixed 2**20 points (0.02 Hz bins), so a short clip's peak is located as finely
    # as a long one's: unpadded, a clip of 0.5 s could only say its pitch to within 2 Hz.
    size = 1 << 20
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64), n=size))
    return float(np.argmax(spectrum) * SAMPLE_RATE / size)


@pytest.fixture
async def api(start_http: StartServer) -> Running:
    running = await start_http()
    await upload(running.http, "alice", sample(2.0))
    return running


async def reference(api: Running, text: str = TEXT, **extra: Any) -> bytes:
    """The whole (``stream: false``) WAV of ``text`` in alice's voice: what every format must last as long as."""
    client = sdk(api)
    response = await in_thread(
        client.audio.speech.create,
        model="indextts2",
        voice="alice",
        input=text,
        response_format="wav",
        extra_body={"stream": False, **extra},
    )
    return bytes(response.content)


# --- every format, whole and streamed -------------------------------------------------------------


@pytest.mark.parametrize("response_format", FORMATS)
async def test_stream_false_gives_every_format_whole_with_its_length(
    api: Running, response_format: Any
) -> None:
    expected = len(decode_wav(await reference(api))[0]) / SAMPLE_RATE
    client = sdk(api)
    response = await in_thread(
        client.audio.speech.create, model="tts-1", voice="alice", input=TEXT, response_format=response_format,
        extra_body={"stream": False},
    )  # fmt: skip
    assert (
        response.response.headers["content-type"]
        == {
            "mp3": "audio/mpeg",
            "opus": "audio/ogg; codecs=opus",
            "aac": "audio/aac",
            "flac": "audio/flac",
            "wav": "audio/wav",
            "pcm": "audio/pcm;rate=24000",
        }[response_format]
    )
    assert int(response.response.headers["content-length"]) == len(response.content)
    assert abs(seconds(response.content, response_format) - expected) < 0.08


@pytest.mark.parametrize("response_format", FORMATS)
async def test_every_format_streams_by_default_and_decodes_to_the_right_duration(
    api: Running, response_format: Any
) -> None:
    expected = len(decode_wav(await reference(api, THREE_SEGMENTS, max_tokens=20))[0]) / SAMPLE_RATE
    client = sdk(api)

    def stream() -> tuple[dict[str, str], list[bytes]]:
        with client.audio.speech.with_streaming_response.create(
            model="indextts2",
            voice="alice",
            input=THREE_SEGMENTS,
            response_format=response_format,
            extra_body={"max_tokens": 20},
        ) as response:
            return dict(response.headers), list(response.iter_bytes())

    headers, chunks = await in_thread(stream)
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    data = b"".join(chunks)
    if response_format == "wav":
        assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"  # open-ended
        data = (
            data[:4]
            + (len(data) - 8).to_bytes(4, "little")
            + data[8:40]
            + (len(data) - 44).to_bytes(4, "little")
            + data[44:]
        )
    assert abs(seconds(data, response_format) - expected) < 0.08


async def test_streamed_pcm_and_wav_equal_the_whole_audio_sample_for_sample(api: Running) -> None:
    whole = decode_wav(await reference(api, THREE_SEGMENTS, max_tokens=20))[0]
    whole_24k, rate, _ = decode_wav(await reference(api, THREE_SEGMENTS, max_tokens=20, sample_rate=24000))
    assert rate == PCM_RATE
    client = sdk(api)

    def stream(response_format: Any, **extra: Any) -> bytes:
        with client.audio.speech.with_streaming_response.create(
            model="indextts2", voice="alice", input=THREE_SEGMENTS, response_format=response_format,
            extra_body={"max_tokens": 20, **extra},
        ) as response:  # fmt: skip
            return response.read()

    # pcm is OpenAI's 24 kHz, resampled as one piece however the segments fell.
    assert np.array_equal(np.frombuffer(await in_thread(stream, "pcm"), "<i2"), whole_24k)
    assert np.array_equal(np.frombuffer(await in_thread(stream, "pcm", sample_rate=22050), "<i2"), whole)
    assert np.array_equal(np.frombuffer((await in_thread(stream, "wav"))[44:], "<i2"), whole)


async def test_the_first_bytes_leave_after_the_first_segment_not_the_whole_text(
    start_http: StartServer,
) -> None:
    engine = GatedEngine()
    api = await start_http(engine)
    client = sdk(api)
    first_chunk = threading.Event()

    def stream() -> bytes:
        with client.audio.speech.with_streaming_response.create(
            model="indextts2", voice="default", input=THREE_SEGMENTS, response_format="pcm",
            extra_body={"max_tokens": 20},
        ) as response:  # fmt: skip
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                first_chunk.set()
            return b"".join(chunks)

    async with trio.open_nursery() as nursery:
        result: list[bytes] = []
        nursery.start_soon(lambda: _collect(result, stream))
        with trio.fail_after(20):
            await trio.to_thread.run_sync(first_chunk.wait)
        # The engine holds the second segment at its gate: these bytes came from the first alone.
        assert engine.texts("finish") == [] and len(engine.texts("segment")) <= 2
        engine.release()
    assert len(result[0]) > 0


async def _collect(into: list[bytes], fn: Any) -> None:
    into.append(await trio.to_thread.run_sync(fn))


async def test_sse_sends_deltas_then_done(api: Running) -> None:
    whole = decode_wav(await reference(api, THREE_SEGMENTS, max_tokens=20, sample_rate=PCM_RATE))[0]

    def stream() -> tuple[str, list[dict[str, Any]]]:
        with httpx.Client(timeout=30) as client:
            body = {
                "input": THREE_SEGMENTS,
                "voice": "alice",
                "response_format": "pcm",
                "stream_format": "sse",
                "max_tokens": 20,
            }
            with client.stream("POST", f"{api.http}/v1/audio/speech", json=body) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
                return response.headers["content-type"], events

    content_type, events = await in_thread(stream)
    assert content_type == "text/event-stream"
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and len(events) >= 3
    assert events[-1] == {
        "type": "speech.audio.done",
        "usage": {
            "input_tokens": len(THREE_SEGMENTS),
            "output_tokens": 0,
            "total_tokens": len(THREE_SEGMENTS),
        },
    }
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert np.array_equal(np.frombuffer(audio, "<i2"), whole)


# --- speed, emotion and the model's own fields ----------------------------------------------------


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
async def test_speed_changes_the_duration_and_keeps_the_pitch(api: Running, speed: float) -> None:
    text = "啊啊啊啊啊啊啊啊。"
    normal = decode_wav(await reference(api, text))[0]
    client = sdk(api)
    response = await in_thread(
        client.audio.speech.create,
        model="indextts2",
        voice="alice",
        input=text,
        response_format="wav",
        speed=speed,
    )
    faster = decode_wav(response.content)[0]
    # Relative: the time-stretch's edges cost a few milliseconds, whatever the speed.
    assert abs(len(faster) / len(normal) * speed - 1) < 0.03
    assert abs(peak_hz(faster) - peak_hz(normal)) < 0.03 * peak_hz(normal)


async def test_speed_with_streaming_has_no_seams(api: Running) -> None:
    """One time-stretch over the whole utterance: the streamed samples are the whole file's."""
    client = sdk(api)

    def speak(stream: bool) -> bytes:
        with client.audio.speech.with_streaming_response.create(
            model="indextts2", voice="alice", input=THREE_SEGMENTS, response_format="pcm", speed=1.5,
            extra_body={"stream": stream, "max_tokens": 20},
        ) as response:  # fmt: skip
            return b"".join(response.iter_bytes())

    whole, streamed = await in_thread(speak, False), await in_thread(speak, True)
    assert len(whole) > 2 * SAMPLE_RATE  # three segments, sped up: still over a second
    assert np.array_equal(np.frombuffer(streamed, "<i2"), np.frombuffer(whole, "<i2"))


async def test_instructions_are_the_emotion_text_and_extra_fields_reach_the_model(
    start_http: StartServer,
) -> None:
    engine = JobsEngine()
    api = await start_http(engine)
    await upload(api.http, "alice", sample(2.0))
    await upload(api.http, "bob", sample(1.5))
    client = sdk(api)
    await in_thread(
        client.audio.speech.create, model="indextts2", voice="alice", input="你好。", instructions="开心地",
        extra_body={"emo_alpha": 0.6, "seed": 7, "interval_silence": 100, "max_tokens": 50},
    )  # fmt: skip
    await in_thread(
        client.audio.speech.create, model="indextts2", voice="alice", input="你好。",
        extra_body={"emo_voice": "bob", "use_random": True},
    )  # fmt: skip
    await in_thread(
        client.audio.speech.create, model="indextts2", voice="alice", input="你好。",
        extra_body={"emo_vector": [0, 0.5, 0, 0, 0, 0, 0, 0]},
    )  # fmt: skip
    text, audio, vector = engine.jobs
    assert (text.emo_mode, text.emo_text, text.emo_alpha, text.seed, text.interval_silence, text.max_tokens) == (
        "text", "开心地", 0.6, 7, 100, 50,
    )  # fmt: skip
    assert text.prompt_audio.endswith("/alice.wav")
    assert (audio.emo_mode, audio.use_random) == ("audio", True)
    assert audio.emo_audio is not None and audio.emo_audio.endswith("/bob.wav")
    assert (vector.emo_mode, vector.emo_vector) == ("vector", (0, 0.5, 0, 0, 0, 0, 0, 0))


async def test_openai_stock_voice_names_and_default_mean_the_bundled_voice(start_http: StartServer) -> None:
    engine = JobsEngine()
    api = await start_http(engine)
    client = sdk(api)
    for voice in ("alloy", "nova", "default"):
        response = await in_thread(client.audio.speech.create, model="tts-1", voice=voice, input="你好。")
        assert seconds(response.content, "mp3") > 0.2
    bundled = await trio.to_thread.run_sync(os.path.realpath, str(api.service.config.default_voice))
    assert [job.prompt_audio for job in engine.jobs] == [bundled] * 3


async def test_a_library_voice_shadows_the_stock_name_it_is_called(start_http: StartServer) -> None:
    engine = JobsEngine()
    api = await start_http(engine)
    assert (await upload(api.http, "alloy", sample(1.5))).status_code == 201
    await in_thread(sdk(api).audio.speech.create, model="tts-1", voice="alloy", input="你好。")
    (job,) = engine.jobs
    assert job.prompt_audio == stored(api, "alloy")


async def test_a_voice_given_as_an_object_with_its_id_is_that_voice(start_http: StartServer) -> None:
    engine = JobsEngine()
    api = await start_http(engine)
    await upload(api.http, "alice", sample(2.0))
    body = {"input": "你好。", "voice": {"id": "alice"}, "response_format": "wav"}
    response = await in_thread(httpx.post, f"{api.http}/v1/audio/speech", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert len(decode_wav(response.content)[0]) > 0
    (job,) = engine.jobs
    assert job.prompt_audio == stored(api, "alice")


# --- the shared task board ------------------------------------------------------------------------


async def test_the_task_id_header_answers_task_status_over_the_websocket(api: Running) -> None:
    client = sdk(api)
    response = await in_thread(client.audio.speech.create, model="indextts2", voice="alice", input="你好。")
    task_id = response.response.headers["x-task-id"]
    async with api.connect() as ws:
        await ws.send({"type": "task_status", "task_id": task_id})
        reply = await ws.recv_json()
    assert (reply["type"], reply["task_id"], reply["status"], reply["error_message"]) == (
        "task_status", task_id, "completed", None,
    )  # fmt: skip


async def test_a_client_that_disconnects_mid_stream_cancels_its_task(start_http: StartServer) -> None:
    engine = GatedEngine()
    api = await start_http(engine)

    def read_first_chunk_and_leave() -> str:
        with httpx.Client(timeout=30) as client:
            body = {"input": THREE_SEGMENTS, "response_format": "pcm", "max_tokens": 20}
            with client.stream("POST", f"{api.http}/v1/audio/speech", json=body) as response:
                next(response.iter_raw())
                return response.headers["x-task-id"]

    task_id = await in_thread(read_first_chunk_and_leave)
    task = api.service.board.registry.get(task_id)
    assert task is not None
    engine.release()
    await wait_until(lambda: task.finished)
    assert (task.state, task.error_message) == ("cancelled", "客户端已断开连接")
    await wait_until(lambda: engine.texts("finish") == [THREE_SEGMENTS])
    assert len(engine.texts("segment")) < 3  # stopped at a segment boundary, not run to the end


async def test_a_waiting_request_whose_client_leaves_is_never_computed(start_http: StartServer) -> None:
    engine = GatedEngine()
    api = await start_http(engine)
    async with api.connect() as ws:
        await ws.send(tts(THREE_SEGMENTS, max_tokens=20))  # runs, held at the gate
        running = (await ws.recv_json())["task_id"]
        await engine.first_segment()

        def give_up() -> None:
            with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.5) as client:
                client.post(f"{api.http}/v1/audio/speech", json={"input": "等待中的请求。"})

        await in_thread(give_up)
        await wait_until(lambda: len(api.service.board.registry) == 2)
        waiting = [task for task in api.service.board.registry if task.task_id != running]
        await wait_until(lambda: waiting[0].finished)
        assert (waiting[0].state, waiting[0].error_message) == ("cancelled", "客户端已断开连接")
        engine.release()
        while (await ws.recv()) != ws.reply("end", running):
            pass
    assert engine.texts("begin") == [THREE_SEGMENTS]  # the abandoned one never reached the engine


# --- errors ---------------------------------------------------------------------------------------


def error_of(api: Running, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any], httpx.Headers]:
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{api.http}/v1/audio/speech", json=body, **kwargs)
    return response.status_code, response.json()["error"], response.headers


@pytest.mark.parametrize(
    ("body", "status", "param", "message"),
    [
        ({"input": "你好", "speed": 5}, 400, "speed", "speed 必须是 0.25 到 4.0 之间的数字"),
        ({"input": "你好", "speed": "fast"}, 400, "speed", "speed 必须是 0.25 到 4.0 之间的数字"),
        ({"input": "  "}, 400, "input", "缺少有效的 input"),
        ({"voice": "alice"}, 400, "input", "缺少有效的 input"),
        (
            {"input": "你好", "response_format": "ogg"},
            400,
            "response_format",
            "response_format 必须是 mp3/opus/aac/flac/wav/pcm",
        ),
        ({"input": "你好", "emo_alpha": 2}, 400, "emo_alpha", "emo_alpha 必须是 0.0 到 1.0 之间的数字"),
        (
            {"input": "你好", "emo_vector": [1]},
            400,
            "emo_vector",
            "emo_vector 必须是由 8 个 0.0 到 1.0 之间的数字组成的数组",
        ),
        (
            {"input": "你好", "emo_mode": "audio"},
            400,
            "emo_voice",
            "情感参考音频模式需要提供 emo_voice 或 emo_audio",
        ),
        (
            {"input": "你好", "instructions": "开心", "emo_vector": [0] * 8},
            400,
            "emo_mode",
            "同时给出了多种情感输入（text/vector），请用 emo_mode 指明用哪一种",
        ),
        ({"input": "你好", "voice": "nobody"}, 404, "voice", "voice 不存在: nobody"),
        (
            {"input": "你好", "voice": {"id": "../../etc/passwd"}},
            404,
            "voice",
            "voice 不存在: ../../etc/passwd",
        ),
        ({"input": "你好", "emo_voice": "nobody"}, 404, "emo_voice", "emo_voice 不存在: nobody"),
        (
            {"input": "你好", "model": "whisper-1"},
            404,
            "model",
            "模型不存在: whisper-1（可用: indextts2/tts-1/tts-1-hd/gpt-4o-mini-tts）",
        ),
        (
            {"input": "你好", "model": "indextts-2.5"},  # listed only by a server that runs it
            404,
            "model",
            "模型不存在: indextts-2.5（可用: indextts2/tts-1/tts-1-hd/gpt-4o-mini-tts）",
        ),
        ({"input": "好" * 2001}, 400, "input", "input 过长：最多 2000 个字符"),
        *(
            ({"input": "你好", "sample_rate": rate}, 400, "sample_rate", RATE_ERROR)
            for rate in (7999, 10000, 48001, "24000", 24000.5)
        ),
    ],
)
async def test_a_bad_request_is_an_openai_error_naming_the_field(
    api: Running, body: dict[str, Any], status: int, param: str, message: str
) -> None:
    code, error, _ = await in_thread(error_of, api, body)
    assert (code, error["param"], error["message"]) == (status, param, message)
    assert error["type"] == "invalid_request_error"


async def test_the_sdk_raises_its_own_error_types(api: Running) -> None:
    client = sdk(api)
    with pytest.raises(openai.NotFoundError) as caught:
        await in_thread(client.audio.speech.create, model="indextts2", voice="nobody", input="你好")
    assert caught.value.status_code == 404
    with pytest.raises(openai.BadRequestError):
        await in_thread(client.audio.speech.create, model="indextts2", voice="alice", input="你好", speed=10)


async def test_malformed_json_and_a_body_too_large_are_refused(api: Running) -> None:
    code, error, _ = await in_thread(
        error_of, api, None, content=b"{nope", headers={"content-type": "application/json"}
    )
    assert (code, error["message"]) == (400, "请求体不是有效的 JSON")
    code, error, _ = await in_thread(error_of, api, None, content=b"x" * (2 << 20))
    assert (code, error["code"], error["message"]) == (
        413,
        "request_too_large",
        "请求体过大：最多 1048576 字节",
    )


async def test_a_full_queue_is_429_with_retry_after(start_http: StartServer) -> None:
    engine = GatedEngine()
    api = await start_http(engine, max_queue=1)
    async with api.connect() as ws:
        await ws.send(tts(THREE_SEGMENTS, max_tokens=20))  # runs
        await engine.first_segment()
        await ws.send(tts())  # waits: the queue is full
        await wait_until(lambda: api.service.scheduler.queue_depth == 1)
        code, error, headers = await in_thread(error_of, api, {"input": "你好"})
        engine.release()
    assert (code, headers["retry-after"], error["type"], error["code"]) == (
        429,
        "1",
        "rate_limit_error",
        "queue_full",
    )
    assert error["message"] == "服务器繁忙：队列已满（最多 1 个等待任务），请稍后重试"


async def test_draining_answers_503_to_waiting_and_new_requests(start_http: StartServer) -> None:
    engine = GatedEngine()
    api = await start_http(engine)
    results: dict[str, tuple[int, bytes]] = {}

    def post(name: str, text: str) -> None:
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"{api.http}/v1/audio/speech",
                json={"input": text, "response_format": "wav", "max_tokens": 20},
            )
            results[name] = (response.status_code, response.content)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_thread, post, "running", THREE_SEGMENTS)
        await engine.first_segment()
        nursery.start_soon(in_thread, post, "waiting", "等待中的请求。")
        await wait_until(lambda: api.service.scheduler.queue_depth == 1)
        nursery.start_soon(api.service.drain)
        await wait_until(lambda: "waiting" in results)
        engine.release()
    assert results["waiting"][0] == 503
    assert json.loads(results["waiting"][1])["error"]["message"] == "服务器正在关闭，请稍后重连"
    assert results["running"][0] == 200
    assert len(decode_wav(results["running"][1])[0]) > 0


class FailsAfterFirstSegment:
    """A tone engine whose jobs break after their first segment."""

    name = "tone"
    capabilities = ToneEngine.capabilities

    def warm_up(self) -> None:
        pass

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        segments = ToneEngine().synthesize(job)
        yield next(segments)
        raise RuntimeError("boom")


async def test_a_task_past_the_task_timeout_is_a_500_naming_it(start_http: StartServer) -> None:
    engine = GatedEngine()
    api = await start_http(engine, task_timeout=0.2)
    body = {"input": THREE_SEGMENTS, "max_tokens": 20, "stream": False}  # a whole file: the status tells
    code, error, headers = await in_thread(error_of, api, body)
    engine.release()
    assert (code, error["type"], error["message"]) == (500, "server_error", "任务超时：超过 0.2 秒未完成")
    assert headers["x-task-id"]


async def test_an_engine_failure_before_any_audio_is_a_500_naming_it(start_http: StartServer) -> None:
    api = await start_http(FailsAfterFirstSegment())
    body = {"input": THREE_SEGMENTS, "max_tokens": 20, "stream": False}
    code, error, headers = await in_thread(error_of, api, body)
    assert (code, error["type"], error["message"]) == (500, "server_error", "音频生成失败: boom")
    assert headers["x-task-id"]


async def test_an_engine_failure_mid_stream_cuts_the_response_short(start_http: StartServer) -> None:
    api = await start_http(FailsAfterFirstSegment())

    def stream() -> bytes:
        with httpx.Client(timeout=30) as client:
            body = {"input": THREE_SEGMENTS, "response_format": "pcm", "max_tokens": 20}
            with client.stream("POST", f"{api.http}/v1/audio/speech", json=body) as response:
                return response.read()

    with pytest.raises(httpx.RemoteProtocolError):  # never a complete response holding half the audio
        await in_thread(stream)


async def test_an_engine_failure_mid_sse_ends_with_an_error_event(start_http: StartServer) -> None:
    api = await start_http(FailsAfterFirstSegment())

    def stream() -> list[dict[str, Any]]:
        with httpx.Client(timeout=30) as client:
            body = {
                "input": THREE_SEGMENTS,
                "response_format": "pcm",
                "stream_format": "sse",
                "max_tokens": 20,
            }
            with client.stream("POST", f"{api.http}/v1/audio/speech", json=body) as response:
                return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]

    events = await in_thread(stream)
    assert events[0]["type"] == "speech.audio.delta"
    assert events[-1] == {
        "type": "error",
        "error": {
            "message": "音频生成失败: boom",
            "type": "server_error",
            "param": None,
            "code": "synthesis_failed",
        },
    }
