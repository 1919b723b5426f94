"""Turns one client text frame into a request, or into the one clear error its sender will read."""

from __future__ import annotations

import re
from typing import Final

import msgspec

from ..ssml import SsmlError, parse
from ..texts import (
    FIELD_ERRORS,
    MALFORMED_JSON,
    MISSING_TYPE,
    NOT_AN_OBJECT,
    invalid_field,
    text_too_long,
    unknown_type,
)
from .protocol import Cancel, Request, TaskStatusQuery, TtsStream

_MISSING_FIELD = re.compile(r"missing required field `([A-Za-z_]+)`")
_AT_FIELD = re.compile(r" - at `\$\.([A-Za-z_]+)")

_decoder: Final[msgspec.json.Decoder[Request]] = msgspec.json.Decoder(Request)


class RequestError(Exception):
    """A frame that cannot become a request; ``str(error)`` is the text the client is sent."""


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
    if isinstance(request, TtsStream) and request.text_format == "ssml":
        try:
            parse(request.text, lang=request.lang)  # refused here, before the queue
        except SsmlError as error:
            raise RequestError(str(error)) from None
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
    return FIELD_ERRORS.get(field) or invalid_field(field)


def _explain_type(frame: str | bytes) -> str:
    # Only on the error path: look again at the raw object to quote the type the client sent.
    # The typed decoder stops at the first bad field, so the rest may still be malformed.
    try:
        value = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return MALFORMED_JSON
    if isinstance(value, dict) and "type" in value:
        shown = value["type"]
        return unknown_type(shown if isinstance(shown, str) else msgspec.json.encode(shown).decode())
    return MISSING_TYPE


__all__ = ["Cancel", "RequestError", "TaskStatusQuery", "TtsStream", "decode_request"]
