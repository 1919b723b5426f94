"""SSML (``text_format: "ssml"``) to a speech plan: a bounded subset, refusing what could expand.

Theory of operation. Expat reads the markup with every route to expansion shut: a document type
declaration, an entity declaration or an external reference is refused where it starts (so no
entity is ever defined, and only XML's five predefined ones and character references are read).
Nothing is fetched: ``<audio src>`` speaks its fallback text. Depth, spans, voices and breaks are
bounded; every refusal is an `SsmlError` whose text names ``text`` and the line and column.

Text is gathered into the current `Speech` while voice, rate and emotion stay the same; ``<p>``,
``<s>``, ``<break>`` and any change of those end it. Whitespace at a span's ends is dropped, and
a span with nothing to say is left out, so ``<speak>text</speak>`` is the plain ``text``.
Elements the subset does not know (``emphasis``, ``lang``, ``mark``, another namespace's ...)
speak their text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, NoReturn
from xml.parsers import expat

from . import texts
from .engine import detect_lang
from .plan import ALPHABETS, BREAK_MAX_MS, Alphabet, Emotion, Pause, Piece, Plan, Speech, Word

SSML_NS: Final = "http://www.w3.org/2001/10/synthesis"
OWN_NS: Final = "urn:indextts-server:ssml"
"""The project's namespace: ``<speak xmlns:itts="urn:indextts-server:ssml">`` ... ``<itts:emotion>``."""

MAX_DEPTH: Final = 32
MAX_STEPS: Final = 256
MAX_VOICES: Final = 8

RATES: Final[dict[str, float]] = {
    "x-slow": 0.5,
    "slow": 0.75,
    "medium": 1.0,
    "default": 1.0,
    "fast": 1.25,
    "x-fast": 1.5,
}
STRENGTHS: Final[dict[str, int]] = {
    "none": 0,
    "x-weak": 100,
    "weak": 250,
    "medium": 500,
    "strong": 750,
    "x-strong": 1000,
}
"""``<break strength>`` in milliseconds; a ``<break/>`` with neither attribute is ``medium``."""

_RATE_MIN, _RATE_MAX = 0.25, 4.0
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*$")
_PERCENT = re.compile(r"^\s*([+-]?)(\d+(?:\.\d+)?)\s*%\s*$")
_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")
_PH_FORBIDDEN = re.compile(r"[<>|]")
_OPENING = re.compile(r"^\s*(<\?xml|<!|<speak[\s>/])")
_TAGS = re.compile(r"<[^>]*>")
_WRAP: Final = "<speak>"
_TEXT_ONLY: Final = frozenset({"phoneme", "sub", "say-as"})


class SsmlError(ValueError):
    """Markup refused; ``str(error)`` is the client's text (naming ``text`` and the position)."""


def parse(markup: str, *, lang: str | None = None, field: str = "text") -> Plan:
    """The plan ``markup`` asks for; `SsmlError` for markup the subset refuses.

    A document that does not open with ``<?xml`` or ``<speak`` is read as the content of one
    (``Hello <break/> world``). ``lang`` (the request's) picks how ``say-as`` dates read; None:
    the text's own language. ``field`` is the request field errors name.
    """
    wrapped = not _OPENING.match(markup)
    source = f"{_WRAP}{markup}</speak>" if wrapped else markup
    reader = _Reader(lang or detect_lang(_TAGS.sub(" ", markup)), wrapped, field)
    return reader.read(source)


@dataclass
class _Frame:
    """What an open element sets for the text inside it."""

    name: str
    voice: str | None
    rate: float
    emotion: Emotion | None
    capture: list[str] | None = None  # phoneme/sub/say-as gather their text here
    silent: bool = False  # a break's content is not spoken
    attrs: dict[str, str] = field(default_factory=dict)


class _Reader:
    def __init__(self, lang: str, wrapped: bool, field: str):
        self._lang = lang
        self._field = field
        self._wrapped = wrapped
        self._parser = expat.ParserCreate(namespace_separator=" ")
        self._steps: list[Speech | Pause] = []
        self._pieces: list[Piece] = []
        self._span: tuple[str | None, float, Emotion | None] | None = None
        self._stack: list[_Frame] = []
        self._voices: set[str] = set()
        self._source = ""

    def read(self, source: str) -> Plan:
        self._source = source
        parser = self._parser
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartDoctypeDeclHandler = self._refuse_declaration
        parser.EntityDeclHandler = self._refuse_declaration
        parser.UnparsedEntityDeclHandler = self._refuse_declaration
        parser.ExternalEntityRefHandler = self._refuse_external
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._text
        try:
            parser.Parse(source, True)
        except expat.ExpatError as error:
            reason = expat.ErrorString(error.code) if error.code else str(error)
            self._fail(texts.SSML_MALFORMED.format(reason=reason), error.lineno, error.offset)
        self._close_span()
        if not any(isinstance(step, Speech) for step in self._steps):
            raise SsmlError(texts.TEXT_MISSING)
        return tuple(self._steps)

    # -- refusals ------------------------------------------------------------------------------

    def _fail(self, reason: str, line: int | None = None, column: int | None = None) -> NoReturn:
        line = self._parser.CurrentLineNumber if line is None else line
        column = self._parser.CurrentColumnNumber if column is None else column
        if self._wrapped and line == 1:
            column = max(0, column - len(_WRAP))
        raise SsmlError(texts.ssml_invalid(self._field, line, column + 1, reason))

    def _refuse_declaration(self, *_: object) -> NoReturn:
        # Expat reports a declaration where it ends: name where it starts.
        start = self._source.find("<!DOCTYPE")
        if start < 0:
            self._fail(texts.SSML_DECLARATION)
        before = self._source[:start]
        self._fail(texts.SSML_DECLARATION, before.count("\n") + 1, start - (before.rfind("\n") + 1))

    def _refuse_external(self, *_: object) -> NoReturn:
        self._fail(texts.SSML_DECLARATION)

    # -- elements ------------------------------------------------------------------------------

    def _start(self, qname: str, attrs: dict[str, str]) -> None:
        namespace, _, local = qname.rpartition(" ")
        name = local if namespace in ("", SSML_NS) else f"{{{namespace}}}{local}"
        if len(self._stack) >= MAX_DEPTH:
            self._fail(texts.ssml_too_deep(MAX_DEPTH))
        parent = self._current()
        if parent.capture is not None:
            self._fail(texts.ssml_text_only(parent.name))
        frame = _Frame(name, parent.voice, parent.rate, parent.emotion, attrs=attrs, silent=parent.silent)
        handler = _STARTS.get(name)
        if handler is not None:
            handler(self, frame)
        self._stack.append(frame)

    def _end(self, _qname: str) -> None:
        frame = self._stack.pop()
        if frame.capture is not None and not frame.silent:
            self._add(self._finish(frame, "".join(frame.capture)))
        if frame.name in ("p", "s"):
            self._close_span()

    def _text(self, data: str) -> None:
        frame = self._current()
        if frame.capture is not None:
            frame.capture.append(data)
        elif not frame.silent:
            self._add(data)

    def _current(self) -> _Frame:
        return self._stack[-1] if self._stack else _Frame("", None, 1.0, None)

    def _add(self, piece: Piece) -> None:
        frame = self._current()
        span = (frame.voice, frame.rate, frame.emotion)
        if self._span != span:
            self._close_span()
            self._span = span
        if isinstance(piece, str) and self._pieces and isinstance(self._pieces[-1], str):
            self._pieces[-1] += piece
        else:
            self._pieces.append(piece)

    def _close_span(self) -> None:
        pieces, span = self._pieces, self._span
        self._pieces, self._span = [], None
        if span is None or not pieces:
            return
        if isinstance(pieces[0], str):
            pieces[0] = pieces[0].lstrip()
        if isinstance(pieces[-1], str):
            pieces[-1] = pieces[-1].rstrip()
        kept = tuple(piece for piece in pieces if piece)
        if not any(piece.strip() if isinstance(piece, str) else piece.text.strip() for piece in kept):
            return
        voice, rate, emotion = span
        self._step(Speech(pieces=kept, voice=voice, rate=rate, emotion=emotion))

    def _step(self, step: Speech | Pause) -> None:
        if len(self._steps) >= MAX_STEPS:
            self._fail(texts.ssml_too_many(MAX_STEPS))
        self._steps.append(step)

    # -- the subset ----------------------------------------------------------------------------

    def _boundary(self, frame: _Frame) -> None:
        self._close_span()

    def _break(self, frame: _Frame) -> None:
        self._close_span()
        time, strength = frame.attrs.get("time"), frame.attrs.get("strength")
        if time is not None:
            match = _TIME.match(time)
            if match is None:
                self._fail(texts.ssml_attribute("break", "time", time))
            value = float(match.group(1)) * (1000 if match.group(2) == "s" else 1)
            if value > BREAK_MAX_MS:
                self._fail(texts.ssml_break_too_long(BREAK_MAX_MS))
            ms = round(value)
        elif strength is not None:
            if strength not in STRENGTHS:
                self._fail(texts.ssml_attribute("break", "strength", strength))
            ms = STRENGTHS[strength]
        else:
            ms = STRENGTHS["medium"]
        self._step(Pause(ms=ms))
        frame.silent = True

    def _prosody(self, frame: _Frame) -> None:
        rate = frame.attrs.get("rate")
        if rate is None:
            return
        if rate == "default":
            frame.rate = 1.0
            return
        if rate in RATES:
            factor = RATES[rate]
        elif (match := _PERCENT.match(rate)) is not None:
            sign, number = match.group(1), float(match.group(2)) / 100
            factor = 1 + number if sign == "+" else 1 - number if sign == "-" else number
        elif (match := _NUMBER.match(rate)) is not None:
            factor = float(match.group(1))
        else:
            self._fail(texts.ssml_attribute("prosody", "rate", rate))
        frame.rate *= factor
        if not _RATE_MIN <= frame.rate <= _RATE_MAX:
            self._fail(texts.ssml_attribute("prosody", "rate", rate))

    def _voice(self, frame: _Frame) -> None:
        name = frame.attrs.get("name", "").strip()
        if not name:
            self._fail(texts.ssml_attribute("voice", "name", ""))
        self._voices.add(name)
        if len(self._voices) > MAX_VOICES:
            self._fail(texts.ssml_too_many_voices(MAX_VOICES))
        frame.voice = name

    def _emotion(self, frame: _Frame) -> None:
        attrs = frame.attrs
        mode = attrs.get("mode", "")
        alpha: float | None = None
        if "alpha" in attrs:
            alpha = _unit(attrs["alpha"])
            if alpha is None:
                self._fail(texts.ssml_attribute("emotion", "alpha", attrs["alpha"]))
        if mode == "none":
            frame.emotion = Emotion(mode="none")
        elif mode == "vector":
            values = [_unit(value) for value in attrs.get("vector", "").split(",")]
            if len(values) != 8 or any(value is None for value in values):
                self._fail(texts.ssml_attribute("emotion", "vector", attrs.get("vector", "")))
            vector = tuple(value for value in values if value is not None)
            frame.emotion = Emotion(mode="vector", vector=vector, alpha=alpha)
        elif mode == "text":
            text = attrs.get("text", "").strip()
            if not text:
                self._fail(texts.ssml_attribute("emotion", "text", ""))
            frame.emotion = Emotion(mode="text", text=text, alpha=alpha)
        elif mode == "audio":
            voice = attrs.get("voice", "").strip()
            if not voice:
                self._fail(texts.ssml_attribute("emotion", "voice", ""))
            self._voices.add(voice)
            if len(self._voices) > MAX_VOICES:
                self._fail(texts.ssml_too_many_voices(MAX_VOICES))
            frame.emotion = Emotion(mode="audio", voice=voice, alpha=alpha)
        else:
            self._fail(texts.ssml_attribute("emotion", "mode", mode))

    def _capture(self, frame: _Frame) -> None:
        attrs = frame.attrs
        if frame.name == "phoneme":
            ph = attrs.get("ph", "")
            if not ph.strip() or _PH_FORBIDDEN.search(ph):
                self._fail(texts.ssml_attribute("phoneme", "ph", ph))
        elif frame.name == "sub" and not attrs.get("alias", "").strip():
            self._fail(texts.ssml_attribute("sub", "alias", attrs.get("alias", "")))
        elif frame.name == "say-as" and attrs.get("interpret-as") not in _SAY_AS:
            self._fail(texts.ssml_attribute("say-as", "interpret-as", attrs.get("interpret-as", "")))
        frame.capture = []

    def _finish(self, frame: _Frame, content: str) -> Piece:
        """A text-only element's piece, from its content."""
        attrs = frame.attrs
        if frame.name == "sub":
            return attrs["alias"]
        if frame.name == "say-as":
            return _SAY_AS[attrs["interpret-as"]](content, attrs.get("format", ""), self._lang)
        alphabet = attrs.get("alphabet", "")
        if alphabet in ALPHABETS and content.strip():
            return Word(text=content, alphabet=_alphabet(alphabet), ph=attrs["ph"].strip())
        return content  # an alphabet no model here reads: the word as written

    def _audio(self, frame: _Frame) -> None:
        """``<audio src>`` is never fetched: its fallback content is spoken instead."""


def _alphabet(name: str) -> Alphabet:
    for alphabet in ALPHABETS:
        if alphabet == name:
            return alphabet
    raise AssertionError(name)


def _unit(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0.0 <= number <= 1.0 else None


_STARTS: Final[dict[str, Callable[[_Reader, _Frame], None]]] = {
    "p": _Reader._boundary,
    "s": _Reader._boundary,
    "break": _Reader._break,
    "prosody": _Reader._prosody,
    "voice": _Reader._voice,
    "phoneme": _Reader._capture,
    "sub": _Reader._capture,
    "say-as": _Reader._capture,
    "audio": _Reader._audio,
    f"{{{OWN_NS}}}emotion": _Reader._emotion,
}


# -- say-as: what the engines' text normalizers cannot be told, spelled out here -----------------


def _characters(content: str, _format: str, _lang: str) -> str:
    return " ".join(char for char in content if not char.isspace())


def _digits(content: str, _format: str, _lang: str) -> str:
    return " ".join(char for char in content if char.isdigit())


def _cardinal(content: str, _format: str, _lang: str) -> str:
    """The number without its grouping (``1,234`` -> ``1234``): the normalizers read numbers."""
    return re.sub(r"(?<=\d)[,_ ](?=\d{3})", "", content.strip())


def _telephone(content: str, _format: str, _lang: str) -> str:
    """Digit by digit, its groups apart: ``010-1234`` -> ``0 1 0, 1 2 3 4``."""
    groups = [group for group in re.split(r"[\s\-.()/]+", content.strip()) if group]
    return ", ".join(" ".join(group) for group in groups)


_MONTHS: Final = (
    "January February March April May June July August September October November December".split()
)


def _date(content: str, format_: str, lang: str) -> str:
    """A date in the reading of ``lang``; ``format`` (``ymd``, ``mdy``, ``dmy``, ``ym``, ``md``,
    ``y`` ...) orders its numbers (default ``ymd``). Anything else is read as written."""
    numbers = re.findall(r"\d+", content)
    order = format_ or "ymd"
    if not numbers or len(numbers) != len(order) or set(order) - set("ymd") or len(set(order)) != len(order):
        return content
    parts = dict(zip(order, (int(number) for number in numbers), strict=True))
    year, month, day = parts.get("y"), parts.get("m"), parts.get("d")
    if (month is not None and not 1 <= month <= 12) or (day is not None and not 1 <= day <= 31):
        return content
    if lang in ("zh", "ja"):
        return "".join(
            f"{value}{unit}"
            for value, unit in ((year, "年"), (month, "月"), (day, "日"))
            if value is not None
        )
    words = []
    if month is not None:
        words.append(_MONTHS[month - 1])
    if day is not None:
        words.append(f"{day}," if year is not None else str(day))
    if year is not None:
        words.append(str(year))
    return " ".join(words)


_SAY_AS: Final[dict[str, Callable[[str, str, str], str]]] = {
    "characters": _characters,
    "spell-out": _characters,
    "digits": _digits,
    "cardinal": _cardinal,
    "number": _cardinal,
    "date": _date,
    "telephone": _telephone,
}


_TAG = re.compile(r"<(/?)[^<>]*?(/?)>")


def complete(markup: str) -> bool:
    """Whether ``markup`` (text arriving in pieces) closes every element it opens and cuts no tag:
    a voice agent's sentences are held until they do, so an element may span sentences."""
    depth = 0
    for tag in _TAG.finditer(markup):
        text = tag.group(0)
        if text.startswith(("<?", "<!")) or tag.group(2):
            continue
        depth += -1 if tag.group(1) else 1
    return depth <= 0 and "<" not in _TAG.sub("", markup)


def voices(plan: Plan) -> list[str]:
    """The library voices ``plan`` names (spans' and emotions'), each once, in order."""
    names: dict[str, None] = {}
    for step in plan:
        if isinstance(step, Speech):
            if step.voice is not None:
                names[step.voice] = None
            if step.emotion is not None and step.emotion.voice is not None:
                names[step.emotion.voice] = None
    return list(names)


def bind(plan: Plan, files: dict[str, str]) -> Plan:
    """``plan`` with each voice name replaced by its file (``files``: every name of `voices`)."""
    bound: list[Speech | Pause] = []
    for step in plan:
        if isinstance(step, Speech):
            emotion = step.emotion
            if emotion is not None and emotion.voice is not None:
                emotion = Emotion(
                    mode=emotion.mode,
                    voice=files[emotion.voice],
                    vector=emotion.vector,
                    text=emotion.text,
                    alpha=emotion.alpha,
                )
            step = Speech(
                pieces=step.pieces,
                voice=None if step.voice is None else files[step.voice],
                rate=step.rate,
                emotion=emotion,
            )
        bound.append(step)
    return tuple(bound)


def plain(plan: Plan) -> str | None:
    """The text of a plan that is only plain text (one span in the request's own settings): SSML
    around plain text is that text, to the sample. None for any other plan."""
    if len(plan) == 1 and isinstance(plan[0], Speech) and plan[0].plain:
        return "".join(piece for piece in plan[0].pieces if isinstance(piece, str))
    return None
