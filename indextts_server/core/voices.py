"""The voice library's rules: what a voice name may be, the upload limits, and the errors they raise."""

from __future__ import annotations

import unicodedata
from typing import Final

from . import texts
from .config import VoiceLimits

DEFAULT_VOICE: Final = "default"
"""The bundled voice every client may name (``--default-voice``), unless the library has its own."""

NAME_MAX_BYTES: Final = 200
"""A name becomes a file name: its UTF-8 form must fit the file system's 255-byte limit."""


class VoiceError(Exception):
    """An upload or a name that is refused: ``str(error)`` is the client's text.

    ``status`` is the HTTP status it maps to, ``param`` the request field it is about and
    ``code`` a stable machine-readable reason.
    """

    def __init__(self, message: str, *, status: int, param: str | None, code: str):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code


def name_error(message: str) -> VoiceError:
    return VoiceError(message, status=400, param="name", code="invalid_voice_name")


def check_voice_name(name: str, max_chars: int) -> str:
    """The name in its canonical (NFC) form, or `VoiceError` saying what is wrong with it.

    Letters of any script, combining marks after a letter (Devanagari, Thai, ...), decimal digits,
    ``_`` and ``-``. Nothing else: no ``.``, no path separators, no spaces, no control characters,
    so a name can never leave the library's folder or hide in a listing.
    """
    canonical = unicodedata.normalize("NFC", name)
    if not canonical:
        raise name_error(texts.VOICE_NAME_MISSING)
    if len(canonical) > max_chars or len(canonical.encode("utf-8")) > NAME_MAX_BYTES:
        raise name_error(texts.voice_name_too_long(max_chars))
    for index, char in enumerate(canonical):
        category = unicodedata.category(char)
        if char in "_-" or category == "Nd" or category.startswith("L"):
            continue
        if category.startswith("M") and index > 0:
            continue
        raise name_error(texts.VOICE_NAME_RULE)
    return canonical


def unknown_voice(field: str, name: str) -> VoiceError:
    return VoiceError(texts.unknown_voice(field, name), status=404, param=field, code="voice_not_found")


def voice_exists(name: str) -> VoiceError:
    return VoiceError(
        texts.voice_exists(name),
        status=409,
        param="name",
        code="voice_exists",
    )


def library_full(limit: int) -> VoiceError:
    return VoiceError(
        texts.library_full(limit),
        status=409,
        param="name",
        code="voice_limit_reached",
    )


def missing_sample() -> VoiceError:
    return VoiceError(texts.SAMPLE_MISSING, status=400, param="audio_sample", code="missing_audio_sample")


def sample_too_big(limit: int) -> VoiceError:
    return VoiceError(texts.sample_too_big(limit), status=413, param="audio_sample", code="audio_too_large")


def sample_not_audio() -> VoiceError:
    return VoiceError(
        texts.SAMPLE_NOT_AUDIO,
        status=400,
        param="audio_sample",
        code="invalid_audio",
    )


def sample_duration(seconds: float, limits: VoiceLimits) -> VoiceError:
    if seconds > limits.max_seconds:
        message = texts.sample_too_long(limits.min_seconds, limits.max_seconds)
    else:
        message = texts.sample_too_short(seconds, limits.min_seconds, limits.max_seconds)
    return VoiceError(
        message,
        status=400,
        param="audio_sample",
        code="invalid_audio_duration",
    )


def ref_text_too_long(limit: int) -> VoiceError:
    return VoiceError(texts.ref_text_too_long(limit), status=400, param="ref_text", code="invalid_ref_text")


def builtin_voice(name: str) -> VoiceError:
    return VoiceError(texts.builtin_voice(name), status=400, param="name", code="builtin_voice")
