"""A speech plan: what SSML asks for, as spans the engines already know how to speak, and silences.

`core.ssml` parses markup into a plan; the plan travels with its `SynthesisJob` (``plan``), and
`expand` turns job and plan into the engine's jobs, one per span of speech, with the exact
silences between them. Pure data and pure functions (it crosses cluster mode's Redis as msgspec).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

import msgspec

if TYPE_CHECKING:
    from .engine import SynthesisJob

Alphabet = Literal["pinyin", "cmu", "kana"]
ALPHABETS: Final[tuple[Alphabet, ...]] = ("pinyin", "cmu", "kana")

BREAK_MAX_MS: Final = 10_000
"""The longest one ``<break>`` may ask for."""


class Word(msgspec.Struct, frozen=True, kw_only=True, tag="word"):
    """A word with its pronunciation (``<phoneme>``): spoken as ``ph`` where the model can."""

    text: str
    alphabet: Alphabet
    ph: str


Piece = str | Word


class Emotion(msgspec.Struct, frozen=True, kw_only=True):
    """A span's emotion (the project's ``<itts:emotion>``), one of the four ``emo_mode``s.

    ``voice`` (``audio`` mode) is a library voice's name in a parsed plan and its file in a job's.
    ``alpha`` None keeps the request's ``emo_alpha``.
    """

    mode: Literal["none", "audio", "vector", "text"]
    voice: str | None = None
    vector: tuple[float, ...] | None = None
    text: str | None = None
    alpha: float | None = None


class Speech(msgspec.Struct, frozen=True, kw_only=True, tag="speech"):
    """A span of text spoken in one voice, at one rate, with one emotion: one engine job.

    ``voice`` is a library voice's name in a parsed plan and its file in a job's; None keeps the
    request's speaker. ``rate`` multiplies the request's ``speed``. ``emotion`` None keeps the
    request's.
    """

    pieces: tuple[Piece, ...]
    voice: str | None = None
    rate: float = 1.0
    emotion: Emotion | None = None

    @property
    def plain(self) -> bool:
        """Only text, in the request's own voice, rate and emotion."""
        return (
            self.voice is None
            and self.rate == 1.0
            and self.emotion is None
            and all(isinstance(piece, str) for piece in self.pieces)
        )


class Pause(msgspec.Struct, frozen=True, kw_only=True, tag="pause"):
    """Silence of exactly ``ms`` milliseconds (``<break>``), in place of the pause between spans."""

    ms: int


Step = Speech | Pause
Plan = tuple[Step, ...]


def text_of(pieces: tuple[Piece, ...]) -> str:
    """The pieces as written (a `Word` as its text)."""
    return "".join(piece if isinstance(piece, str) else piece.text for piece in pieces)


Pronunciation = Literal["markup", "pinyin", "none"]

PRONUNCIATION: Final[dict[str, Pronunciation]] = {"IndexTTS-2.5": "markup", "IndexTTS-2": "pinyin"}
"""How each model takes a `Word`: IndexTTS-2.5's inline markup (``<行|XING2>``, every alphabet),
IndexTTS-2's tone-numbered pinyin in place of the characters (pinyin only). Any other model, and
any other alphabet, speaks the word as written."""


def render(pieces: tuple[Piece, ...], model: str) -> str:
    """The text the engine of ``model`` reads for ``pieces``."""
    style = PRONUNCIATION.get(model, "none")
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, str):
            out.append(piece)
        elif style == "markup":
            ph = piece.ph.upper() if piece.alphabet == "pinyin" else piece.ph
            out.append(f"<{piece.text}|{ph}>")
        elif style == "pinyin" and piece.alphabet == "pinyin":
            out.append("".join(piece.ph.split()).upper())
        else:
            out.append(piece.text)
    return "".join(out)


_MARKUP = re.compile(r"<([^<>|]*)\|[^<>]*>")
_SPECIAL = re.compile(r"<\|SPECIAL_TOKEN_\d+\|>")


def shown(text: str, words: tuple[Word, ...]) -> str:
    """A segment's text as a cue shows it: each pronounced word as written, not as the model read
    it (IndexTTS-2.5's markup ``<行|XING2>``, its normalized ``<|SPECIAL_TOKEN_2|>XING2<|...|>``,
    IndexTTS-2's ``XING2``)."""
    text = _SPECIAL.sub("", _MARKUP.sub(r"\1", text))
    for word in words:
        forms = (word.ph, word.ph.upper(), "".join(word.ph.split()).upper())
        form = next((form for form in forms if form and form in text), None)
        if form is not None:
            text = text.replace(form, word.text, 1)
    return text


def words(plan: Plan) -> list[tuple[Word, ...]]:
    """Each span's pronounced words, span by span (as `expand` gives the spans' jobs)."""
    return [
        tuple(piece for piece in step.pieces if isinstance(piece, Word))
        for step in plan
        if isinstance(step, Speech)
    ]


def expand(job: SynthesisJob, model: str) -> list[SynthesisJob | int]:
    """``job``'s plan as the engine's jobs (one per `Speech`, its text rendered for ``model``) and
    the silences between them in milliseconds, in order.

    Two spans with no `Pause` between them are apart by the job's ``interval_silence``, as the
    engine's own segments are; a `Pause` (or several, summed) replaces it. A job without a plan is
    itself.
    """
    if job.plan is None:
        return [job]
    items: list[SynthesisJob | int] = []
    for step in job.plan:
        if isinstance(step, Pause):
            if items and isinstance(items[-1], int):
                items[-1] += step.ms
            else:
                items.append(step.ms)
            continue
        if items and not isinstance(items[-1], int):
            items.append(job.interval_silence)
        items.append(span_job(job, step, model))
    return items


def span_job(job: SynthesisJob, speech: Speech, model: str) -> SynthesisJob:
    """The engine's job for one span of ``job``'s plan: the request's settings, the span's own."""
    from .engine import SPEED_MAX, SPEED_MIN  # the port imports this module for its types

    changes: dict[str, object] = {
        "text": render(speech.pieces, model),
        "plan": None,
        "speed": min(SPEED_MAX, max(SPEED_MIN, job.speed * speech.rate)),
    }
    if speech.voice is not None:
        changes["prompt_audio"] = speech.voice
    emotion = speech.emotion
    if emotion is not None:
        changes.update(
            emo_mode=emotion.mode,
            emo_audio=emotion.voice if emotion.mode == "audio" else None,
            emo_vector=emotion.vector if emotion.mode == "vector" else None,
            emo_text=emotion.text if emotion.mode == "text" else None,
        )
        if emotion.alpha is not None:
            changes["emo_alpha"] = emotion.alpha
    return msgspec.structs.replace(job, **changes)


class Silences(NamedTuple):
    """The silences of a job's audio, in milliseconds, that belong to no cue.

    ``between``: the longest between two segments; ``opening`` before the first; ``closing``
    after the last.
    """

    between: int
    opening: int
    closing: int


def silences(job: SynthesisJob) -> Silences:
    """Where the audio of ``job`` is silent by request: its pauses (stretched where the engine
    renders a speed below 1 as a time-stretch, which lengthens them) and its breaks."""
    if job.plan is None:
        return Silences(math.ceil(job.interval_silence / min(1.0, job.speed)), 0, 0)
    speeds = [job.speed * step.rate for step in job.plan if isinstance(step, Speech)] or [job.speed]
    between = max(math.ceil(job.interval_silence / min(1.0, speed)) for speed in speeds)
    pauses = [step.ms for step in job.plan if isinstance(step, Pause)]
    between = max([between, *pauses])
    opening = closing = 0
    for step in job.plan:
        if not isinstance(step, Pause):
            break
        opening += step.ms
    for step in reversed(job.plan):
        if not isinstance(step, Pause):
            break
        closing += step.ms
    return Silences(between, opening, closing)
