"""Bad input: one clear error naming the field, and the connection keeps working.

Every case runs against the pure decoder (no socket); a handful also run end to end, to show the
transport sends the decoder's text as the contract's error and the connection stays usable.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from trio_websocket import ConnectionClosed

from indextts_server.core.contract.decode import RequestError, decode_request

from .conftest import Client, Running, tts

VECTOR_ERROR = "emo_vector 必须是由 8 个 0.0 到 1.0 之间的数字组成的数组"

CASES: list[tuple[str, Any, str]] = [
    # The contract's own texts.
    ("text missing", {"type": "tts_stream", "prompt_audio": "asset/zero_shot_prompt.wav"}, "缺少有效的 text"),
    ("text empty", tts(""), "缺少有效的 text"),
    ("text blank", tts("   \n"), "缺少有效的 text"),
    ("text not a string", tts(123), "缺少有效的 text"),
    ("text null", tts(None), "缺少有效的 text"),
    ("emo_mode unknown", tts(emo_mode="happy"), "emo_mode 必须是 none/audio/vector/text"),
    ("emo_mode not a string", tts(emo_mode=1), "emo_mode 必须是 none/audio/vector/text"),
    ("audio mode without emo_audio", tts(emo_mode="audio"), "情感参考音频模式需要提供 emo_audio"),
    (
        "audio mode with empty emo_audio",
        tts(emo_mode="audio", emo_audio=""),
        "情感参考音频模式需要提供 emo_audio",
    ),
    ("vector mode without emo_vector", tts(emo_mode="vector"), "情感向量模式需要提供 emo_vector"),
    ("text mode without emo_text", tts(emo_mode="text"), "情感文本引导模式需要提供 emo_text"),
    (
        "text mode with blank emo_text",
        tts(emo_mode="text", emo_text=" "),
        "情感文本引导模式需要提供 emo_text",
    ),
    # The project's texts, each naming its field.
    ("prompt_audio missing", {"type": "tts_stream", "text": "你好"}, "缺少有效的 prompt_audio"),
    ("prompt_audio not a string", tts(prompt_audio=5), "缺少有效的 prompt_audio"),
    ("prompt_audio empty", tts(prompt_audio=""), "缺少有效的 prompt_audio"),
    (
        "emo_audio not a string",
        tts(emo_mode="audio", emo_audio=["a"]),
        "emo_audio 必须是字符串（服务器上的音频文件路径）",
    ),
    ("emo_vector too short", tts(emo_mode="vector", emo_vector=[0.1] * 7), VECTOR_ERROR),
    ("emo_vector too long", tts(emo_mode="vector", emo_vector=[0.1] * 9), VECTOR_ERROR),
    ("emo_vector value above 1", tts(emo_mode="vector", emo_vector=[0, 0, 0, 0, 0, 0, 0, 1.5]), VECTOR_ERROR),
    ("emo_vector negative", tts(emo_mode="vector", emo_vector=[-0.1, 0, 0, 0, 0, 0, 0, 0]), VECTOR_ERROR),
    (
        "emo_vector infinite",
        '{"type":"tts_stream","text":"a","prompt_audio":"p","emo_mode":"vector","emo_vector":[1e999,0,0,0,0,0,0,0]}',
        VECTOR_ERROR,
    ),
    ("emo_vector of strings", tts(emo_mode="vector", emo_vector=["0"] * 8), VECTOR_ERROR),
    ("emo_vector not a list", tts(emo_mode="vector", emo_vector="happy"), VECTOR_ERROR),
    (
        "emo_alpha above 1",
        tts(emo_mode="text", emo_text="开心", emo_alpha=1.5),
        "emo_alpha 必须是 0.0 到 1.0 之间的数字",
    ),
    (
        "emo_alpha negative",
        tts(emo_mode="audio", emo_audio="x.wav", emo_alpha=-0.5),
        "emo_alpha 必须是 0.0 到 1.0 之间的数字",
    ),
    ("emo_alpha a string", tts(emo_alpha="high"), "emo_alpha 必须是 0.0 到 1.0 之间的数字"),
    ("emo_text not a string", tts(emo_mode="text", emo_text=5), "emo_text 必须是字符串"),
    (
        "interval_silence negative",
        tts(interval_silence=-1),
        "interval_silence 必须是 0 到 5000 之间的整数（毫秒）",
    ),
    (
        "interval_silence absurd",
        tts(interval_silence=10**9),
        "interval_silence 必须是 0 到 5000 之间的整数（毫秒）",
    ),
    (
        "interval_silence a float",
        tts(interval_silence=0.5),
        "interval_silence 必须是 0 到 5000 之间的整数（毫秒）",
    ),
    ("max_tokens too small", tts(max_tokens=19), "max_tokens 必须是 20 到 600 之间的整数"),
    ("max_tokens too large", tts(max_tokens=601), "max_tokens 必须是 20 到 600 之间的整数"),
    ("max_tokens a string", tts(max_tokens="120"), "max_tokens 必须是 20 到 600 之间的整数"),
    ("use_random not a bool", tts(use_random="yes"), "use_random 必须是布尔值（true 或 false）"),
    ("seed negative", tts(seed=-1), "seed 必须是 0 到 4294967295 之间的整数"),
    ("stream not a bool", tts(stream="yes"), "stream 必须是布尔值（true 或 false）"),
    ("format unknown", tts(format="ogg"), "format 必须是 wav/pcm/flac/mp3"),
    ("quick_first negative", tts(quick_first=-1), "quick_first 必须是 0 到 600 之间的整数"),
    ("details not a bool", tts(details=1), "details 必须是布尔值（true 或 false）"),
    ("voice not a string", tts(prompt_audio=None, voice=3), "voice 必须是字符串（声音库中的名称）"),
    ("voice and prompt_audio", tts(voice="dave"), "prompt_audio 与 voice 只能提供一个"),
    ("task_id missing", {"type": "task_status"}, "缺少有效的 task_id"),
    ("task_id not a string", {"type": "task_status", "task_id": 42}, "缺少有效的 task_id"),
    # Frames that are not requests at all.
    (
        "unknown type",
        {"type": "synthesize"},
        "未知的消息类型: synthesize（可选值: tts_stream/task_status/cancel）",
    ),
    ("type not a string", {"type": 7}, "未知的消息类型: 7（可选值: tts_stream/task_status/cancel）"),
    ("type missing", {"text": "你好"}, "缺少 type 字段（可选值: tts_stream/task_status/cancel）"),
    ("malformed JSON", '{"type": "tts_stream", ', "消息不是有效的 JSON"),
    ("not JSON at all", "hello", "消息不是有效的 JSON"),
    ("JSON array", "[1, 2]", "消息必须是 JSON 对象"),
    ("JSON string", '"tts_stream"', "消息必须是 JSON 对象"),
    ("JSON null", "null", "消息必须是 JSON 对象"),
    # Found by fuzzing: the typed decoder trips on the type before it sees the truncation.
    ("bad type in truncated JSON", '{"type":0', "消息不是有效的 JSON"),
    ("text too long", tts("一" * 2001), "text 过长：最多 2000 个字符"),
]

END_TO_END = ("text missing", "emo_vector too short", "type missing", "malformed JSON", "JSON array")
"""The cases that also run through a real server and client."""


def frame(payload: Any) -> str:
    return payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)


@pytest.mark.parametrize(("payload", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_frame_is_refused_with_one_clear_error_naming_the_field(payload: Any, message: str) -> None:
    with pytest.raises(RequestError) as refused:
        decode_request(frame(payload), max_text_chars=2000)
    assert str(refused.value) == message


def test_text_at_the_limit_is_accepted() -> None:
    decode_request(frame(tts("一" * 2000)), max_text_chars=2000)


@pytest.mark.parametrize(
    ("payload", "message"),
    [(*c[1:],) for c in CASES if c[0] in END_TO_END]
    + [(b"\x00\x01RIFF", "不支持二进制消息，请发送 JSON 文本消息")],
    ids=[*END_TO_END, "binary frame"],
)
async def test_bad_frame_gets_one_clear_error_and_the_connection_stays_usable(
    client: Client, payload: Any, message: str
) -> None:
    assert await client.error(payload) == client.error_reply(message)
    _task_id, wav = await client.request(tts("还能用。"))
    assert wav[:4] == b"RIFF"


async def test_text_longer_than_the_configured_limit_is_refused(start_server: Any) -> None:
    server: Running = await start_server(max_text_chars=10)
    async with server.connect() as client:
        assert await client.error(tts("一" * 11)) == client.error_reply("text 过长：最多 10 个字符")
        await client.request(tts("一" * 10))


async def test_unknown_fields_are_ignored(client: Client) -> None:
    await client.request(tts("你好。", speaker="alice", extra={"x": 1}))


async def test_emotion_fields_of_other_modes_are_ignored(client: Client) -> None:
    # emo_audio names no file and emo_text is set, but in vector mode neither is used.
    vector = tts("你好。", emo_mode="vector", emo_vector=[0, 0, 0, 0, 0, 0, 0, 1])
    _, plain = await client.request(vector)
    _, other_modes = await client.request({**vector, "emo_audio": "nope.wav", "emo_text": "生气"})
    assert other_modes == plain


async def test_a_field_of_another_mode_must_still_be_well_typed(client: Client) -> None:
    assert await client.error(tts(emo_mode="none", emo_vector="x")) == client.error_reply(VECTOR_ERROR)
    assert await client.error(tts(emo_mode="vector", emo_vector=[0] * 8, emo_audio=3)) == client.error_reply(
        "emo_audio 必须是字符串（服务器上的音频文件路径）"
    )


async def test_oversized_frame_closes_that_connection_only(start_server: Any) -> None:
    server: Running = await start_server(max_message_bytes=1000)
    async with server.connect() as bystander:
        async with server.connect() as client:
            await client.send(tts("长" * 2000))
            with pytest.raises(ConnectionClosed) as closed:
                await client.recv()
            assert closed.value.reason is not None and closed.value.reason.code == 1009
        await bystander.request(tts("我还在。"))
    async with server.connect() as fresh:
        await fresh.request(tts("新的连接。"))
