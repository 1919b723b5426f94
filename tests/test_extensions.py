"""Opt-in extensions: streaming, output formats, cancel, queue position and timing."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import soundfile

from indextts_server.core.engine import SAMPLE_RATE

from .conftest import Client, GatedEngine, Running, decode_wav, tts

SEGMENTED = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。"


async def read_task(client: Client) -> tuple[dict[str, Any], dict[str, Any], list[bytes], dict[str, Any]]:
    """queued, start, every binary, and the final message of one task."""
    queued = await client.recv_json()
    start = await client.recv_json()
    chunks: list[bytes] = []
    while True:
        message = await client.recv()
        if isinstance(message, bytes):
            chunks.append(message)
        else:
            return queued, start, chunks, message


async def test_contract_request_sees_exactly_the_contract_fields(client: Client) -> None:
    await client.send(tts(seed=3, use_random=True))
    queued, start, chunks, end = await read_task(client)
    assert set(queued) == set(start) == set(end) == {"type", "task_id", "session_id", "message"}
    assert len(chunks) == 1


async def test_stream_sends_one_playable_wav_per_segment(client: Client) -> None:
    request = tts(SEGMENTED, max_tokens=20, interval_silence=300)
    _, whole = await client.request(request)
    await client.send({**request, "stream": True})
    _, start, chunks, end = await read_task(client)
    assert (start["format"], start["sample_rate"], start["stream"]) == ("wav", SAMPLE_RATE, True)
    assert end["type"] == "end"
    assert len(chunks) == 3
    pieces = [decode_wav(chunk)[0] for chunk in chunks]
    assert np.array_equal(np.concatenate(pieces), decode_wav(whole)[0])
    silence = 300 * SAMPLE_RATE // 1000
    assert all(not piece[-silence:].any() for piece in pieces[:-1])  # the pause ends its segment
    assert pieces[-1][-silence:].any()


async def test_quick_first_makes_the_first_streamed_segment_shorter(client: Client) -> None:
    text = "第一句话在这。" * 6
    firsts = []
    for quick_first in (0, 24):
        await client.send(tts(text, max_tokens=20, stream=True, quick_first=quick_first))
        _, _, chunks, end = await read_task(client)
        assert end["type"] == "end"
        firsts.append(len(decode_wav(chunks[0])[0]))
    plain, quick = firsts
    assert quick < plain / 2


@pytest.mark.parametrize("audio_format", ["wav", "flac", "mp3"])
async def test_format_gives_a_decodable_file_and_start_says_so(client: Client, audio_format: str) -> None:
    _, reference = await client.request(tts())
    expected = decode_wav(reference)[0]
    await client.send(tts(format=audio_format))
    _, start, chunks, end = await read_task(client)
    assert (start["format"], start["sample_rate"]) == (audio_format, SAMPLE_RATE)
    assert end["type"] == "end"
    pcm, rate = soundfile.read(io.BytesIO(chunks[0]), dtype="int16")
    assert rate == SAMPLE_RATE
    if audio_format == "mp3":  # lossy, with encoder padding
        assert abs(len(pcm) - len(expected)) < 0.1 * SAMPLE_RATE
    else:
        assert np.array_equal(pcm, expected)


async def test_pcm_format_is_raw_little_endian_samples(client: Client) -> None:
    _, reference = await client.request(tts())
    await client.send(tts(format="pcm"))
    _, start, chunks, _ = await read_task(client)
    assert start["format"] == "pcm"
    assert np.array_equal(np.frombuffer(chunks[0], "<i2"), decode_wav(reference)[0])


async def test_details_adds_position_and_timing(client: Client) -> None:
    await client.send(tts(details=True))
    queued, start, chunks, end = await read_task(client)
    assert queued["position"] == 1
    assert start["format"] == "wav" and start["stream"] is False
    timing = end["timing"]
    assert set(timing) == {"queue_wait", "first_audio", "total", "audio_seconds", "rtf"}
    assert 0 <= timing["queue_wait"] <= timing["first_audio"] <= timing["total"]
    assert timing["audio_seconds"] == pytest.approx(len(decode_wav(chunks[0])[0]) / SAMPLE_RATE)
    assert timing["rtf"] >= 0


async def test_position_counts_the_tasks_waiting_ahead(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as client:
        await client.send(tts(SEGMENTED, max_tokens=20, details=True))
        assert (await client.recv_json())["position"] == 1
        await client.recv_json()  # start: it is running now
        await engine.first_segment()
        positions = []
        for _ in range(2):
            await client.send(tts("排队。", details=True))
            positions.append((await client.recv_json())["position"])
        assert positions == [1, 2]
        engine.release()


async def test_cancel_a_pending_task_at_once(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as client:
        await client.send(tts(SEGMENTED, max_tokens=20))
        running = (await client.recv_json())["task_id"]
        await client.recv_json()
        await engine.first_segment()
        await client.send(tts("不要了。"))
        waiting = (await client.recv_json())["task_id"]
        await client.send({"type": "cancel", "task_id": waiting})
        assert await client.recv_json() == {
            "type": "cancel",
            "task_id": waiting,
            "session_id": client.session_id,
            "status": "cancelled",
            "message": "任务已取消",
        }
        assert await client.recv_json() == client.error_reply("任务已取消", waiting)
        engine.release()
        await client.recv_audio()
        assert await client.recv_json() == client.reply("end", running)
        await client.send({"type": "task_status", "task_id": waiting})
        assert (await client.recv_json())["status"] == "cancelled"
    assert "不要了。" not in engine.texts("begin")


async def test_cancel_a_running_task_between_segments(start_server: Any) -> None:
    engine = GatedEngine()
    server: Running = await start_server(engine)
    async with server.connect() as client:
        await client.send(tts(SEGMENTED, max_tokens=20))
        task_id = (await client.recv_json())["task_id"]
        await client.recv_json()
        await engine.first_segment()
        await client.send({"type": "cancel", "task_id": task_id})
        assert await client.recv_json() == {
            "type": "cancel",
            "task_id": task_id,
            "session_id": client.session_id,
            "status": "cancelling",
            "message": "任务将在当前段落完成后取消",
        }
        # Asking again while it is stopping gets the same answer, and changes nothing.
        await client.send({"type": "cancel", "task_id": task_id})
        assert (await client.recv_json())["status"] == "cancelling"
        engine.release()
        assert await client.recv_json() == client.error_reply("任务已取消", task_id)
        await client.send({"type": "task_status", "task_id": task_id})
        reply = await client.recv_json()
        assert (reply["status"], reply["error_message"]) == ("cancelled", "任务已取消")
        await client.request(tts("之后照常。"))
    assert engine.texts("segment").count(SEGMENTED) < 3


async def test_only_the_owner_may_cancel(server: Running) -> None:
    async with server.connect() as owner, server.connect() as other:
        task_id, _ = await owner.request(tts())
        reply = await other.error({"type": "cancel", "task_id": task_id})
        assert reply == other.error_reply(f"只能取消本会话创建的任务: {task_id}", task_id)
        reply = await owner.error({"type": "cancel", "task_id": task_id})
        assert reply == owner.error_reply(f"任务已结束（completed），无法取消: {task_id}", task_id)
        reply = await owner.error({"type": "cancel", "task_id": "nope"})
        assert reply == owner.error_reply("任务不存在或已过期: nope", "nope")
