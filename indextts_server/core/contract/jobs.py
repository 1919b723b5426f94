"""A ``tts_stream`` request becomes a job for the engine and a delivery for its replies, defaults applied."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, Protocol, cast

from .. import texts
from ..engine import Capabilities, EmoMode, Lang, SynthesisJob, detect_lang
from ..plan import Plan, Speech, expand, text_of
from ..ssml import plain
from ..tasks import CONTRACT_DELIVERY, Delivery
from .protocol import TtsStream

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


class Tuning(Protocol):
    """The optional fields a request shares with every other way to ask for speech."""

    @property
    def emo_alpha(self) -> float | None: ...
    @property
    def emo_vector(self) -> Sequence[float] | None: ...
    @property
    def interval_silence(self) -> int | None: ...
    @property
    def max_tokens(self) -> int | None: ...
    @property
    def use_random(self) -> bool | None: ...
    @property
    def seed(self) -> int | None: ...
    @property
    def quick_first(self) -> int | None: ...
    @property
    def lang(self) -> str | None: ...
    @property
    def speed(self) -> float | None: ...


def job(
    tuning: Tuning,
    *,
    text: str,
    prompt_audio: str,
    emo_mode: EmoMode,
    emo_audio: str | None,
    emo_text: str | None,
    plan: Plan | None = None,
) -> SynthesisJob:
    """A job with `SynthesisJob`'s defaults for what ``tuning`` leaves out (``None``), and the
    fields of every ``emo_mode`` but ``emo_mode`` dropped.

    With a ``plan`` (SSML's, its voices bound to files) ``text`` becomes what the plan says; a
    plan that is only plain text is that text, with no plan (so it renders as plain text does).
    """
    if plan is not None:
        text = plain(plan) or ""
        if text:
            plan = None
        else:
            text = " ".join(text_of(step.pieces) for step in plan if isinstance(step, Speech))
    return SynthesisJob(
        text=text,
        plan=plan,
        prompt_audio=prompt_audio,
        emo_mode=emo_mode,
        emo_audio=emo_audio if emo_mode == "audio" else None,
        emo_alpha=_DEFAULT.emo_alpha if tuning.emo_alpha is None else tuning.emo_alpha,
        emo_vector=tuple(tuning.emo_vector) if emo_mode == "vector" and tuning.emo_vector else None,
        emo_text=emo_text if emo_mode == "text" else None,
        interval_silence=_DEFAULT.interval_silence
        if tuning.interval_silence is None
        else tuning.interval_silence,
        max_tokens=_DEFAULT.max_tokens if tuning.max_tokens is None else tuning.max_tokens,
        use_random=_DEFAULT.use_random if tuning.use_random is None else tuning.use_random,
        seed=tuning.seed,
        quick_first=_DEFAULT.quick_first if tuning.quick_first is None else tuning.quick_first,
        lang=None if tuning.lang is None else cast(Lang, tuning.lang.lower()),  # checked by the decoder
        speed=_DEFAULT.speed if tuning.speed is None else tuning.speed,
    )


def job_from(request: TtsStream, resolved: Mapping[str, str], plan: Plan | None = None) -> SynthesisJob:
    """The engine's view of a ``tts_stream`` request (see `job`).

    ``resolved`` maps each of `audio_fields` to the file the engine opens (checked and made
    absolute by the caller, which does the I/O); ``plan`` is the SSML's, its voices resolved too.
    """
    return job(
        request,
        text=request.text,
        prompt_audio=resolved.get("voice") or resolved["prompt_audio"],
        emo_mode=request.emo_mode or _DEFAULT.emo_mode,
        emo_audio=resolved.get("emo_voice") or resolved.get("emo_audio"),
        emo_text=request.emo_text,
        plan=plan,
    )


def delivery_from(request: TtsStream) -> Delivery:
    """How the task's audio and replies go out: the request's opt-in extensions."""
    return Delivery(
        stream=bool(request.stream),
        format=request.format or CONTRACT_DELIVERY.format,
        extended=request.extended,
        sample_rate=request.sample_rate or CONTRACT_DELIVERY.sample_rate,
        timestamps=bool(request.timestamps),
    )


class Unfit(NamedTuple):
    """Why a job asks for what the model cannot do: the request field, and the client's text."""

    field: str
    message: str


def unfit(job: SynthesisJob, capabilities: Capabilities | None) -> Unfit | None:
    """What in ``job`` lies outside ``capabilities``, or None when the model can run it.

    Every transport asks this before it queues a task, so such a request is refused at once
    instead of failing after ``start``. ``None`` capabilities (not known yet: a gateway that has
    seen no worker) admit every job.
    """
    if capabilities is None:
        return None
    if job.plan is not None:  # each span is a job of its own
        spans = (item for item in expand(job, capabilities.model) if isinstance(item, SynthesisJob))
        return next((problem for span in spans if (problem := unfit(span, capabilities))), None)
    model = capabilities.model
    lang = job.lang
    if lang is None and capabilities.detects_lang:
        lang = detect_lang(job.text)
    if lang is not None:
        if lang not in capabilities.langs:
            return Unfit("lang", texts.lang_unsupported(lang, model, "/".join(capabilities.langs)))
        if lang in capabilities.missing_tokenizers:
            return Unfit("lang", texts.lang_needs_tokenizer(lang, model))
    if job.emo_mode == "text" and not capabilities.emotion_model:
        return Unfit("emo_mode", texts.emo_text_unavailable(model))
    if job.emo_mode not in capabilities.emo_modes:
        modes = "/".join(capabilities.emo_modes)
        return Unfit("emo_mode", texts.emo_mode_unsupported(job.emo_mode, model, modes))
    low, high = capabilities.speed
    if not low <= job.speed <= high:
        return Unfit("speed", texts.speed_unsupported(low, high, model))
    return None
