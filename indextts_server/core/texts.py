"""Every text a client can read, in one catalogue: replies, errors, close reasons, refusals.

The contract's clients and tests match these byte for byte, so a text here changes only together
with the contract. The README's error table lists each one (``tests/test_texts.py`` checks it);
a text with a variable part is a function whose parameters name that part.
"""

from __future__ import annotations

from typing import Final

from .engine import (
    INTERVAL_SILENCE_MAX,
    MAX_TOKENS_MAX,
    MAX_TOKENS_MIN,
    SAMPLE_RATES,
    SEED_MAX,
    SPEED_MAX,
    SPEED_MIN,
)

REQUEST_TYPES: Final = ("tts_stream", "task_status", "cancel")
"""The request ``type`` values, in the order the errors list them."""

# -- replies -------------------------------------------------------------------------------------

WELCOME: Final = "已连接到 IndexTTS WebSocket"
USAGE: Final = '发送 {"type":"tts_stream", "text":"...", "emo_mode":"none/audio/vector/text", ...} 开始合成'
QUEUED: Final = "任务已加入队列，等待处理"
START: Final = "开始生成音频"
END: Final = "生成完成"
CANCELLED: Final = "任务已取消"
"""A cancel's reply for a waiting task, and the final error of any cancelled task."""
CANCELLING: Final = "任务将在当前段落完成后取消"
DISCONNECTED: Final = "客户端已断开连接"
"""The ``error_message`` of a task whose session closed before it finished."""
NOT_READING: Final = "客户端未及时读取消息，连接已关闭（1008）"
"""The ``error_message`` of a task whose session was closed for not reading its replies."""

# -- request errors: one text per field, however the field is wrong -------------------------------

TEXT_MISSING: Final = "缺少有效的 text"
PROMPT_AUDIO_MISSING: Final = "缺少有效的 prompt_audio"
VOICE_MISSING: Final = "缺少有效的 voice"
EMO_VOICE_MISSING: Final = "缺少有效的 emo_voice"
BOTH_VOICE: Final = "prompt_audio 与 voice 只能提供一个"
BOTH_EMO_VOICE: Final = "emo_audio 与 emo_voice 只能提供一个"
EMO_AUDIO_REQUIRED: Final = "情感参考音频模式需要提供 emo_audio"
EMO_VECTOR_REQUIRED: Final = "情感向量模式需要提供 emo_vector"
EMO_TEXT_REQUIRED: Final = "情感文本引导模式需要提供 emo_text"

FIELD_ERRORS: Final[dict[str, str]] = {
    "text": TEXT_MISSING,
    "prompt_audio": PROMPT_AUDIO_MISSING,
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
    "sample_rate": f"sample_rate 必须是 {'/'.join(map(str, SAMPLE_RATES))} 之一",
    "timestamps": "timestamps 必须是布尔值（true 或 false）",
    "lang": "lang 必须是 zh/en/ja/es/ar 之一（不区分大小写）",
    "speed": f"speed 必须是 {SPEED_MIN} 到 {SPEED_MAX} 之间的数字",
    "text_format": "text_format 必须是 text/ssml",
}
"""The error for each request field; the decoder picks one by the field a failure names."""


def invalid_field(field: str) -> str:
    """A field the decoder refused that `FIELD_ERRORS` does not know (a gap, not client input)."""
    return f"参数 {field} 无效"


# -- what the model cannot do (refused before the task is queued) -----------------------------------


def lang_unsupported(lang: str, model: str, langs: str) -> str:
    """A language the request names (or its text is in) that the loaded model does not speak."""
    return f"lang 不支持: {lang}（{model} 只支持 {langs}）"


def lang_needs_tokenizer(lang: str, model: str) -> str:
    """A language the model speaks whose tokenizer is not installed on the server."""
    return f"lang 暂不可用: {lang}（{model} 缺少该语言的分词器，请联系服务器管理员安装）"


def emo_mode_unsupported(mode: str, model: str, modes: str) -> str:
    return f"emo_mode 不支持: {mode}（{model} 只支持 {modes}）"


def emo_text_unavailable(model: str) -> str:
    """``emo_mode`` ``text`` on a model loaded without its emotion model."""
    return f"emo_mode 不支持: text（{model} 未加载情感模型 qwen0.6bemo4-merge/）"


def speed_unsupported(low: float, high: float, model: str) -> str:
    return f"speed 必须是 {low:g} 到 {high:g} 之间的数字（{model}）"


def text_too_long(limit: int) -> str:
    return f"text 过长：最多 {limit} 个字符"


# -- SSML (text_format "ssml"): each names text and the position ------------------------------------

SSML_MALFORMED: Final = "标记格式错误（{reason}）"
SSML_DECLARATION: Final = "不支持 DOCTYPE、实体声明和外部引用"


def ssml_invalid(field: str, line: int, column: int, reason: str) -> str:
    """Markup the SSML subset refuses in ``field``, where it is (``line`` and ``column`` from 1)."""
    return f"{field} 不是有效的 SSML（第 {line} 行第 {column} 列）：{reason}"


def ssml_attribute(element: str, attribute: str, value: str) -> str:
    return f"<{element}> 的 {attribute} 无效: {value!r}"


def ssml_text_only(element: str) -> str:
    return f"<{element}> 只能包含文本"


def ssml_too_deep(limit: int) -> str:
    return f"元素嵌套过深：最多 {limit} 层"


def ssml_too_many(limit: int) -> str:
    return f"片段和停顿过多：最多 {limit} 个"


def ssml_too_many_voices(limit: int) -> str:
    return f"声音过多：最多 {limit} 个"


def ssml_break_too_long(limit: int) -> str:
    return f"<break> 过长：最多 {limit} 毫秒"


# -- frame errors ----------------------------------------------------------------------------------

MALFORMED_JSON: Final = "消息不是有效的 JSON"
NOT_AN_OBJECT: Final = "消息必须是 JSON 对象"
MISSING_TYPE: Final = f"缺少 type 字段（可选值: {'/'.join(REQUEST_TYPES)}）"
BINARY_FRAME: Final = "不支持二进制消息，请发送 JSON 文本消息"


def unknown_type(type_: str) -> str:
    """``type_`` as the client sent it (a non-string shown as JSON)."""
    return f"未知的消息类型: {type_}（可选值: {'/'.join(REQUEST_TYPES)}）"


# -- audio paths ------------------------------------------------------------------------------------


def outside_roots(field: str, path: str) -> str:
    return f"{field} 不在允许的音频目录内: {path}"


def file_missing(field: str, path: str) -> str:
    return f"{field} 文件不存在: {path}"


def not_a_file(field: str, path: str) -> str:
    return f"{field} 不是文件: {path}"


def undecodable(field: str, path: str) -> str:
    return f"{field} 无法解码为音频: {path}"


def empty_audio(field: str, path: str) -> str:
    return f"{field} 音频为空: {path}"


# -- admission, tasks and cancel --------------------------------------------------------------------

SHUTTING_DOWN: Final = "服务器正在关闭，请稍后重连"
STUCK_AT_SHUTDOWN: Final = "服务器正在关闭：任务未能在限定时间内停止"


def queue_full(max_queue: int) -> str:
    return f"服务器繁忙：队列已满（最多 {max_queue} 个等待任务），请稍后重试"


def too_many_in_flight(limit: int) -> str:
    return f"本会话进行中的任务过多（最多 {limit} 个），请等待已有任务完成"


def unknown_task(task_id: str) -> str:
    return f"任务不存在或已过期: {task_id}"


def not_your_task(task_id: str) -> str:
    return f"只能取消本会话创建的任务: {task_id}"


def already_finished(task_id: str, status: str) -> str:
    return f"任务已结束（{status}），无法取消: {task_id}"


def engine_failed(reason: str) -> str:
    return f"音频生成失败: {reason}"


def task_timed_out(seconds: float) -> str:
    return f"任务超时：超过 {seconds:g} 秒未完成"


# -- connection: close reasons and handshake refusals (sent as the close frame or HTTP body) ---------

CLOSE_SHUTTING_DOWN: Final = "server shutting down"
CLOSE_IDLE: Final = "idle timeout"
CLOSE_NOT_READING: Final = "client is not reading"
TOKEN_REFUSED: Final = "missing or wrong token"


# --- cluster mode (--broker) ---------------------------------------------------------------

BROKER_UNAVAILABLE: Final = "服务暂不可用：无法连接任务调度服务（broker），请稍后重试"
BROKER_LOST: Final = "任务已丢失：任务调度服务（broker）中断，请重新提交"
GATEWAY_GONE: Final = "任务已取消：接收该任务的网关已下线"


def worker_lost_after_audio(worker: str) -> str:
    return f"任务失败：执行该任务的 worker（{worker}）中断，部分音频已发出，无法重试"


def gave_up(deliveries: int) -> str:
    return f"任务失败：已分派 {deliveries} 次均未完成（worker 中断），不再重试"


# -- the voice library (HTTP uploads, and voice names over either port) -----------------------------

VOICE_NAME_MISSING: Final = "缺少有效的 name"
VOICE_NAME_RULE: Final = "name 只能包含字母（任何文字）、数字、_ 和 -"
SAMPLE_MISSING: Final = "缺少 audio_sample 文件"
SAMPLE_NOT_AUDIO: Final = "audio_sample 无法解码为音频（支持 wav/flac/mp3/ogg/webm/m4a）"


def voice_name_too_long(limit: int) -> str:
    return f"name 过长：最多 {limit} 个字符"


def unknown_voice(field: str, name: str) -> str:
    return f"{field} 不存在: {name}"


def voice_exists(name: str) -> str:
    return f"声音已存在: {name}（要替换它，请同时提交 replace=true）"


def library_full(limit: int) -> str:
    return f"声音库已满：最多 {limit} 个声音，请先删除不用的声音"


def sample_too_big(limit: int) -> str:
    return f"audio_sample 过大：最多 {limit} 字节"


def sample_too_short(seconds: float, min_seconds: float, max_seconds: float) -> str:
    return f"audio_sample 时长 {round(seconds, 2):g} 秒，必须在 {min_seconds:g} 到 {max_seconds:g} 秒之间"


def sample_too_long(min_seconds: float, max_seconds: float) -> str:
    """Decoding stops at the limit, so the whole length is never known."""
    return f"audio_sample 时长超过 {max_seconds:g} 秒，必须在 {min_seconds:g} 到 {max_seconds:g} 秒之间"


def ref_text_too_long(limit: int) -> str:
    return f"ref_text 过长：最多 {limit} 个字符"


def builtin_voice(name: str) -> str:
    return f"内置声音不能删除: {name}"


# -- voice agents (Cartesia's /tts/websocket on the HTTP port) ----------------------------------------

AGENT_FIELD_ERRORS: Final[dict[str, str]] = {
    "context_id": "缺少有效的 context_id",
    "transcript": "transcript 必须是字符串",
    "continue": "continue 必须是布尔值（true 或 false）",
    "cancel": "cancel 必须是布尔值（true 或 false）",
    "flush": "flush 必须是布尔值（true 或 false）",
    "add_timestamps": "add_timestamps 必须是布尔值（true 或 false）",
    "text_format": "text_format 必须是 text/ssml",
    "voice": 'voice 必须是 {"mode": "id", "id": 声音名称}',
    "mode": 'voice 必须是 {"mode": "id", "id": 声音名称}',
    "id": 'voice 必须是 {"mode": "id", "id": 声音名称}',
    "output_format": 'output_format 必须是 {"container": "raw", "encoding": ..., "sample_rate": ...}',
    "container": "output_format.container 必须是 raw",
    "encoding": "output_format.encoding 必须是 pcm_s16le/pcm_f32le/pcm_mulaw/pcm_alaw 之一",
    "sample_rate": "output_format.sample_rate 必须是 8000 到 48000 之间的整数",
    "language": "language 必须是字符串（zh/en/ja/es/ar）",
    "max_buffer_delay_ms": "max_buffer_delay_ms 必须是 0 到 5000 之间的整数（毫秒）",
    "generation_config": 'generation_config 必须是 {"speed": ..., "emotion": ...}',
    "speed": (
        f"generation_config.speed 必须是 {SPEED_MIN} 到 {SPEED_MAX} 之间的数字"
        "或 slowest/slow/normal/fast/fastest"
    ),
    "emotion": "generation_config.emotion 必须是字符串或字符串数组",
}
"""The voice-agent messages' fields (Cartesia's names), one text each."""


def agent_language(language: str) -> str:
    return f"language 不支持: {language}（可选值: zh/en/ja/es/ar）"


def agent_transcript_too_long(limit: int) -> str:
    """A context's text not yet spoken may not grow past the server's text limit."""
    return f"context 中待合成的文本过长：最多 {limit} 个字符"


# -- Home Assistant's Wyoming protocol (--wyoming-port): ``error`` events' ``text`` --------------------

WYOMING_NOT_EVENT: Final = (
    "无法解析的 Wyoming 事件：需要一行 JSON 对象（含 type），其后是 data_length 与 payload_length 字节"
)
WYOMING_CHUNK_WITHOUT_START: Final = "synthesize-chunk 之前没有 synthesize-start"
WYOMING_STOP_WITHOUT_START: Final = "synthesize-stop 之前没有 synthesize-start"
WYOMING_EMPTY_TEXT: Final = "text 不能为空"


def wyoming_too_large(limit: int) -> str:
    return f"Wyoming 事件过大：data 与 payload 最多 {limit} 字节"


def wyoming_line_too_long(limit: int) -> str:
    return f"Wyoming 事件头过长：最多 {limit} 字节"


def wyoming_field(kind: str, field: str) -> str:
    return f"{kind} 事件的 {field} 字段无效"


def wyoming_language(language: str) -> str:
    return f"voice.language 不支持: {language}（可选值: zh/en/ja/es/ar）"


def wyoming_text_format(text_format: str | None) -> str:
    return f"text_format 不支持: {text_format}（只支持 text、ssml）"


# -- the HTTP API (OpenAI-compatible speech; errors in OpenAI's shape, texts as over the WebSocket) -

INPUT_MISSING: Final = "缺少有效的 input"
BODY_NOT_JSON: Final = "请求体不是有效的 JSON"
BODY_NOT_OBJECT: Final = "请求体必须是 JSON 对象"
BOTH_EMO_TEXT: Final = "instructions 与 emo_text 只能提供一个（都是情感文本）"
EMO_AUDIO_OR_VOICE_REQUIRED: Final = "情感参考音频模式需要提供 emo_voice 或 emo_audio"
EMO_TEXT_OR_INSTRUCTIONS_REQUIRED: Final = "情感文本引导模式需要提供 instructions（或 emo_text）"
TOKEN_REQUIRED: Final = "缺少或错误的令牌：请发送 Authorization: Bearer <token>"
INTERNAL_ERROR: Final = "服务器内部错误"
FORM_NOT_MULTIPART: Final = "请求体必须是 multipart/form-data"
FORM_NO_DISPOSITION: Final = "multipart 字段缺少 Content-Disposition: form-data"

SPEECH_FIELD_ERRORS: Final[dict[str, str]] = {
    "input": INPUT_MISSING,
    "model": "model 必须是字符串",
    "voice": 'voice 必须是字符串（声音库中的名称）或 {"id": 名称}',
    "instructions": "instructions 必须是字符串",
    "response_format": "response_format 必须是 mp3/opus/aac/flac/wav/pcm",
    "stream_format": "stream_format 必须是 audio 或 sse",
}
"""The speech request's own fields; the model's fields read as over the WebSocket (`FIELD_ERRORS`)."""


def input_too_long(limit: int) -> str:
    return f"input 过长：最多 {limit} 个字符"


def emotion_ambiguous(modes: str) -> str:
    """``modes``: the emotion modes the request's fields imply, joined with ``/``."""
    return f"同时给出了多种情感输入（{modes}），请用 emo_mode 指明用哪一种"


def unknown_model(model: str, models: str) -> str:
    return f"模型不存在: {model}（可用: {models}）"


def body_too_large(limit: int) -> str:
    return f"请求体过大：最多 {limit} 字节"


def origin_not_allowed(origin: str) -> str:
    return f"不允许来自该来源的请求: {origin}"


def origin_refused(origin: str) -> str:
    """A refused WebSocket handshake's body (plain text, like the close reasons)."""
    return f"origin not allowed: {origin} (the server lets a page in with --allow-origin {origin})"


def unknown_path(path: str) -> str:
    return f"接口不存在: {path}"


def method_not_allowed(method: str, allowed: str) -> str:
    return f"不支持的方法: {method}（可用: {allowed}）"


def form_malformed(reason: str) -> str:
    return f"multipart 请求体格式错误: {reason}"
