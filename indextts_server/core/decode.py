"""Turns one client text frame into a request, or into the one clear error its sender will read."""

from __future__ import annotations

import re
from typing import Final

import msgspec

from .protocol import (
    INTERVAL_SILENCE_MAX,
    MAX_TOKENS_MAX,
    MAX_TOKENS_MIN,
    SEED_MAX,
    Cancel,
    Request,
    TaskStatusQuery,
    TtsStream,
)

REQUEST_TYPES: Final = ("tts_stream", "task_status", "cancel")

# One message per field, so that any way a field can be wrong reads the same to the client.
FIELD_ERRORS: Final[dict[str, str]] = {
    "text": "缺少有效的 text",
    "prompt_audio": "缺少有效的 prompt_audio",
    "voice": "voice 必须是字符串（声音库中的名称）",
    "emo_voice": "emo_voice 必须是字符串（声音库中的名称）",
    "emo_mode": "emo_mode 必须是 none/audio/vector/text",
    "emo_audio": "emo_audio 必须是字符串（服务器上的音频文件路径）",
    "emo_alpha": "emo_alpha 必须是 0.0 到 1.0 之间的数字",
    "emo_vector": "emo_vector 必须是由 8 个 0.0 到 1.0 之间的数字组成的数组",
    "emo_text": "emo_text 必须是字符串",
    "interval_silence": f"interval_silence 必须是 0 到 {INTERVAL_SILENCE_MAX} 之间的整数（毫秒）",
    "max_tokens": f"max_tokens 必须是 {MAX_TOKENS_MIN} 到 {MAX_TOKENS_MAX} 之间的整数",
    "use_random": "use_random 必须是布尔值（true 或 false）",
    "seed": f"seed 必须是 0 到 {SEED_MAX} 之间的整数",
    "task_id": "缺少有效的 task_id",
    "stream": "stream 必须是布尔值（true 或 false）",
    "format": "format 必须是 wav/pcm/flac/mp3",
    "quick_first": f"quick_first 必须是 0 到 {MAX_TOKENS_MAX} 之间的整数",
    "details": "details 必须是布尔值（true 或 false）",
}

MALFORMED_JSON: Final = "消息不是有效的 JSON"
NOT_AN_OBJECT: Final = "消息必须是 JSON 对象"
MISSING_TYPE: Final = f"缺少 type 字段（可选值: {'/'.join(REQUEST_TYPES)}）"
BINARY_FRAME: Final = "不支持二进制消息，请发送 JSON 文本消息"

_MISSING_FIELD = re.compile(r"missing required field `([A-Za-z_]+)`")
_AT_FIELD = re.compile(r" - at `\$\.([A-Za-z_]+)")

_decoder: Final[msgspec.json.Decoder[Request]] = msgspec.json.Decoder(Request)


class RequestError(Exception):
    """A frame that cannot become a request; ``str(error)`` is the text the client is sent."""


def unknown_type(value: object) -> str:
    shown = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return f"未知的消息类型: {shown}（可选值: {'/'.join(REQUEST_TYPES)}）"


def text_too_long(limit: int) -> str:
    return f"text 过长：最多 {limit} 个字符"


def decode_request(frame: str | bytes, *, max_text_chars: int) -> Request:
    """Decode and validate one frame; raise `RequestError` with a message naming the field."""
    try:
        request = _decoder.decode(frame)
    except msgspec.ValidationError as error:
        raise RequestError(_explain(str(error), frame)) from None
    except msgspec.DecodeError:
        raise RequestError(MALFORMED_JSON) from None
    if isinstance(request, TtsStream) and len(request.text) > max_text_chars:
        raise RequestError(text_too_long(max_text_chars))
    return request


def _explain(detail: str, frame: str | bytes) -> str:
    if detail.startswith("Expected `object`"):
        return NOT_AN_OBJECT
    match = _MISSING_FIELD.search(detail) or _AT_FIELD.search(detail)
    if match is None:
        # A rule from a Struct's __post_init__: its text is already the client's message.
        return detail
    field = match.group(1)
    if field == "type":
        return _explain_type(frame)
    return FIELD_ERRORS.get(field, f"参数 {field} 无效")


def _explain_type(frame: str | bytes) -> str:
    # Only on the error path: look again at the raw object to quote the type the client sent.
    # The typed decoder stops at the first bad field, so the rest may still be malformed.
    try:
        value = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return MALFORMED_JSON
    if isinstance(value, dict) and "type" in value:
        return unknown_type(value["type"])
    return MISSING_TYPE


__all__ = ["Cancel", "RequestError", "TaskStatusQuery", "TtsStream", "decode_request"]
