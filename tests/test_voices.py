"""The voice library over HTTP (uploads with httpx, a plain HTTP client) and its voices over the WebSocket."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import soundfile
import trio

from indextts_server.core.voices import VoiceError, check_voice_name
from indextts_server.io.audio.voices import read_meta

from .conftest import Client, CliServer, JobsEngine, Running, StartServer, decode_wav, tts

SR = 22050


def sample(seconds: float = 2.0, fmt: str = "WAV", subtype: str | None = None, rate: int = SR) -> bytes:
    """A tone of ``seconds`` in the given container, as a user would upload it."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request with httpx's blocking client, from a thread (it must not block the server's loop)."""

    def run() -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.request(method, url, **kwargs)

    return await trio.to_thread.run_sync(run)


async def upload(
    base: str, name: str, data: bytes, filename: str = "voice.wav", **fields: str
) -> httpx.Response:
    return await call(
        "POST",
        f"{base}/v1/audio/voices",
        data={"name": name, **fields},
        files={"audio_sample": (filename, data)},
    )


def files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


@pytest.fixture
async def api(start_http: StartServer) -> Running:
    return await start_http()


def folder_of(api: Running) -> Path:
    return Path(api.service.config.voices_dir)


def stored(api: Running, name: str) -> str:
    """The resolved file of library voice ``name``: what a job that uses it names."""
    return os.path.realpath(folder_of(api) / f"{name}.wav")


# --- upload, list, delete -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS"), ("OGG", "OPUS")],
)
async def test_an_upload_in_any_common_format_becomes_a_voice(api: Running, fmt: str, subtype: str) -> None:
    rate = 48000 if subtype == "OPUS" else SR
    reply = await upload(api.http, "alice", sample(2.0, fmt, subtype, rate), ref_text="你好")
    assert reply.status_code == 201, reply.text
    voice = reply.json()
    assert (voice["id"], voice["name"], voice["ref_text"]) == ("alice", "alice", "你好")
    assert abs(voice["duration"] - 2.0) < 0.1
    stored = folder_of(api) / "alice.wav"
    info = soundfile.info(str(stored))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert files(folder_of(api)) == ["alice.wav"]


def encoded(seconds: float, container: str, codec: str, rate: int = 48000) -> bytes:
    """A tone of ``seconds`` encoded by FFmpeg (PyAV) into ``container``, as browsers record it."""
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("container", "codec", "filename"), [("webm", "libopus", "v.webm"), ("ipod", "aac", "v.m4a")]
)
async def test_a_webm_or_m4a_recording_becomes_a_voice(
    api: Running, container: str, codec: str, filename: str
) -> None:
    reply = await upload(api.http, "alice", encoded(2.0, container, codec), filename=filename)
    assert reply.status_code == 201, reply.text
    assert abs(reply.json()["duration"] - 2.0) < 0.1
    info = soundfile.info(str(folder_of(api) / "alice.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert abs(info.duration - 2.0) < 0.1


async def test_the_list_has_the_bundled_voice_and_every_upload(api: Running) -> None:
    for name in ("bob", "张三", "मेरा_नाम-1"):
        assert (await upload(api.http, name, sample(1.5))).status_code == 201
    reply = await call("GET", f"{api.http}/v1/audio/voices")
    assert reply.status_code == 200
    voices = reply.json()["voices"]
    assert [v["id"] for v in voices] == ["default", "bob", "मेरा_नाम-1", "张三"]
    assert voices[0]["builtin"] is True
    assert all(v["name"] == v["id"] and v["created_at"] for v in voices[1:])


async def test_delete_removes_the_voice_and_its_file(api: Running) -> None:
    await upload(api.http, "张三", sample())
    reply = await call("DELETE", f"{api.http}/v1/audio/voices/%E5%BC%A0%E4%B8%89")
    assert (reply.status_code, reply.json()) == (200, {"id": "张三", "object": "voice", "deleted": True})
    assert files(folder_of(api)) == []
    reply = await call("DELETE", f"{api.http}/v1/audio/voices/张三")
    assert reply.status_code == 404
    assert reply.json()["error"] == {
        "message": "name 不存在: 张三",
        "type": "invalid_request_error",
        "param": "name",
        "code": "voice_not_found",
    }


async def test_a_name_that_exists_is_kept_unless_replacement_is_asked_for(api: Running) -> None:
    assert (await upload(api.http, "carol", sample(1.5), ref_text="first")).status_code == 201
    before = (folder_of(api) / "carol.wav").read_bytes()
    refused = await upload(api.http, "carol", sample(3.0))
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "voice_exists"
    assert "replace=true" in refused.json()["error"]["message"]
    assert (folder_of(api) / "carol.wav").read_bytes() == before
    replaced = await upload(api.http, "carol", sample(3.0), replace="true")
    assert replaced.status_code == 201
    assert abs(replaced.json()["duration"] - 3.0) < 0.1
    meta = read_meta(folder_of(api) / "carol.wav")
    assert meta is not None and meta.ref_text is None
    assert files(folder_of(api)) == ["carol.wav"]


# --- every limit: a clear error naming it, and nothing stored -------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "status", "param", "message"),
    [
        (
            "x",
            b"this is not audio at all" * 100,
            400,
            "audio_sample",
            "audio_sample 无法解码为音频（支持 wav/flac/mp3/ogg/webm/m4a）",
        ),
        ("x", sample(0.5), 400, "audio_sample", "audio_sample 时长 0.5 秒，必须在 1 到 30 秒之间"),
        ("x", sample(31.0), 400, "audio_sample", "audio_sample 时长超过 30 秒，必须在 1 到 30 秒之间"),
        ("../x", sample(), 400, "name", "name 只能包含字母（任何文字）、数字、_ 和 -"),
        ("a/b", sample(), 400, "name", "name 只能包含字母（任何文字）、数字、_ 和 -"),
        ("a\x00b", sample(), 400, "name", "name 只能包含字母（任何文字）、数字、_ 和 -"),
        ("..", sample(), 400, "name", "name 只能包含字母（任何文字）、数字、_ 和 -"),
        ("a b", sample(), 400, "name", "name 只能包含字母（任何文字）、数字、_ 和 -"),
        ("", sample(), 400, "name", "缺少有效的 name"),
        ("n" * 65, sample(), 400, "name", "name 过长：最多 64 个字符"),
    ],
    ids=[
        "not-audio",
        "too-short",
        "too-long",
        "dotdot-slash",
        "slash",
        "nul",
        "dotdot",
        "space",
        "empty",
        "long-name",
    ],
)
async def test_a_bad_upload_is_refused_naming_the_limit_and_leaves_nothing(
    api: Running, name: str, data: bytes, status: int, param: str, message: str
) -> None:
    reply = await upload(api.http, name, data)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert (error["message"], error["param"], error["type"]) == (message, param, "invalid_request_error")
    assert files(folder_of(api)) == []
    assert not list(Path(api.service.config.voices_dir).parent.glob("**/x*"))


async def test_an_upload_over_the_size_limit_is_413_and_leaves_nothing(start_http: StartServer) -> None:
    from indextts_server.core.config import VoiceLimits

    api = await start_http(voice_limits=VoiceLimits(max_bytes=50_000))
    reply = await upload(api.http, "big", sample(2.0))  # ~88 kB of WAV
    assert reply.status_code == 413
    assert reply.json()["error"]["message"] == "audio_sample 过大：最多 50000 字节"
    assert reply.json()["error"]["param"] == "audio_sample"
    assert files(folder_of(api)) == []


async def test_the_count_limit_refuses_a_new_voice_but_not_a_replacement(start_http: StartServer) -> None:
    from indextts_server.core.config import VoiceLimits

    api = await start_http(voice_limits=VoiceLimits(max_count=1))
    assert (await upload(api.http, "one", sample())).status_code == 201
    refused = await upload(api.http, "two", sample())
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == "声音库已满：最多 1 个声音，请先删除不用的声音"
    assert (await upload(api.http, "one", sample(), replace="true")).status_code == 201
    assert files(folder_of(api)) == ["one.wav"]


async def test_an_upload_without_a_file_names_the_missing_field(api: Running) -> None:
    reply = await call(
        "POST", f"{api.http}/v1/audio/voices", data={"name": "x"}, files={"other": ("a", b"1")}
    )
    assert (reply.status_code, reply.json()["error"]["param"]) == (400, "audio_sample")
    reply = await call("POST", f"{api.http}/v1/audio/voices", json={"name": "x"})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "请求体必须是 multipart/form-data"


def test_names_are_letters_of_any_script_digits_underscore_and_dash() -> None:
    for good in ("alice", "Ünïcode", "张三", "मेरा", "ไทย", "Ελένη", "a_b-3"):
        assert check_voice_name(good, 64)
    for bad in ("a.b", ".", "a\\b", "a\nb", "-\u0301x\u200b", "😀", "\u0301a"):
        with pytest.raises(VoiceError):
            check_voice_name(bad, 64)
    # one name however it is typed: the composed and decomposed forms are the same voice
    assert check_voice_name("e\u0301", 64) == "\u00e9"


async def test_a_leftover_of_an_interrupted_upload_is_removed_at_start(tmp_path: Path) -> None:
    from indextts_server.core.config import VoiceLimits
    from indextts_server.io.audio.voices import VoiceLibrary

    (tmp_path / ".tmp-123.wav").write_bytes(b"half a voice")
    library = VoiceLibrary(tmp_path, VoiceLimits())
    library.prepare()
    assert files(tmp_path) == []
    assert library.list() == []


# --- voices over the WebSocket --------------------------------------------------------------------


async def test_a_voice_uploaded_over_http_speaks_over_the_websocket(start_http: StartServer) -> None:
    engine = JobsEngine()
    api = await start_http(engine)
    await upload(api.http, "dave", sample(2.0))
    await upload(api.http, "erin", sample(1.5))
    async with api.connect() as client:
        request = tts(voice="dave", emo_mode="audio", emo_voice="erin")
        del request["prompt_audio"]
        _, wav = await client.request(request)
    pcm, rate, _ = decode_wav(wav)
    assert rate == SR and len(pcm) > 0
    (job,) = engine.jobs
    assert job.prompt_audio == stored(api, "dave")
    assert (job.emo_mode, job.emo_audio) == ("audio", stored(api, "erin"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"voice": "nobody"}, "voice 不存在: nobody"),
        ({"voice": "../etc/passwd"}, "voice 不存在: ../etc/passwd"),
        ({"voice": 3}, "voice 必须是字符串（声音库中的名称）"),
        (
            {"voice": "dave", "prompt_audio": "asset/zero_shot_prompt.wav"},
            "prompt_audio 与 voice 只能提供一个",
        ),
        ({"emo_mode": "audio", "emo_voice": "nobody"}, "emo_voice 不存在: nobody"),
        (
            {"emo_mode": "audio", "emo_voice": "dave", "emo_audio": "asset/emo_prompt.wav"},
            "emo_audio 与 emo_voice 只能提供一个",
        ),
    ],
)
async def test_a_bad_voice_field_is_a_clear_error_naming_it(
    api: Running, fields: dict[str, Any], message: str
) -> None:
    await upload(api.http, "dave", sample(2.0))
    request = tts(**fields)
    if "voice" in fields and "prompt_audio" not in fields:
        del request["prompt_audio"]
    async with api.connect() as client:
        assert await client.error(request) == client.error_reply(message)
        await client.request(tts())  # and the connection carries on


async def test_the_contracts_requests_are_unchanged_by_the_voice_fields(client: Client) -> None:
    request = tts()
    del request["prompt_audio"]
    assert await client.error(request) == client.error_reply("缺少有效的 prompt_audio")
    assert await client.error(tts(prompt_audio=None)) == client.error_reply("缺少有效的 prompt_audio")
    assert await client.error(tts(emo_mode="audio")) == client.error_reply(
        "情感参考音频模式需要提供 emo_audio"
    )


def test_a_voice_survives_a_restart_and_is_usable_by_name(tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    args = ["--engine", "tone", "--port", "0", "--voices-dir", str(voices)]
    first = CliServer(args)
    try:
        with httpx.Client(timeout=30) as http:
            reply = http.post(
                f"{first.http}/v1/audio/voices",
                data={"name": "erin"},
                files={"audio_sample": ("e.flac", sample(2, "FLAC"))},
            )
            assert reply.status_code == 201
    finally:
        assert first.stop() == 0
    second = CliServer(args)
    try:
        with httpx.Client(timeout=30) as http:
            assert [v["id"] for v in http.get(f"{second.http}/v1/audio/voices").json()["voices"]] == [
                "default",
                "erin",
            ]
            speech = http.post(
                f"{second.http}/v1/audio/speech",
                json={"input": "你好。", "voice": "erin", "response_format": "wav"},
            )
            assert speech.status_code == 200
            assert decode_wav(speech.content)[1] == SR
    finally:
        assert second.stop() == 0


def test_every_limit_is_a_flag_with_its_default() -> None:
    from indextts_server.core.config import VoiceLimits
    from indextts_server.io.operations.flags import parse

    defaults = parse([], "indextts-server", "").server
    assert (defaults.voices_dir, defaults.voice_limits) == ("voices", VoiceLimits())
    assert VoiceLimits() == VoiceLimits(
        max_bytes=10 * 1024 * 1024, min_seconds=1.0, max_seconds=30.0, max_count=1000, max_name_chars=64
    )
    args = [
        "--voices-dir", "/srv/voices", "--voice-max-bytes", "5000", "--voice-min-seconds", "2",
        "--voice-max-seconds", "9", "--voice-max-count", "3", "--voice-name-max-chars", "10",
    ]  # fmt: skip
    config = parse(args, "indextts-server", "").server
    assert config.voices_dir == "/srv/voices"
    assert config.voice_limits == VoiceLimits(
        max_bytes=5000, min_seconds=2.0, max_seconds=9.0, max_count=3, max_name_chars=10
    )
