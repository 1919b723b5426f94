"""The audio as real clients read it: OpenAI's 24 kHz pcm, every sample rate, the streamed WAV header."""

from __future__ import annotations

import io
import struct
from typing import Any

import av
import numpy as np
import pytest

from indextts_server.core.engine import SAMPLE_RATE, SAMPLE_RATES

from .conftest import Running, StartServer, decode_wav, tts
from .test_speech import PCM_RATE, THREE_SEGMENTS, in_thread, sdk

TEXT = "第一段文字在这里。第二段文字在这里。"
RATES: list[Any] = list(SAMPLE_RATES)


@pytest.fixture
async def api(start_http: StartServer) -> Running:
    return await start_http()


def speak(
    api: Running, response_format: str, *, stream: bool = True, **extra: Any
) -> tuple[dict[str, str], bytes]:
    """One request through the openai SDK (streamed with ``with_streaming_response``)."""
    client = sdk(api)
    fields: dict[str, Any] = {"max_tokens": 20, **extra}
    if not stream:
        fields["stream"] = False
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=response_format, extra_body=fields,  # type: ignore[arg-type]
    ) as response:  # fmt: skip
        return dict(response.headers), response.read()


def open_webui_pcm(content_type: str) -> tuple[str, int, int]:
    """What Open WebUI takes from a pcm response's Content-Type: the type, and ``rate=`` and
    ``channels=`` among its parameters (24000 and 1 when absent)."""
    kind, *parameters = (part.strip() for part in content_type.split(";"))
    values = dict(part.split("=", 1) for part in parameters if "=" in part)
    return kind.lower(), int(values.get("rate", 24000)), int(values.get("channels", 1))


def wav_seconds(data: bytes) -> float:
    pcm, rate, _ = decode_wav(data)
    return len(pcm) / rate


@pytest.mark.parametrize("stream", [True, False])
async def test_pcm_read_at_24khz_lasts_as_long_as_the_wav(api: Running, stream: bool) -> None:
    # The openai SDK's player, pipecat, livekit and Home Assistant play pcm at 24000, no setting.
    _, wav = await in_thread(speak, api, "wav", stream=False)
    headers, pcm = await in_thread(speak, api, "pcm", stream=stream)
    assert len(pcm) / 2 / PCM_RATE == pytest.approx(wav_seconds(wav), abs=0.002)
    assert headers["content-type"] == "audio/pcm;rate=24000"


async def test_sse_pcm_read_at_24khz_lasts_as_long_as_the_wav(api: Running) -> None:
    import base64
    import json

    import httpx

    _, wav = await in_thread(speak, api, "wav", stream=False)

    def sse() -> bytes:
        body = {"input": TEXT, "response_format": "pcm", "stream_format": "sse", "max_tokens": 20}
        with (
            httpx.Client(timeout=30) as http,
            http.stream("POST", f"{api.http}/v1/audio/speech", json=body) as r,
        ):
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        return b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")

    pcm = await in_thread(sse)
    assert len(pcm) / 2 / PCM_RATE == pytest.approx(wav_seconds(wav), abs=0.002)


async def test_open_webui_reads_the_rate_and_channels_of_pcm_from_the_content_type(api: Running) -> None:
    for extra, rate in (({}, 24000), ({"sample_rate": 16000}, 16000), ({"sample_rate": 8000}, 8000)):
        headers, data = await in_thread(speak, api, "pcm", **extra)
        assert open_webui_pcm(headers["content-type"]) == ("audio/pcm", rate, 1)
    # And the samples are little-endian, those of the WAV of the same request.
    _, wav = await in_thread(speak, api, "wav", stream=False, sample_rate=8000)
    assert np.array_equal(np.frombuffer(data, "<i2"), decode_wav(wav)[0])


@pytest.mark.parametrize("rate", RATES)
async def test_every_sample_rate_gives_that_rate_and_the_same_duration(api: Running, rate: int) -> None:
    _, reference = await in_thread(speak, api, "wav", stream=False)
    expected = wav_seconds(reference)
    for stream in (True, False):
        headers, wav = await in_thread(speak, api, "wav", stream=stream, sample_rate=rate)
        if stream:
            wav = (
                wav[:4]
                + struct.pack("<I", len(wav) - 8)
                + wav[8:40]
                + struct.pack("<I", len(wav) - 44)
                + wav[44:]
            )
        pcm, found, _ = decode_wav(wav)
        assert found == rate and len(pcm) / rate == pytest.approx(expected, abs=1 / rate + 1e-9)
        headers, raw = await in_thread(speak, api, "pcm", stream=stream, sample_rate=rate)
        assert headers["content-type"] == f"audio/pcm;rate={rate}"
        assert len(raw) // 2 == len(pcm)


@pytest.mark.parametrize("rate", RATES)
async def test_a_streamed_wav_starts_with_the_canonical_44_byte_header(api: Running, rate: int) -> None:
    _, data = await in_thread(speak, api, "wav", sample_rate=rate)
    # pipecat strips exactly 44 bytes and reads the rate at bytes 24-28.
    riff, size, wave, fmt, fmt_size, codec, channels, found, byte_rate, align, bits, data_id, data_size = (
        struct.unpack("<4sI4s4sIHHIIHH4sI", data[:44])
    )
    assert (riff, wave, fmt, fmt_size, codec, channels, bits) == (b"RIFF", b"WAVE", b"fmt ", 16, 1, 1, 16)
    assert (found, byte_rate, align) == (rate, rate * 2, 2)
    assert (data_id, size, data_size) == (b"data", 0xFFFFFFFF, 0xFFFFFFFF)
    assert (len(data) - 44) % 2 == 0


@pytest.mark.parametrize(("asked", "encoded"), [(None, 24000), (8000, 8000), (22050, 24000), (44100, 48000)])
async def test_opus_keeps_its_48khz_family(api: Running, asked: int | None, encoded: int) -> None:
    extra = {} if asked is None else {"sample_rate": asked}
    _, data = await in_thread(speak, api, "opus", stream=False, **extra)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        # Ogg Opus always decodes at 48 kHz; the rate it was made from is in its header.
        assert stream.codec_context.name == "opus"
        rate = int(container.streams.audio[0].metadata.get("input_sample_rate", 0) or _opus_input_rate(data))
    assert rate == encoded


def _opus_input_rate(data: bytes) -> int:
    """The input sample rate field of the OpusHead packet (RFC 7845, bytes 12-16)."""
    head = data.index(b"OpusHead")
    return int(struct.unpack("<I", data[head + 12 : head + 16])[0])


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
async def test_mp3_aac_and_flac_at_a_sample_rate_decode_at_it(api: Running, rate: int) -> None:
    _, reference = await in_thread(speak, api, "wav", stream=False)
    for response_format in ("mp3", "aac", "flac"):
        _, data = await in_thread(speak, api, response_format, stream=False, sample_rate=rate)
        with av.open(io.BytesIO(data), mode="r") as container:
            frames = list(container.decode(audio=0))
        assert frames[0].sample_rate == rate
        seconds = sum(frame.samples for frame in frames) / rate
        # A codec's priming and last frame (MP3 1152 samples, AAC 1024) may add up to two frames.
        assert abs(seconds - wav_seconds(reference)) < 0.03 + 2 * 1152 / rate, response_format


# --- the same field on the WebSocket, opt-in ------------------------------------------------------


async def test_without_sample_rate_the_websocket_sends_the_contracts_22050_hz_wav(api: Running) -> None:
    async with api.connect() as client:
        _, wav = await client.request(tts(THREE_SEGMENTS))
    assert decode_wav(wav)[1] == SAMPLE_RATE


@pytest.mark.parametrize("stream", [False, True])
async def test_sample_rate_on_the_websocket_resamples_and_start_says_so(api: Running, stream: bool) -> None:
    async with api.connect() as client:
        _, reference = await client.request(tts(THREE_SEGMENTS, max_tokens=20))
        await client.send(tts(THREE_SEGMENTS, max_tokens=20, sample_rate=16000, stream=stream))
        queued = await client.recv_json()
        start = await client.recv_json()
        assert (start["type"], start["sample_rate"], start["format"], start["stream"]) == (
            "start",
            16000,
            "wav",
            stream,
        )
        files = []
        while isinstance(message := await client.recv(), bytes):
            files.append(message)
        assert message["type"] == "end" and message["task_id"] == queued["task_id"]
    assert len(files) == (3 if stream else 1)
    decoded = [decode_wav(f) for f in files]
    assert {rate for _, rate, _ in decoded} == {16000}
    seconds = sum(len(pcm) for pcm, _, _ in decoded) / 16000
    assert seconds == pytest.approx(wav_seconds(reference), abs=1 / 16000 + 1e-9)


async def test_a_bad_sample_rate_on_the_websocket_is_refused_naming_the_field(api: Running) -> None:
    async with api.connect() as client:
        reply = await client.error(tts(sample_rate=12345))
        assert reply == client.error_reply(
            "sample_rate 必须是 8000/11025/12000/16000/22050/24000/32000/44100/48000 之一"
        )
        # The connection stays usable.
        _, wav = await client.request(tts("你好。"))
        assert decode_wav(wav)[1] == SAMPLE_RATE
