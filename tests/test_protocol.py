"""The contract's protocol, message by message, as a client sees it (tone engine, at --batch-size 1 and 8)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from indextts_server.core.engine import SAMPLE_RATE

from .conftest import (
    EMO_PROMPT,
    ISO_RE,
    UUID_RE,
    Client,
    Running,
    StartServer,
    assert_pipelined_in_order,
    decode_wav,
    tts,
)


@pytest.fixture(params=[1, 8], ids=["batch-1", "batch-8"])
async def server(start_server: StartServer, request: pytest.FixtureRequest) -> Running:
    """The contract's protocol holds one task at a time and with ``--batch-size 8`` alike."""
    return await start_server(batch_size=request.param)


async def test_welcome_has_the_contract_fields(client: Client) -> None:
    assert client.welcome == {
        "status": "success",
        "session_id": client.session_id,
        "message": "已连接到 IndexTTS WebSocket",
        "usage": '发送 {"type":"tts_stream", "text":"...", "emo_mode":"none/audio/vector/text", ...} 开始合成',
    }
    assert re.match(UUID_RE, client.session_id)


async def test_each_connection_gets_its_own_session(server: Running) -> None:
    async with server.connect() as a, server.connect() as b:
        assert a.session_id != b.session_id


async def test_request_gets_queued_start_audio_end(client: Client) -> None:
    await client.send(tts())
    queued = await client.recv_json()
    task_id = queued["task_id"]
    assert re.match(UUID_RE, task_id)
    assert queued == client.reply("queued", task_id)
    assert await client.recv_json() == client.reply("start", task_id)
    wav = await client.recv_audio()
    assert await client.recv_json() == client.reply("end", task_id)
    pcm, rate, info = decode_wav(wav)
    assert (rate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    # 12 CJK characters at ~4/s plus "AI" at ~14 letters/s: about 3.1 s of audio, not silence.
    assert 2.9 < len(pcm) / SAMPLE_RATE < 3.4
    assert np.abs(pcm).max() > 1000


async def test_each_request_gets_a_fresh_task_id(client: Client) -> None:
    first, _ = await client.request(tts())
    second, _ = await client.request(tts())
    assert first != second


async def test_request_defaults_apply_when_optional_fields_are_absent(client: Client) -> None:
    # Two sentences of 70 tokens: more than the default max_tokens (120) together, so the default
    # segmentation and the default pause between segments (200 ms) both show in the audio.
    text = "今" * 69 + "。" + "天" * 69 + "。"
    minimal = {"type": "tts_stream", "text": text, "prompt_audio": "asset/zero_shot_prompt.wav"}
    _, wav = await client.request(minimal)
    _, wav_explicit = await client.request(tts(text, max_tokens=120, interval_silence=200))
    assert wav == wav_explicit
    _, one_segment = await client.request(tts(text, max_tokens=140, interval_silence=200))
    _, no_pause = await client.request(tts(text, max_tokens=120, interval_silence=0))
    assert wav != one_segment and wav != no_pause
    pause = 200 * SAMPLE_RATE // 1000
    assert len(decode_wav(wav)[0]) == len(decode_wav(no_pause)[0]) + pause


async def test_explicit_nulls_mean_defaults(client: Client) -> None:
    _, wav = await client.request(
        tts("你好。", emo_mode=None, emo_audio=None, emo_vector=None, max_tokens=None)
    )
    _, wav_default = await client.request(tts("你好。"))
    assert wav == wav_default


async def test_same_request_gives_same_audio(client: Client) -> None:
    _, a = await client.request(tts())
    _, b = await client.request(tts())
    assert a == b


async def test_use_random_changes_the_audio(client: Client) -> None:
    _, plain = await client.request(tts())
    _, random_a = await client.request(tts(use_random=True))
    _, random_b = await client.request(tts(use_random=True))
    assert random_a != plain
    assert random_a != random_b


async def test_seed_makes_random_audio_repeatable(client: Client) -> None:
    _, a = await client.request(tts(use_random=True, seed=7))
    _, b = await client.request(tts(use_random=True, seed=7))
    assert a == b


async def test_every_emotion_mode_is_accepted_and_changes_the_sound(client: Client) -> None:
    _, none = await client.request(tts())
    _, audio = await client.request(tts(emo_mode="audio", emo_audio=EMO_PROMPT, emo_alpha=0.8))
    _, vector = await client.request(
        tts(emo_mode="vector", emo_vector=[0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.0])
    )
    _, text = await client.request(tts(emo_mode="text", emo_text="我太开心了！", emo_alpha=0.9))
    assert len({none, audio, vector, text}) == 4


async def test_long_text_is_split_with_interval_silence(client: Client) -> None:
    # Three 6-token sentences fit in one 20-token segment: no pause.
    text = "第一句在这里。第二句在这里。第三句在这里。"
    _, wav = await client.request(tts(text, max_tokens=20, interval_silence=500))
    pcm, _, _ = decode_wav(wav)
    assert _silent_runs(pcm, 0.4) == 0
    # Three 11-token sentences need three segments: two pauses.
    text = "第一句话在这里呀呀呀呀。第二句话在这里呀呀呀呀。第三句话在这里呀呀呀呀。"
    _, wav = await client.request(tts(text, max_tokens=20, interval_silence=500))
    pcm, _, _ = decode_wav(wav)
    assert _silent_runs(pcm, 0.4) == 2


async def test_interval_silence_sets_the_pause_length(client: Client) -> None:
    text = "第一句话在这里呀呀呀呀。第二句话在这里呀呀呀呀。"
    _, short = await client.request(tts(text, max_tokens=20, interval_silence=0))
    _, long = await client.request(tts(text, max_tokens=20, interval_silence=1000))
    short_pcm, _, _ = decode_wav(short)
    long_pcm, _, _ = decode_wav(long)
    assert len(long_pcm) - len(short_pcm) == SAMPLE_RATE


def _silent_runs(pcm: np.ndarray, seconds: float) -> int:
    """How many runs of exact zeros last at least ``seconds``."""
    silent = np.concatenate([[False], pcm == 0, [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    lengths = edges[1::2] - edges[::2]
    return int((lengths >= seconds * SAMPLE_RATE).sum())


async def test_task_status_of_a_completed_task(client: Client) -> None:
    task_id, _ = await client.request(tts())
    await client.send({"type": "task_status", "task_id": task_id})
    reply = await client.recv_json()
    assert list(reply) == [
        "type",
        "session_id",
        "task_id",
        "status",
        "created_at",
        "completed_at",
        "error_message",
    ]
    assert reply["type"] == "task_status"
    assert reply["session_id"] == client.session_id
    assert reply["task_id"] == task_id
    assert reply["status"] == "completed"
    assert reply["error_message"] is None
    assert re.match(ISO_RE, reply["created_at"])
    assert re.match(ISO_RE, reply["completed_at"])
    assert reply["created_at"] <= reply["completed_at"]


async def test_task_status_of_an_unknown_task_is_an_error(client: Client) -> None:
    reply = await client.error({"type": "task_status", "task_id": "no-such-task"})
    assert reply == client.error_reply("任务不存在或已过期: no-such-task", "no-such-task")


async def test_task_status_works_from_another_connection(server: Running) -> None:
    async with server.connect() as a:
        task_id, _ = await a.request(tts())
    async with server.connect() as b:
        await b.send({"type": "task_status", "task_id": task_id})
        reply = await b.recv_json()
        assert (reply["status"], reply["session_id"]) == ("completed", b.session_id)


async def test_pipelined_requests_on_one_connection_each_get_their_messages_in_order(
    client: Client,
) -> None:
    texts = ["第一个请求。", "第二个请求，长一点。", "第三个。"]
    for text in texts:
        await client.send(tts(text))
    messages = [await client.recv() for _ in range(4 * len(texts))]
    queued = [m for m in messages if isinstance(m, dict) and m.get("type") == "queued"]
    ids = [m["task_id"] for m in queued]
    assert len(set(ids)) == 3
    # Per task: queued, then start, audio, end; tasks run in the order they were sent.
    flow = [(m["type"], m["task_id"]) if isinstance(m, dict) else ("audio", None) for m in messages]
    starts = [task for kind, task in flow if kind == "start"]
    ends = [task for kind, task in flow if kind == "end"]
    assert starts == ids and ends == ids
    for task in ids:
        positions = [i for i, (kind, t) in enumerate(flow) if t == task]
        kinds = [flow[i][0] for i in positions]
        assert kinds == ["queued", "start", "end"]
        start, end = positions[1], positions[2]
        assert flow[end - 1][0] == "audio" and flow[start:end].count(("audio", None)) == 1


async def test_pipelined_streamed_requests_get_each_tasks_replies_together_and_in_order(
    client: Client,
) -> None:
    # Two, three and one segments of 11 tokens at max_tokens 20, each streamed per segment.
    sentence = "这一句话在这里呀呀呀呀。"
    requests = [tts(sentence * count, max_tokens=20, stream=True) for count in (2, 3, 1)]
    await assert_pipelined_in_order(client, requests, binaries=[2, 3, 1])
