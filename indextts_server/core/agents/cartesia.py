"""Cartesia's ``/tts/websocket`` messages, pure: a frame in, a context's settings, the replies out.

What the frameworks send is in docs/voice-agents.md. Unknown fields (``model_id``,
``cartesia_version``, ``use_normalized_timestamps``, ``pronunciation_dict_id``, a voice's
``__experimental_controls``) are ignored; every message of a context carries its settings, and
those of its first message hold until the context ends.
"""

from __future__ import annotations

import re
from typing import Final, Literal

import msgspec

from .. import texts
from ..contract.jobs import job
from ..engine import SPEED_MAX, SPEED_MIN, EmoMode, Lang, SynthesisJob, lang_of
from ..plan import Plan
from ..tasks import Delivery
from ..voices import DEFAULT_VOICE
from .audio import ENCODINGS, Encoding

RATE_MIN: Final = 8000
RATE_MAX: Final = 48000
DEFAULT_RATE: Final = 22050
DELAY_MAX_MS: Final = 5000

EMOTIONS: Final = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
"""IndexTTS's eight emotion dimensions, in ``emo_vector`` order."""
EMOTION_NAMES: Final[dict[str, str]] = {
    **dict.fromkeys(
        ("happy", "excited", "enthusiastic", "elated", "euphoric", "triumphant", "joking/comedic",
         "grateful", "affectionate", "proud", "positivity"),
        "happy",
    ),
    **dict.fromkeys(("angry", "mad", "outraged", "frustrated", "agitated", "anger"), "angry"),
    **dict.fromkeys(("sad", "dejected", "disappointed", "hurt", "guilty", "apologetic", "sadness"), "sad"),
    **dict.fromkeys(("scared", "afraid", "anxious", "panicked", "alarmed", "threatened", "fear"), "afraid"),
    **dict.fromkeys(("disgusted", "contempt"), "disgusted"),
    **dict.fromkeys(("melancholic", "nostalgic", "wistful", "bored", "tired", "resigned"), "melancholic"),
    **dict.fromkeys(
        ("surprised", "amazed", "astonished", "shocked", "curious", "surprise", "curiosity"), "surprised"
    ),
    **dict.fromkeys(("calm", "peaceful", "serene", "content", "confident"), "calm"),
}  # fmt: skip
"""Cartesia's emotion names (sonic-3's, and the older ``positivity``-style ones) by the dimension
they fit; any other (``neutral`` included) asks for no emotion."""
EMOTION_LEVELS: Final = {"lowest": 0.2, "low": 0.4, "": 0.6, "high": 0.8, "highest": 1.0}
"""An emotion's weight in the vector by its Cartesia level suffix (``anger:high``); none: 0.6."""
SPEED_NAMES: Final = {"slowest": 0.6, "slow": 0.8, "normal": 1.0, "fast": 1.2, "fastest": 1.5}


class VoiceSpec(msgspec.Struct, kw_only=True):
    mode: str = "id"
    id: str | None = None


class OutputFormat(msgspec.Struct, kw_only=True):
    container: str = "raw"
    encoding: str = "pcm_s16le"
    sample_rate: int = DEFAULT_RATE


class GenerationConfig(msgspec.Struct, kw_only=True):
    speed: float | str | None = None
    emotion: str | list[str] | None = None


class AgentMessage(msgspec.Struct, kw_only=True):
    """One client message: text for a context, its end (``continue: false``), a flush or a cancel."""

    context_id: str | None = None
    transcript: str | None = None
    more: bool | None = msgspec.field(name="continue", default=None)
    cancel: bool | None = None
    flush: bool | None = None
    voice: VoiceSpec | None = None
    output_format: OutputFormat | None = None
    language: str | None = None
    add_timestamps: bool | None = None
    max_buffer_delay_ms: int | None = None
    generation_config: GenerationConfig | None = None
    text_format: Literal["text", "ssml"] | None = None
    """Extension: ``ssml`` reads the context's text as SSML (`core.ssml`)."""


class _ContextOnly(msgspec.Struct):
    context_id: object = None


class Tuning(msgspec.Struct, frozen=True, kw_only=True):
    """The job fields a context sets (`core.contract.jobs.Tuning`); ``None``: the contract's default."""

    emo_alpha: float | None = None
    emo_vector: tuple[float, ...] | None = None
    interval_silence: int | None = None
    max_tokens: int | None = None
    use_random: bool | None = None
    seed: int | None = None
    quick_first: int | None = None
    lang: str | None = None
    speed: float | None = None


class ContextSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A context's settings, from its first message, checked."""

    voice: str
    encoding: Encoding
    sample_rate: int
    timestamps: bool
    max_buffer_delay: float | None
    tuning: Tuning
    ssml: bool = False

    @property
    def emo_mode(self) -> EmoMode:
        return "vector" if self.tuning.emo_vector is not None else "none"

    def job(self, text: str, prompt_audio: str, plan: Plan | None = None) -> SynthesisJob:
        """The engine's job for one committed sentence of the context (its SSML's ``plan``, if any)."""
        return job(
            self.tuning,
            text=text,
            prompt_audio=prompt_audio,
            emo_mode=self.emo_mode,
            emo_audio=None,
            emo_text=None,
            plan=plan,
        )

    @property
    def delivery(self) -> Delivery:
        """Raw 16-bit samples at the context's rate, segment by segment, each after its cue (the
        cue gives the segment's text and span, the words are placed from them)."""
        return Delivery(
            stream=True, format="pcm", sample_rate=self.sample_rate, timestamps=True, realtime=True
        )


class Invalid(Exception):
    """A message refused: ``str()`` is the client's text; ``context_id`` the context it names, if any."""

    def __init__(self, message: str, context_id: str | None):
        super().__init__(message)
        self.context_id = context_id


_decoder: Final = msgspec.json.Decoder(AgentMessage)
_id_decoder: Final = msgspec.json.Decoder(_ContextOnly)
_AT_FIELD = re.compile(r" - at `\$\.([A-Za-z_]+)(?:\.([A-Za-z_]+))?")


def decode(frame: str | bytes) -> AgentMessage:
    """A client frame as a message; `Invalid` naming the field otherwise (or the frame not JSON)."""
    try:
        message = _decoder.decode(frame)
    except msgspec.ValidationError as error:
        match = _AT_FIELD.search(str(error))
        field = (match.group(2) or match.group(1)) if match else "message"
        raise Invalid(_field_text(field), _context_of(frame)) from None
    except msgspec.DecodeError:
        raise Invalid(texts.MALFORMED_JSON, None) from None
    if not message.context_id or not isinstance(message.context_id, str):
        raise Invalid(texts.AGENT_FIELD_ERRORS["context_id"], None)
    return message


def _field_text(field: str) -> str:
    if field == "message":
        return texts.NOT_AN_OBJECT
    return texts.AGENT_FIELD_ERRORS.get(field) or texts.invalid_field(field)


def _context_of(frame: str | bytes) -> str | None:
    try:
        found = _id_decoder.decode(frame).context_id
    except msgspec.MsgspecError:
        return None
    return found if isinstance(found, str) and found else None


def settings(message: AgentMessage) -> ContextSettings:
    """The settings a context's first message asks for; `Invalid` for one the server cannot do."""
    context = message.context_id
    voice = message.voice or VoiceSpec(id=DEFAULT_VOICE)
    if voice.mode != "id" or not voice.id:
        raise Invalid(texts.AGENT_FIELD_ERRORS["voice"], context)
    output = message.output_format or OutputFormat()
    if output.container != "raw":
        raise Invalid(texts.AGENT_FIELD_ERRORS["container"], context)
    if output.encoding not in ENCODINGS:
        raise Invalid(texts.AGENT_FIELD_ERRORS["encoding"], context)
    if not RATE_MIN <= output.sample_rate <= RATE_MAX:
        raise Invalid(texts.AGENT_FIELD_ERRORS["sample_rate"], context)
    delay = message.max_buffer_delay_ms
    if delay is not None and not 0 <= delay <= DELAY_MAX_MS:
        raise Invalid(texts.AGENT_FIELD_ERRORS["max_buffer_delay_ms"], context)
    config = message.generation_config or GenerationConfig()
    tuning = Tuning(
        lang=language(message.language, context),
        speed=speed(config.speed, context),
        emo_vector=emotion_vector(config.emotion),
    )
    return ContextSettings(
        voice=voice.id,
        encoding=next(e for e in ENCODINGS if e == output.encoding),
        sample_rate=output.sample_rate,
        timestamps=bool(message.add_timestamps),
        max_buffer_delay=None if delay is None else delay / 1000,
        tuning=tuning,
        ssml=message.text_format == "ssml",
    )


def language(code: str | None, context: str | None) -> Lang | None:
    """Cartesia's ``language`` (``en``, ``zh``, ``en-US`` ...) as the job's ``lang``; none: from the text."""
    if not code:
        return None
    lang = lang_of(code)
    if lang is None:
        raise Invalid(texts.agent_language(code), context)
    return lang


def speed(value: float | str | None, context: str | None) -> float | None:
    if value is None:
        return None
    rate = SPEED_NAMES.get(value) if isinstance(value, str) else float(value)
    if rate is None or not SPEED_MIN <= rate <= SPEED_MAX:
        raise Invalid(texts.AGENT_FIELD_ERRORS["speed"], context)
    return rate


def emotion_vector(emotion: str | list[str] | None) -> tuple[float, ...] | None:
    """The eight-dimension vector for Cartesia's ``emotion`` (the first, if a list), or ``None``."""
    name = (emotion[0] if emotion else None) if isinstance(emotion, list) else emotion
    if not name:
        return None
    base, _, level = name.strip().lower().partition(":")
    dimension = EMOTION_NAMES.get(base)
    weight = EMOTION_LEVELS.get(level)
    if dimension is None or weight is None:
        return None
    return tuple(weight if d == dimension else 0.0 for d in EMOTIONS)


# --- replies ---------------------------------------------------------------------------------------


class Chunk(msgspec.Struct, kw_only=True):
    type: Literal["chunk"] = "chunk"
    context_id: str
    data: str
    done: bool = False
    status_code: int = 206


class WordTimestamps(msgspec.Struct, kw_only=True):
    words: list[str]
    start: list[float]
    end: list[float]


class Timestamps(msgspec.Struct, kw_only=True):
    """No ``data``: livekit takes any message with ``data`` for audio."""

    type: Literal["timestamps"] = "timestamps"
    context_id: str
    word_timestamps: WordTimestamps
    done: bool = False
    status_code: int = 206


class Done(msgspec.Struct, kw_only=True):
    type: Literal["done"] = "done"
    context_id: str
    done: bool = True
    status_code: int = 206


class FlushDone(msgspec.Struct, kw_only=True):
    type: Literal["flush_done"] = "flush_done"
    context_id: str
    flush_id: int
    flush_done: bool = True
    done: bool = False
    status_code: int = 206


class Failure(msgspec.Struct, kw_only=True):
    """``error``: the context (if the message named one) ends; the socket lives on."""

    type: Literal["error"] = "error"
    context_id: str | None
    error: str
    done: bool = True
    status_code: int = 400


AgentReply = Chunk | Timestamps | Done | FlushDone | Failure
