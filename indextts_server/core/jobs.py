"""A ``tts_stream`` request becomes a job for the engine and a delivery for its replies, defaults applied."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from .engine import SynthesisJob
from .protocol import TtsStream
from .tasks import CONTRACT_DELIVERY, Delivery

_DEFAULT: Final = SynthesisJob(text="", prompt_audio="")
"""`SynthesisJob`'s field defaults (the contract's), the only place they are written."""

VOICE_FIELDS: Final = frozenset({"voice", "emo_voice"})
"""Fields that name a voice of the library; the other audio fields are server paths."""


def audio_fields(request: TtsStream) -> dict[str, str]:
    """The audio the request names, by field, in the order it is checked.

    The speaker is ``prompt_audio`` or ``voice``; in ``audio`` mode the emotion reference is
    ``emo_audio`` or ``emo_voice`` (fields of another ``emo_mode`` are ignored).
    """
    fields: dict[str, str] = {}
    if request.voice is not None:
        fields["voice"] = request.voice
    elif request.prompt_audio is not None:
        fields["prompt_audio"] = request.prompt_audio
    if request.emo_mode == "audio":
        if request.emo_voice is not None:
            fields["emo_voice"] = request.emo_voice
        elif request.emo_audio is not None:
            fields["emo_audio"] = request.emo_audio
    return fields


def job_from(request: TtsStream, resolved: Mapping[str, str]) -> SynthesisJob:
    """The engine's view of ``request``: defaults applied, other modes' fields dropped.

    ``resolved`` maps each of `audio_fields` to the file the engine opens (checked and made
    absolute by the caller, which does the I/O).
    """
    mode = request.emo_mode or _DEFAULT.emo_mode
    emo_audio = resolved.get("emo_voice") or resolved.get("emo_audio")
    return SynthesisJob(
        text=request.text,
        prompt_audio=resolved.get("voice") or resolved["prompt_audio"],
        emo_mode=mode,
        emo_audio=emo_audio if mode == "audio" else None,
        emo_alpha=_DEFAULT.emo_alpha if request.emo_alpha is None else request.emo_alpha,
        emo_vector=tuple(request.emo_vector) if mode == "vector" and request.emo_vector else None,
        emo_text=request.emo_text if mode == "text" else None,
        interval_silence=_DEFAULT.interval_silence
        if request.interval_silence is None
        else request.interval_silence,
        max_tokens=_DEFAULT.max_tokens if request.max_tokens is None else request.max_tokens,
        use_random=_DEFAULT.use_random if request.use_random is None else request.use_random,
        seed=request.seed,
        quick_first=_DEFAULT.quick_first if request.quick_first is None else request.quick_first,
    )


def delivery_from(request: TtsStream) -> Delivery:
    """How the task's audio and replies go out: the request's opt-in extensions."""
    return Delivery(
        stream=bool(request.stream),
        format=request.format or CONTRACT_DELIVERY.format,
        extended=request.extended,
    )
