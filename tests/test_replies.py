"""Reply builders and the request → job mapping, without a socket: what goes out is decided in the core."""

from __future__ import annotations

from datetime import datetime

import msgspec

from indextts_server.core.contract import replies
from indextts_server.core.contract.decode import decode_request
from indextts_server.core.contract.jobs import audio_fields, delivery_from, job_from
from indextts_server.core.contract.protocol import Timing, TtsStream
from indextts_server.core.engine import SynthesisJob
from indextts_server.core.tasks import CONTRACT_DELIVERY, Delivery, Task

EXTENDED = Delivery(stream=True, format="flac", extended=True)
TIMING = Timing(queue_wait=0.5, first_audio=1.0, total=2.0, audio_seconds=3.0, rtf=0.5)


def as_json(reply: msgspec.Struct) -> object:
    return msgspec.json.decode(msgspec.json.encode(reply))


def request(**fields: object) -> TtsStream:
    frame = {"type": "tts_stream", "text": "你好", "prompt_audio": "p.wav", **fields}
    decoded = decode_request(msgspec.json.encode(frame), max_text_chars=100)
    assert isinstance(decoded, TtsStream)
    return decoded


def test_welcome_is_the_contracts() -> None:
    assert as_json(replies.welcome("s")) == {
        "status": "success",
        "session_id": "s",
        "message": "已连接到 IndexTTS WebSocket",
        "usage": '发送 {"type":"tts_stream", "text":"...", "emo_mode":"none/audio/vector/text", ...} 开始合成',
    }


def test_a_contract_request_gets_exactly_the_contracts_replies() -> None:
    assert as_json(replies.queued("t", "s", CONTRACT_DELIVERY, 3)) == {
        "type": "queued",
        "task_id": "t",
        "session_id": "s",
        "message": "任务已加入队列，等待处理",
    }
    assert as_json(replies.start("t", "s", CONTRACT_DELIVERY)) == {
        "type": "start",
        "task_id": "t",
        "session_id": "s",
        "message": "开始生成音频",
    }
    assert as_json(replies.end("t", "s", CONTRACT_DELIVERY, TIMING)) == {
        "type": "end",
        "task_id": "t",
        "session_id": "s",
        "message": "生成完成",
    }


def test_an_extended_request_also_gets_position_format_and_timing() -> None:
    assert as_json(replies.queued("t", "s", EXTENDED, 3)) == {
        "type": "queued",
        "task_id": "t",
        "session_id": "s",
        "message": "任务已加入队列，等待处理",
        "position": 3,
    }
    assert as_json(replies.start("t", "s", EXTENDED)) == {
        "type": "start",
        "task_id": "t",
        "session_id": "s",
        "message": "开始生成音频",
        "format": "flac",
        "sample_rate": 22050,
        "stream": True,
    }
    end = as_json(replies.end("t", "s", EXTENDED, TIMING))
    assert isinstance(end, dict)
    assert end["timing"] == {
        "queue_wait": 0.5,
        "first_audio": 1.0,
        "total": 2.0,
        "audio_seconds": 3.0,
        "rtf": 0.5,
    }


def test_error_carries_the_task_id_or_null() -> None:
    assert as_json(replies.error("s", "消息不是有效的 JSON")) == {
        "status": "error",
        "task_id": None,
        "session_id": "s",
        "message": "消息不是有效的 JSON",
    }
    assert as_json(replies.error("s", "任务已取消", "t"))["task_id"] == "t"  # type: ignore[index]


def test_cancel_replies_say_whether_the_task_stopped_already() -> None:
    assert as_json(replies.cancelled("t", "s")) == {
        "type": "cancel",
        "task_id": "t",
        "session_id": "s",
        "status": "cancelled",
        "message": "任务已取消",
    }
    assert as_json(replies.cancelling("t", "s")) == {
        "type": "cancel",
        "task_id": "t",
        "session_id": "s",
        "status": "cancelling",
        "message": "任务将在当前段落完成后取消",
    }


def test_task_status_answers_the_asking_session_with_iso_timestamps() -> None:
    task = Task("t", "owner", SynthesisJob(text="a", prompt_audio="/p"), datetime(2026, 1, 2, 3, 4, 5))
    assert as_json(replies.task_status(task, "asker")) == {
        "type": "task_status",
        "session_id": "asker",
        "task_id": "t",
        "status": "pending",
        "created_at": "2026-01-02T03:04:05.000000",
        "completed_at": None,
        "error_message": None,
    }


def test_a_bare_request_takes_the_contracts_defaults() -> None:
    job = job_from(request(), {"prompt_audio": "/abs/p.wav"})
    assert job == SynthesisJob(
        text="你好",
        prompt_audio="/abs/p.wav",
        emo_mode="none",
        emo_audio=None,
        emo_alpha=1.0,
        emo_vector=None,
        emo_text=None,
        interval_silence=200,
        max_tokens=120,
        use_random=False,
        seed=None,
        quick_first=0,
    )
    assert job_from(request(emo_alpha=None, max_tokens=None, use_random=None), {"prompt_audio": "/a"}) == (
        job_from(request(), {"prompt_audio": "/a"})
    )


def test_every_field_a_request_sets_reaches_the_job() -> None:
    job = job_from(
        request(emo_alpha=0.3, interval_silence=0, max_tokens=40, use_random=True, seed=7, quick_first=10),
        {"prompt_audio": "/a"},
    )
    assert (
        job.emo_alpha,
        job.interval_silence,
        job.max_tokens,
        job.use_random,
        job.seed,
        job.quick_first,
    ) == (
        0.3,
        0,
        40,
        True,
        7,
        10,
    )


def test_fields_of_another_emo_mode_are_dropped() -> None:
    vector = [0.1] * 8
    both = {"emo_audio": "e.wav", "emo_vector": vector, "emo_text": "开心"}
    assert audio_fields(request(emo_mode="vector", **both)) == {"prompt_audio": "p.wav"}
    job = job_from(request(emo_mode="vector", **both), {"prompt_audio": "/a"})
    assert (job.emo_audio, job.emo_vector, job.emo_text) == (None, tuple(vector), None)
    job = job_from(request(emo_mode="text", **both), {"prompt_audio": "/a"})
    assert (job.emo_audio, job.emo_vector, job.emo_text) == (None, None, "开心")


def test_audio_mode_checks_and_uses_the_emotion_reference() -> None:
    audio = request(emo_mode="audio", emo_audio="e.wav")
    assert audio_fields(audio) == {"prompt_audio": "p.wav", "emo_audio": "e.wav"}
    job = job_from(audio, {"prompt_audio": "/a", "emo_audio": "/e"})
    assert (job.prompt_audio, job.emo_audio) == ("/a", "/e")


def test_delivery_is_the_contracts_unless_an_extension_is_set() -> None:
    assert delivery_from(request()) == CONTRACT_DELIVERY
    assert delivery_from(request(seed=3)) == CONTRACT_DELIVERY
    assert delivery_from(request(details=True)) == Delivery(extended=True)
    assert delivery_from(request(stream=True, format="mp3")) == Delivery(
        stream=True, format="mp3", extended=True
    )


def test_a_library_voice_stands_in_for_a_path() -> None:
    voiced = request(prompt_audio=None, voice="alice", emo_mode="audio", emo_voice="bob")
    assert audio_fields(voiced) == {"voice": "alice", "emo_voice": "bob"}
    job = job_from(voiced, {"voice": "/v/alice.wav", "emo_voice": "/v/bob.wav"})
    assert (job.prompt_audio, job.emo_audio) == ("/v/alice.wav", "/v/bob.wav")
