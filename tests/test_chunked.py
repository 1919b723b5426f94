"""Streaming inside a segment (``chunked``): opt-in, its pieces as frames, the cue after them."""

from __future__ import annotations

import numpy as np

from indextts_server.core.agents.cartesia import AgentMessage, settings
from indextts_server.core.contract.jobs import job_from
from indextts_server.core.contract.protocol import TtsStream
from indextts_server.core.engine import SAMPLE_RATE, ChunkSchedule
from indextts_server.core.openai import SpeechRequest, speech_job
from indextts_server.io.engines.tone import ToneEngine

from .conftest import Client, Running, StartServer, decode_wav, tts

LONG = "这是一个很长的句子里面有许多许多的文字用来测试分块流式输出的效果是否正常工作并且没有问题"
"""One segment of several seconds of tone audio (no punctuation inside, under ``max_tokens``)."""
PATHS = {"prompt_audio": "/p.wav"}


async def _stream(client: Client, **fields: object) -> tuple[list[str], list[bytes]]:
    """Send a streamed request; the kinds of its replies in order, and its audio frames."""
    await client.send(tts(LONG, stream=True, timestamps=True, **fields))
    kinds, frames = [], []
    while True:
        message = await client.recv()
        if isinstance(message, bytes):
            kinds.append("audio")
            frames.append(message)
            continue
        kinds.append(message["type"])
        if message["type"] in ("end", "error") or message.get("status") == "error":
            return kinds, frames


def _joined(frames: list[bytes]) -> np.ndarray:
    return np.concatenate([decode_wav(frame)[0] for frame in frames])


def test_the_schedule_starts_small_and_grows_to_its_cap() -> None:
    sizes = ChunkSchedule().sizes()
    assert [next(sizes) for _ in range(5)] == [0.8, 1.6, 3.2, 4.0, 4.0]
    custom = ChunkSchedule(first=0.5, growth=1.5, cap=1.0).sizes()
    assert [next(custom) for _ in range(3)] == [0.5, 0.75, 1.0]


def test_chunked_reaches_the_job_only_with_stream() -> None:
    streamed = TtsStream(text="你好", prompt_audio="/p.wav", stream=True, chunked=True)
    whole = TtsStream(text="你好", prompt_audio="/p.wav", chunked=True)
    unsaid = TtsStream(text="你好", prompt_audio="/p.wav", stream=True)
    assert job_from(streamed, PATHS).chunked is True
    assert job_from(whole, PATHS).chunked is False  # whole-file delivery never chunks
    assert job_from(unsaid, PATHS).chunked is None  # the server's default decides


def test_the_http_body_and_the_agent_message_carry_chunked() -> None:
    http = SpeechRequest(input="你好", voice="v", chunked=True)
    assert speech_job(http, {"voice": "/v.wav"}).chunked is True
    whole = SpeechRequest(input="你好", voice="v", chunked=True, stream=False)
    assert speech_job(whole, {"voice": "/v.wav"}).chunked is False
    agent = settings(AgentMessage(context_id="c", transcript="你好", chunked=True))
    assert agent.job("你好", "/v.wav").chunked is True
    assert settings(AgentMessage(context_id="c", transcript="你好")).job("你好", "/v.wav").chunked is None


async def test_a_chunked_segment_streams_as_several_frames_with_its_cue_after_them(
    start_server: StartServer,
) -> None:
    server: Running = await start_server()
    async with server.connect() as client:
        whole_kinds, whole_frames = await _stream(client)
        kinds, frames = await _stream(client, chunked=True)
    assert whole_kinds == ["queued", "start", "cue", "audio", "end"]
    # 0.8 s, 1.6 s, ... then the rest: the cue waits for the segment's last piece.
    pieces = len(frames)
    assert pieces >= 3
    assert kinds == ["queued", "start", *["audio"] * (pieces - 1), "cue", "audio", "end"]
    assert [len(decode_wav(frame)[0]) for frame in frames[:2]] == [
        int(0.8 * SAMPLE_RATE),
        int(1.6 * SAMPLE_RATE),
    ]
    assert np.array_equal(_joined(frames), _joined(whole_frames))


async def test_the_server_default_chunks_streams_that_do_not_say(start_server: StartServer) -> None:
    server: Running = await start_server(ToneEngine(chunked=True))
    async with server.connect() as client:
        default_kinds, _ = await _stream(client)
        off_kinds, _ = await _stream(client, chunked=False)
    assert default_kinds.count("audio") >= 3
    assert off_kinds.count("audio") == 1


async def test_a_chunked_agent_sentence_has_the_same_audio_and_words_as_unchunked(
    start_http: StartServer,
) -> None:
    from .test_agents import agent, audio_of, words_of

    server = await start_http()
    sentence = "This is a long sentence with many words to make several seconds of audio for chunks."
    async with agent(server) as client:
        whole = await client.speak(sentence)
        chunked = await client.speak(sentence, context_id="c2", chunked=True)
    assert audio_of(chunked, "c2") == audio_of(whole)
    assert words_of(chunked) == words_of(whole)
    # the words come after the sentence's first pieces, not before all of its audio
    kinds = [reply["type"] for reply in chunked]
    assert kinds.index("chunk") < kinds.index("timestamps")
