"""The contract's WebSocket messages as msgspec Structs: requests in, replies out, field for field."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .. import texts
from ..engine import (
    INTERVAL_SILENCE_MAX,
    MAX_TOKENS_MAX,
    MAX_TOKENS_MIN,
    SEED_MAX,
    SPEED_MAX,
    SPEED_MIN,
    EmoMode,
)

TaskState = Literal["pending", "running", "completed", "failed", "cancelled"]
AudioFormat = Literal["wav", "pcm", "flac", "mp3"]

UnitFloat = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
EmoVector = Annotated[list[UnitFloat], msgspec.Meta(min_length=8, max_length=8)]
IntervalSilence = Annotated[int, msgspec.Meta(ge=0, le=INTERVAL_SILENCE_MAX)]
MaxTokens = Annotated[int, msgspec.Meta(ge=MAX_TOKENS_MIN, le=MAX_TOKENS_MAX)]
Seed = Annotated[int, msgspec.Meta(ge=0, le=SEED_MAX)]
QuickFirst = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS_MAX)]
SampleRate = Literal[8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000]
LangCode = Annotated[str, msgspec.Meta(pattern="(?i)^(zh|en|ja|es|ar)$")]
Speed = Annotated[float, msgspec.Meta(ge=SPEED_MIN, le=SPEED_MAX)]
"""The request fields' bounds, shared by every kind of request that takes them (``SampleRate``
spells out `core.engine.SAMPLE_RATES`)."""


class ModelFields(msgspec.Struct, kw_only=True):
    """The model's own request fields: named and bounded alike in ``tts_stream`` and the HTTP API.

    ``None`` for an optional field means its default, so clients that send explicit nulls work.
    ``emo_audio`` (a server path, the contract's field) and ``emo_voice`` (a library name, an
    extension) are the two ways to name an emotion reference.
    """

    emo_mode: EmoMode | None = None
    emo_audio: str | None = None
    emo_voice: str | None = None
    emo_alpha: UnitFloat | None = None
    emo_vector: EmoVector | None = None
    emo_text: str | None = None
    interval_silence: IntervalSilence | None = None
    max_tokens: MaxTokens | None = None
    use_random: bool | None = None
    # Extensions (opt-in). ``seed`` fixes sampling and changes nothing else; ``stream`` sends the
    # audio segment by segment; ``quick_first`` keeps the first segment short; ``sample_rate``
    # resamples the output; ``lang`` names the text's language (any case; default: picked from
    # the text); ``speed`` is the speaking rate (the model's own duration control where it has
    # one, else a time-stretch).
    seed: Seed | None = None
    stream: bool | None = None
    quick_first: QuickFirst | None = None
    sample_rate: SampleRate | None = None
    lang: LangCode | None = None
    speed: Speed | None = None
    # ``text_format`` (extension): ``ssml`` reads the text as SSML (`core.ssml`); default plain text.
    text_format: Literal["text", "ssml"] | None = None


class TtsStream(ModelFields, tag_field="type", tag="tts_stream", kw_only=True):
    """``{"type": "tts_stream", ...}``: synthesise ``text`` in the voice of ``prompt_audio``.

    Cross-field rules live in ``__post_init__`` and raise the contract's own texts. A request
    that sets ``stream``, ``format``, ``quick_first``, ``details``, ``sample_rate`` or
    ``timestamps`` is "extended": its replies also carry the queue position, the format and the
    timing (and with ``timestamps``, the cues). A request without them sees exactly the
    contract's replies.
    """

    text: str
    # One of the pair names the speaker: ``prompt_audio`` (a server path, the contract's field)
    # or ``voice`` (a library name, an extension).
    prompt_audio: str | None = None
    voice: str | None = None
    format: AudioFormat | None = None
    details: bool | None = None
    timestamps: bool | None = None

    @property
    def extended(self) -> bool:
        return any(
            value is not None
            for value in (
                self.stream,
                self.format,
                self.quick_first,
                self.details,
                self.sample_rate,
                self.timestamps,
            )
        )

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise ValueError(texts.TEXT_MISSING)
        if self.voice is not None and self.prompt_audio is not None:
            raise ValueError(texts.BOTH_VOICE)
        if self.voice is not None:
            if not self.voice.strip():
                raise ValueError(texts.VOICE_MISSING)
        elif not (self.prompt_audio and self.prompt_audio.strip()):
            raise ValueError(texts.PROMPT_AUDIO_MISSING)
        mode = self.emo_mode or "none"
        if mode == "audio":
            if self.emo_voice is not None and self.emo_audio is not None:
                raise ValueError(texts.BOTH_EMO_VOICE)
            if self.emo_voice is not None:
                if not self.emo_voice.strip():
                    raise ValueError(texts.EMO_VOICE_MISSING)
            elif not (self.emo_audio and self.emo_audio.strip()):
                raise ValueError(texts.EMO_AUDIO_REQUIRED)
        if mode == "vector" and self.emo_vector is None:
            raise ValueError(texts.EMO_VECTOR_REQUIRED)
        if mode == "text" and not (self.emo_text and self.emo_text.strip()):
            raise ValueError(texts.EMO_TEXT_REQUIRED)


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
    message: str = texts.WELCOME
    usage: str = texts.USAGE


class Queued(msgspec.Struct, kw_only=True):
    type: Literal["queued"] = "queued"
    task_id: str
    session_id: str
    message: str = texts.QUEUED
    # Extended requests only: 1 means next in line (a task may be running ahead of it).
    position: int | msgspec.UnsetType = msgspec.UNSET


class Start(msgspec.Struct, kw_only=True):
    type: Literal["start"] = "start"
    task_id: str
    session_id: str
    message: str = texts.START
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


class Cue(msgspec.Struct, frozen=True, kw_only=True):
    """One segment's place in the output audio: its text, and seconds from the audio's start.

    ``start`` counts every segment and pause before it; ``duration`` is its speech without the
    pause that follows it. Both are seconds of the audio the client receives (speed applied).
    """

    index: int
    text: str
    start: float
    duration: float


class CueReply(msgspec.Struct, kw_only=True):
    """``timestamps`` (extension): sent as each segment is made, before its audio."""

    type: Literal["cue"] = "cue"
    task_id: str
    session_id: str
    index: int
    text: str
    start: float
    duration: float


class End(msgspec.Struct, kw_only=True):
    type: Literal["end"] = "end"
    task_id: str
    session_id: str
    message: str = texts.END
    timing: Timing | msgspec.UnsetType = msgspec.UNSET
    cues: list[Cue] | msgspec.UnsetType = msgspec.UNSET


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


Reply = Welcome | Queued | Start | CueReply | End | Error | TaskStatusReply | CancelReply
