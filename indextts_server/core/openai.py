"""The OpenAI-compatible speech API, pure: its request, its errors, and the request -> job mapping."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, Literal

import msgspec

from . import texts
from .contract.jobs import job
from .contract.protocol import ModelFields
from .engine import SAMPLE_RATE, EmoMode, SynthesisJob
from .plan import Plan
from .ssml import SsmlError, parse
from .tasks import Delivery
from .voices import DEFAULT_VOICE

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
RESPONSE_FORMATS: Final = ("mp3", "opus", "aac", "flac", "wav", "pcm")
PCM_RATE: Final = 24000
"""OpenAI's ``pcm``: 16-bit mono at 24 kHz, the rate its clients play it at without asking."""

MODEL: Final = "indextts2"
MODEL_ALIASES: Final = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""OpenAI's speech model names, accepted so clients that hard-code one of them work unchanged."""
MODEL_25: Final = "indextts-2.5"
"""IndexTTS-2.5's id, listed first (and accepted) by a server that runs it."""


def model_ids(engine: str) -> tuple[str, ...]:
    """The ``model`` values a server running ``engine`` lists and accepts: IndexTTS-2.5's own id
    where it runs, then ``indextts2`` (what every earlier client sends) and OpenAI's names."""
    own = (MODEL_25,) if engine == "indextts25" else ()
    return (*own, MODEL, *MODEL_ALIASES)


class ApiError(Exception):
    """An HTTP API error in OpenAI's shape; ``str(error)`` is the client's text (Chinese)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status == 429:
            return "rate_limit_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(msgspec.Struct, kw_only=True):
    """``{"error": {"message", "type", "param", "code"}}``: what OpenAI's clients parse."""

    error: ErrorDetail


def error_body(error: ApiError) -> ErrorBody:
    return ErrorBody(
        error=ErrorDetail(message=error.message, type=error.type, param=error.param, code=error.code)
    )


class VoiceRef(msgspec.Struct, kw_only=True):
    """Newer SDKs may send ``voice`` as ``{"id": ...}``."""

    id: str


class SpeechRequest(ModelFields, kw_only=True):
    """``POST /v1/audio/speech``: OpenAI's fields, then this model's own (as the WebSocket names them).

    ``None`` means the default, as over the WebSocket. Unknown fields are ignored. The audio is
    streamed as segments are produced, as OpenAI does, unless ``stream`` (from the model's fields)
    is ``false``: then it is one whole file with its length. ``stream_format: "sse"`` always
    streams. ``sample_rate`` resamples any format (``pcm`` is 24 kHz without it, as OpenAI's is).
    """

    input: str
    model: str | None = None
    voice: str | VoiceRef | None = None
    instructions: str | None = None
    response_format: ResponseFormat | None = None
    stream_format: Literal["audio", "sse"] | None = None

    @property
    def voice_name(self) -> str:
        if isinstance(self.voice, VoiceRef):
            return self.voice.id
        return self.voice or DEFAULT_VOICE

    @property
    def format(self) -> ResponseFormat:
        return self.response_format or "mp3"

    @property
    def sse(self) -> bool:
        return self.stream_format == "sse"

    @property
    def streaming(self) -> bool:
        return self.sse or self.stream is not False

    @property
    def rate(self) -> int:
        """The output's sample rate: the one asked for, else OpenAI's for ``pcm``, else the model's."""
        if self.sample_rate is not None:
            return self.sample_rate
        return PCM_RATE if self.format == "pcm" else SAMPLE_RATE


SPEECH_FIELD_ERRORS: Final[dict[str, str]] = {**texts.FIELD_ERRORS, **texts.SPEECH_FIELD_ERRORS}

_MISSING_FIELD = re.compile(r"missing required field `([A-Za-z_]+)`")
_AT_FIELD = re.compile(r" - at `\$\.([A-Za-z_]+)")
_decoder: Final = msgspec.json.Decoder(SpeechRequest)


def invalid(field: str, message: str | None = None) -> ApiError:
    text = message or SPEECH_FIELD_ERRORS.get(field) or texts.invalid_field(field)
    return ApiError(400, text, param=field, code="invalid_value")


def decode_speech(
    body: bytes, *, max_text_chars: int, models: tuple[str, ...] = (MODEL, *MODEL_ALIASES)
) -> SpeechRequest:
    """The request, validated; `ApiError` (400) naming the field otherwise."""
    try:
        request = _decoder.decode(body)
    except msgspec.ValidationError as error:
        detail = str(error)
        if detail.startswith("Expected `object`"):
            raise ApiError(400, texts.BODY_NOT_OBJECT, code="invalid_json") from None
        match = _MISSING_FIELD.search(detail) or _AT_FIELD.search(detail)
        field = match.group(1) if match else "input"
        raise invalid("voice" if field == "id" else field) from None
    except msgspec.DecodeError:
        raise ApiError(400, texts.BODY_NOT_JSON, code="invalid_json") from None
    if not request.input.strip():
        raise invalid("input")
    if len(request.input) > max_text_chars:
        raise invalid("input", texts.input_too_long(max_text_chars))
    if request.text_format == "ssml":
        try:
            parse(request.input, lang=request.lang, field="input")  # refused here, before the queue
        except SsmlError as error:
            raise invalid("input", str(error)) from None
    if request.model is not None and request.model not in models:
        raise ApiError(
            404,
            texts.unknown_model(request.model, "/".join(models)),
            param="model",
            code="model_not_found",
        )
    emo_mode(request)  # raises on a contradiction
    return request


def emo_mode(request: SpeechRequest) -> EmoMode:
    """The emotion mode: ``emo_mode`` if given, else the one the request's emotion fields imply.

    ``instructions`` is IndexTTS2's emotion text (``text`` mode). Fields of two modes without an
    ``emo_mode`` to choose between them are an error, as are both of a pair that mean one thing.
    """
    if request.instructions is not None and request.emo_text is not None:
        raise invalid("instructions", texts.BOTH_EMO_TEXT)
    if request.emo_voice is not None and request.emo_audio is not None:
        raise invalid("emo_voice", texts.BOTH_EMO_VOICE)
    text = request.emo_text if request.emo_text is not None else request.instructions
    mode = request.emo_mode
    if mode is None:
        implied: list[EmoMode] = []
        if text is not None and text.strip():
            implied.append("text")
        if request.emo_vector is not None:
            implied.append("vector")
        if request.emo_voice is not None or request.emo_audio is not None:
            implied.append("audio")
        if len(implied) > 1:
            raise invalid("emo_mode", texts.emotion_ambiguous("/".join(implied)))
        mode = implied[0] if implied else "none"
    if mode == "audio" and not ((request.emo_voice or "").strip() or (request.emo_audio or "").strip()):
        raise invalid("emo_voice", texts.EMO_AUDIO_OR_VOICE_REQUIRED)
    if mode == "vector" and request.emo_vector is None:
        raise invalid("emo_vector", texts.EMO_VECTOR_REQUIRED)
    if mode == "text" and not (text and text.strip()):
        raise invalid("instructions", texts.EMO_TEXT_OR_INSTRUCTIONS_REQUIRED)
    return mode


def speech_audio_fields(request: SpeechRequest) -> dict[str, str]:
    """The audio the request names, by field, as `core.contract.jobs.audio_fields` does for `tts_stream`."""
    fields = {"voice": request.voice_name}
    if emo_mode(request) == "audio":
        if request.emo_voice is not None:
            fields["emo_voice"] = request.emo_voice
        elif request.emo_audio is not None:
            fields["emo_audio"] = request.emo_audio
    return fields


def speech_job(request: SpeechRequest, resolved: Mapping[str, str], plan: Plan | None = None) -> SynthesisJob:
    """The engine's job, given the files of `speech_audio_fields` and the SSML's ``plan`` with its
    voices resolved (see `core.contract.jobs.job`)."""
    text = request.emo_text if request.emo_text is not None else request.instructions
    return job(
        request,
        text=request.input,
        prompt_audio=resolved["voice"],
        emo_mode=emo_mode(request),
        emo_audio=resolved.get("emo_voice") or resolved.get("emo_audio"),
        emo_text=text,
        plan=plan,
    )


def unfit_param(request: SpeechRequest, field: str) -> str:
    """The request field to name for a job field the model cannot do (`core.contract.jobs.unfit`):
    an ``emo_mode`` the request did not name is named by the field that implied it."""
    if field != "emo_mode" or request.emo_mode is not None:
        return field
    implied_by: dict[EmoMode, str] = {
        "text": "instructions" if request.instructions is not None else "emo_text",
        "vector": "emo_vector",
        "audio": "emo_voice" if request.emo_voice is not None else "emo_audio",
    }
    return implied_by.get(emo_mode(request), field)


def speech_delivery(request: SpeechRequest) -> Delivery:
    """What the worker hands the speech endpoint: the engine's samples segment by segment (the
    endpoint encodes them). ``speed`` is in the job: the engine renders it, so the cue times of
    its samples need no scaling."""
    return Delivery(stream=True, format="pcm")


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "indextts-server"


class ModelList(msgspec.Struct, kw_only=True):
    """``GET /v1/models``: OpenAI's list shape (``data``); Open WebUI reads ``models`` from /audio/models."""

    object: str = "list"
    data: list[Model]
    models: list[Model]


def model_list(ids: tuple[str, ...] = (MODEL, *MODEL_ALIASES)) -> ModelList:
    models = [Model(id=name) for name in ids]
    return ModelList(data=models, models=models)
