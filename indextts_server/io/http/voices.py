"""``/v1/audio/voices``: upload (multipart), list and delete the voices of the library."""

from __future__ import annotations

from functools import partial
from typing import Final

import msgspec
import trio
from hypercorn.typing import ASGISendCallable

from ...core import texts
from ...core.openai import ApiError
from ...core.voices import VoiceError, missing_sample, name_error, sample_too_big
from ..audio.voices import Voice, VoiceLibrary
from .asgi import BodyTooLarge, Request, respond_json
from .forms import FormError, parse_form

FORM_OVERHEAD: Final = 64 * 1024
"""Bytes a multipart body may hold beyond the sample itself (boundaries, headers, name, ref_text)."""
YES: Final = frozenset({"1", "true", "yes", "on"})


class VoiceList(msgspec.Struct, kw_only=True):
    """The shape Open WebUI reads: ``{"voices": [{"id", "name", ...}]}``."""

    voices: list[Voice]


class Deleted(msgspec.Struct, kw_only=True):
    id: str
    object: str = "voice"
    deleted: bool = True


def api_error(error: VoiceError) -> ApiError:
    return ApiError(error.status, str(error), param=error.param, code=error.code)


class Voices:
    """The endpoints; library changes are serialised so the count limit and names never race."""

    def __init__(self, library: VoiceLibrary):
        self.library = library
        self._lock = trio.Lock()

    async def list(self, request: Request, send: ASGISendCallable) -> None:
        voices = await trio.to_thread.run_sync(self.library.list)
        await respond_json(send, 200, VoiceList(voices=voices))

    async def upload(self, request: Request, send: ASGISendCallable) -> None:
        limits = self.library.limits
        try:
            try:
                raw = await request.body(limits.max_bytes + FORM_OVERHEAD)
            except BodyTooLarge:
                raise sample_too_big(limits.max_bytes) from None
            try:
                fields = parse_form(request.headers.get("content-type", ""), raw)
            except FormError as error:
                raise ApiError(400, str(error), code="invalid_form") from None
            name = fields.get("name")
            if name is None:
                raise name_error(texts.VOICE_NAME_MISSING)
            sample = fields.get("audio_sample")
            if sample is None:
                raise missing_sample()
            ref_text = fields["ref_text"].text if "ref_text" in fields else None
            replace = "replace" in fields and fields["replace"].text.strip().lower() in YES
            replace = replace or any(value.lower() in YES for value in request.query.get("replace", []))
            async with self._lock:
                add = partial(self.library.add, name.text, sample.data, ref_text=ref_text, replace=replace)
                voice = await trio.to_thread.run_sync(add)
        except VoiceError as error:
            raise api_error(error) from None
        await respond_json(send, 201, voice)

    async def delete(self, request: Request, send: ASGISendCallable, name: str) -> None:
        try:
            async with self._lock:
                canonical = await trio.to_thread.run_sync(self.library.delete, name)
        except VoiceError as error:
            raise api_error(error) from None
        await respond_json(send, 200, Deleted(id=canonical))
