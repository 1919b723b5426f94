"""The seed's WebSocket messages as msgspec Structs: requests in, replies out, field for field."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from .engine import EmoMode

TaskState = Literal["pending", "running", "completed", "failed", "cancelled"]
AudioFormat = Literal["wav", "pcm", "flac", "mp3"]

# Documented ranges; the seed gives the defaults, the project gives the bounds.
MAX_TOKENS_MIN: Final = 20
MAX_TOKENS_MAX: Final = 600
INTERVAL_SILENCE_MAX: Final = 5000
SEED_MAX: Final = 2**32 - 1

WELCOME_MESSAGE: Final = "已连接到 IndexTTS WebSocket"
USAGE: Final = '发送 {"type":"tts_stream", "text":"...", "emo_mode":"none/audio/vector/text", ...} 开始合成'
QUEUED_MESSAGE: Final = "任务已加入队列，等待处理"
START_MESSAGE: Final = "开始生成音频"
END_MESSAGE: Final = "生成完成"
CANCELLED_MESSAGE: Final = "任务已取消"
CANCELLING_MESSAGE: Final = "任务将在当前段落完成后取消"
DISCONNECTED_MESSAGE: Final = "客户端已断开连接"
SHUTTING_DOWN_MESSAGE: Final = "服务器正在关闭，请稍后重连"
STUCK_AT_SHUTDOWN_MESSAGE: Final = "服务器正在关闭：任务未能在限定时间内停止"
NOT_READING_MESSAGE: Final = "客户端未及时读取消息，连接已关闭（1008）"

BOTH_VOICE: Final = "prompt_audio 与 voice 只能提供一个"
BOTH_EMO_VOICE: Final = "emo_audio 与 emo_voice 只能提供一个"

UnitFloat = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
EmoVector = Annotated[list[UnitFloat], msgspec.Meta(min_length=8, max_length=8)]


class TtsStream(msgspec.Struct, tag_field="type", tag="tts_stream", kw_only=True):
    """``{"type": "tts_stream", ...}``: synthesise ``text`` in the voice of ``prompt_audio``.

    ``None`` for an optional field means its default, so clients that send explicit nulls work.
    Cross-field rules live in ``__post_init__`` and raise the seed's own texts.
    """

    text: str
    # One of the pair names the speaker: ``prompt_audio`` (a server path, the contract's field)
    # or ``voice`` (a library name, an extension); likewise ``emo_audio`` or ``emo_voice``.
    prompt_audio: str | None = None
    voice: str | None = None
    emo_mode: EmoMode | None = None
    emo_audio: str | None = None
    emo_voice: str | None = None
    emo_alpha: UnitFloat | None = None
    emo_vector: EmoVector | None = None
    emo_text: str | None = None
    interval_silence: Annotated[int, msgspec.Meta(ge=0, le=INTERVAL_SILENCE_MAX)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=MAX_TOKENS_MIN, le=MAX_TOKENS_MAX)] | None = None
    use_random: bool | None = None
    # Extensions (opt-in). ``seed`` fixes sampling and changes nothing else. A request that sets
    # any of the others is "extended": its replies also carry the queue position, the format and
    # the timing. A request without them sees exactly the seed's replies.
    seed: Annotated[int, msgspec.Meta(ge=0, le=SEED_MAX)] | None = None
    stream: bool | None = None
    format: AudioFormat | None = None
    quick_first: Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_MAX)] | None = None
    details: bool | None = None

    @property
    def extended(self) -> bool:
        return any(value is not None for value in (self.stream, self.format, self.quick_first, self.details))

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError("缺少有效的 text")
        if self.voice is not None and self.prompt_audio is not None:
            raise ValueError(BOTH_VOICE)
        if self.voice is not None:
            if not self.voice.strip():
                raise ValueError("缺少有效的 voice")
        elif not (self.prompt_audio and self.prompt_audio.strip()):
            raise ValueError("缺少有效的 prompt_audio")
        mode = self.emo_mode or "none"
        if mode == "audio":
            if self.emo_voice is not None and self.emo_audio is not None:
                raise ValueError(BOTH_EMO_VOICE)
            if self.emo_voice is not None:
                if not self.emo_voice.strip():
                    raise ValueError("缺少有效的 emo_voice")
            elif not (self.emo_audio and self.emo_audio.strip()):
                raise ValueError("情感参考音频模式需要提供 emo_audio")
        if mode == "vector" and self.emo_vector is None:
            raise ValueError("情感向量模式需要提供 emo_vector")
        if mode == "text" and not (self.emo_text and self.emo_text.strip()):
            raise ValueError("情感文本引导模式需要提供 emo_text")


class TaskStatusQuery(msgspec.Struct, tag_field="type", tag="task_status", kw_only=True):
    """``{"type": "task_status", "task_id": ...}``: ask for a task's state."""

    task_id: str


class Cancel(msgspec.Struct, tag_field="type", tag="cancel", kw_only=True):
    """``{"type": "cancel", "task_id": ...}`` (extension): stop one of this session's tasks."""

    task_id: str


Request = TtsStream | TaskStatusQuery | Cancel


class Welcome(msgspec.Struct, kw_only=True):
    status: Literal["success"] = "success"
    session_id: str
    message: str = WELCOME_MESSAGE
    usage: str = USAGE


class Queued(msgspec.Struct, kw_only=True):
    type: Literal["queued"] = "queued"
    task_id: str
    session_id: str
    message: str = QUEUED_MESSAGE
    # Extended requests only: 1 means next in line (a task may be running ahead of it).
    position: int | msgspec.UnsetType = msgspec.UNSET


class Start(msgspec.Struct, kw_only=True):
    type: Literal["start"] = "start"
    task_id: str
    session_id: str
    message: str = START_MESSAGE
    format: AudioFormat | msgspec.UnsetType = msgspec.UNSET
    sample_rate: int | msgspec.UnsetType = msgspec.UNSET
    stream: bool | msgspec.UnsetType = msgspec.UNSET


class Timing(msgspec.Struct, kw_only=True):
    """Seconds, measured by the server: from acceptance to start, to first audio, to the end."""

    queue_wait: float
    first_audio: float
    total: float
    audio_seconds: float
    rtf: float


class End(msgspec.Struct, kw_only=True):
    type: Literal["end"] = "end"
    task_id: str
    session_id: str
    message: str = END_MESSAGE
    timing: Timing | msgspec.UnsetType = msgspec.UNSET


class CancelReply(msgspec.Struct, kw_only=True):
    """The answer to a ``cancel``: ``cancelled`` at once, or ``cancelling`` at the next segment."""

    type: Literal["cancel"] = "cancel"
    task_id: str
    session_id: str
    status: Literal["cancelled", "cancelling"]
    message: str


class Error(msgspec.Struct, kw_only=True):
    status: Literal["error"] = "error"
    task_id: str | None
    session_id: str
    message: str


class TaskStatusReply(msgspec.Struct, kw_only=True):
    type: Literal["task_status"] = "task_status"
    session_id: str
    task_id: str
    status: TaskState
    created_at: str
    completed_at: str | None
    error_message: str | None


Reply = Welcome | Queued | Start | End | Error | TaskStatusReply | CancelReply
