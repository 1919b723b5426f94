"""Home Assistant's Wyoming protocol, pure: bytes in to events, events out to bytes, a request's job.

Theory of operation. A Wyoming connection carries events both ways, each one JSON line
``{"type", "version", "data"?, "data_length"?, "payload_length"?}`` followed by ``data_length``
bytes of JSON (merged into ``data``) and ``payload_length`` bytes of payload (audio).
`Framing` cuts the bytes a client sends into `Frame` s, in bounded space: a header line longer
than `MAX_LINE`, or data and payload longer than the server's message limit, are skipped without
being held, and reported as `Malformed` once; so is a line that is not a JSON object with a
``type``. The connection goes on with the next event. `request` turns a frame into one of the
TTS requests (or ``None`` for an event the server does not take), `Malformed` naming the field
when its data does not fit. The replies are built here too (`event`), the same way the package
``wyoming`` writes them, so Home Assistant reads them unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final, NamedTuple

import msgspec

from . import texts
from .agents.cartesia import Tuning
from .contract.jobs import job
from .engine import SAMPLE_RATE, Capabilities, Lang, SynthesisJob, lang_of
from .plan import Plan
from .tasks import Delivery

PROTOCOL_VERSION: Final = "1.10.2"
"""The version of the ``wyoming`` package whose events these are (every event carries one)."""
MAX_LINE: Final = 64 * 1024
"""Longest header line accepted; a longer one is skipped."""
WIDTH: Final = 2
CHANNELS: Final = 1
DELIVERY: Final = Delivery(stream=True, format="pcm", sample_rate=SAMPLE_RATE, realtime=True)
"""Every task's audio: 16-bit mono samples at the model's rate, segment by segment. A voice
assistant waits on it as it is spoken, so it goes ahead of bulk work (``realtime``)."""


class Frame(NamedTuple):
    type: str
    data: dict[str, Any]
    payload: bytes


class Malformed(Exception):
    """An event the server cannot read; ``str()`` is the client's text."""


class Framing:
    """Sans-I/O reader of a client's events: ``feed`` bytes, then take `Frame` s from ``next``."""

    def __init__(self, max_body: int):
        self.max_body = max_body
        self._buffer = bytearray()
        self._header: dict[str, Any] | None = None
        self._lengths = (0, 0)
        self._skip = 0  # bytes of an oversized event still to drop as they come
        self._skipping_line = False  # inside an oversized header line

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Frame | None:
        """The next whole event, ``None`` until more bytes come; `Malformed` for one skipped."""
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                del self._buffer[:dropped]
                self._skip -= dropped
                if self._skip:
                    return None
            if self._header is None:
                line = self._line()
                if line is None:
                    return None
                self._header, self._lengths = _header(line)
                data_length, payload_length = self._lengths
                if data_length + payload_length > self.max_body:
                    self._header = None
                    self._skip = data_length + payload_length
                    raise Malformed(texts.wyoming_too_large(self.max_body))
            data_length, payload_length = self._lengths
            if len(self._buffer) < data_length + payload_length:
                return None
            header, self._header = self._header, None
            raw_data = bytes(self._buffer[:data_length])
            payload = bytes(self._buffer[data_length : data_length + payload_length])
            del self._buffer[: data_length + payload_length]
            data = header.get("data") or {}
            if not isinstance(data, dict):
                raise Malformed(texts.WYOMING_NOT_EVENT)
            if raw_data:
                extra = _json(raw_data)
                if not isinstance(extra, dict):
                    raise Malformed(texts.WYOMING_NOT_EVENT)
                data.update(extra)
            return Frame(header["type"], data, payload)

    def _line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > MAX_LINE:
                self._buffer.clear()  # the line goes on: drop it as it comes
                if not self._skipping_line:
                    self._skipping_line = True
                    raise Malformed(texts.wyoming_line_too_long(MAX_LINE))
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        if self._skipping_line:
            self._skipping_line = False
            return self._line()
        if len(line) > MAX_LINE:
            raise Malformed(texts.wyoming_line_too_long(MAX_LINE))
        if not line.strip():
            return self._line()
        return line


def _json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        raise Malformed(texts.WYOMING_NOT_EVENT) from None


def _header(line: bytes) -> tuple[dict[str, Any], tuple[int, int]]:
    header = _json(line)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise Malformed(texts.WYOMING_NOT_EVENT)
    lengths = []
    for field in ("data_length", "payload_length"):
        value = header.get(field) or 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise Malformed(texts.WYOMING_NOT_EVENT)
        lengths.append(value)
    return header, (lengths[0], lengths[1])


# -- requests ----------------------------------------------------------------------------------------


class Voice(msgspec.Struct, kw_only=True):
    """``voice``: a name from ``info`` (a voice of the library), a language (``en``, ``zh_CN``)."""

    name: str | None = None
    language: str | None = None
    speaker: str | None = None


class Synthesize(msgspec.Struct, kw_only=True):
    """``synthesize``: a whole text (also sent, and ignored, during a stream)."""

    text: str
    voice: Voice | None = None
    text_format: str | None = None


class SynthesizeStart(msgspec.Struct, kw_only=True):
    """``synthesize-start``: a stream opens; its voice holds until ``synthesize-stop``."""

    voice: Voice | None = None
    text_format: str | None = None


class SynthesizeChunk(msgspec.Struct, kw_only=True):
    text: str


class SynthesizeStop(msgspec.Struct):
    pass


class Describe(msgspec.Struct):
    pass


class Ping(msgspec.Struct, kw_only=True):
    text: str | None = None


Request = Synthesize | SynthesizeStart | SynthesizeChunk | SynthesizeStop | Describe | Ping
REQUESTS: Final[dict[str, type[Request]]] = {
    "synthesize": Synthesize,
    "synthesize-start": SynthesizeStart,
    "synthesize-chunk": SynthesizeChunk,
    "synthesize-stop": SynthesizeStop,
    "describe": Describe,
    "ping": Ping,
}
_AT_FIELD = re.compile(r"at `\$\.([A-Za-z_.]+)`")


def request(frame: Frame) -> Request | None:
    """The request ``frame`` holds; ``None`` for an event a TTS server does not take."""
    kind = REQUESTS.get(frame.type)
    if kind is None:
        return None
    try:
        return msgspec.convert(frame.data, kind)
    except msgspec.ValidationError as error:
        found = _AT_FIELD.search(str(error))
        field = found.group(1) if found else "data"
        raise Malformed(texts.wyoming_field(frame.type, field)) from None


class Wanted(NamedTuple):
    """What a request asks for: the library's voice name, the ``lang``, and whether its text is
    SSML (``text_format: "ssml"``, see `core.ssml`)."""

    voice: str | None
    lang: Lang | None
    ssml: bool = False


def wanted(voice: Voice | None, text_format: str | None) -> Wanted:
    """The voice, language and text format asked for; `Malformed` for a language no model reads,
    or a text format other than ``text`` and ``ssml``."""
    if text_format not in (None, "text", "ssml"):
        raise Malformed(texts.wyoming_text_format(text_format))
    ssml = text_format == "ssml"
    if voice is None:
        return Wanted(None, None, ssml)
    lang = None
    if voice.language:
        lang = lang_of(voice.language)
        if lang is None:
            raise Malformed(texts.wyoming_language(voice.language))
    return Wanted(voice.name or None, lang, ssml)


def synthesis_job(text: str, prompt_audio: str, lang: Lang | None, plan: Plan | None = None) -> SynthesisJob:
    """The engine's job for one text (a whole ``synthesize``, or one sentence of a stream), with
    its SSML's ``plan`` if it has one."""
    tuning = Tuning(lang=lang)
    return job(
        tuning,
        text=text,
        prompt_audio=prompt_audio,
        emo_mode="none",
        emo_audio=None,
        emo_text=None,
        plan=plan,
    )


# -- replies -----------------------------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()


def event(kind: str, data: object = None, payload: bytes = b"") -> bytes:
    """One event on the wire, as the ``wyoming`` package writes it (data after the header line)."""
    header: dict[str, object] = {"type": kind, "version": PROTOCOL_VERSION}
    body = _encoder.encode(data) if data else b""
    if body:
        header["data_length"] = len(body)
    if payload:
        header["payload_length"] = len(payload)
    return _encoder.encode(header) + b"\n" + body + payload


def audio_start(rate: int = SAMPLE_RATE) -> bytes:
    return event("audio-start", {"rate": rate, "width": WIDTH, "channels": CHANNELS})


def audio_chunk(samples: bytes, rate: int = SAMPLE_RATE) -> bytes:
    return event("audio-chunk", {"rate": rate, "width": WIDTH, "channels": CHANNELS}, samples)


def audio_stop() -> bytes:
    return event("audio-stop")


def synthesize_stopped() -> bytes:
    return event("synthesize-stopped")


def pong(text: str | None) -> bytes:
    return event("pong", {"text": text} if text else None)


def error(text: str, code: str) -> bytes:
    return event("error", {"text": text, "code": code})


ATTRIBUTION: Final = {"name": "IndexTTS (bilibili)", "url": "https://github.com/index-tts/index-tts"}


def info(voices: list[str], capabilities: Capabilities | None, version: str) -> bytes:
    """``info``: one TTS program, every voice speaking the languages the loaded model reads."""
    langs = [] if capabilities is None else capabilities.langs
    missing = () if capabilities is None else capabilities.missing_tokenizers
    languages = [lang for lang in langs if lang not in missing]
    model = "IndexTTS" if capabilities is None else capabilities.model
    artifact = {"attribution": ATTRIBUTION, "installed": True, "version": version}
    program = {
        "name": "indextts-server",
        "description": f"{model} (indextts-server)",
        **artifact,
        "voices": [
            {"name": name, "description": name, "languages": languages, **artifact} for name in voices
        ],
        "supports_synthesize_streaming": True,
    }
    others: dict[str, list[object]] = {key: [] for key in ("asr", "handle", "intent", "wake", "mic", "snd")}
    return event("info", {**others, "tts": [program]})
