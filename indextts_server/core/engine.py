"""The engine port: what the inference task asks of a speech engine, and nothing about how."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Final, Literal, NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from .plan import Plan

EmoMode = Literal["none", "audio", "vector", "text"]
EMO_MODES: Final[tuple[EmoMode, ...]] = ("none", "audio", "vector", "text")

SAMPLE_RATE = 22050
"""Every engine renders mono 16-bit PCM at this rate (the contract's WAV format)."""

PCM = npt.NDArray[np.int16]

SAMPLE_RATES: Final = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
"""The output rates a request may ask for (extension ``sample_rate``): telephony's to browsers',
each one that MP3, AAC and FLAC all encode."""


def pause_samples(interval_silence: int) -> int:
    """The samples of an ``interval_silence`` pause (ms) at ``SAMPLE_RATE``, counted as the model does."""
    return interval_silence * SAMPLE_RATE // 1000


# The bounds a request's values may take (the project's; the contract gives only the defaults,
# which are `SynthesisJob`'s). The model reads at most 600 text tokens per segment.
MAX_TOKENS_MIN: Final = 20
MAX_TOKENS_MAX: Final = 600
INTERVAL_SILENCE_MAX: Final = 5000
SEED_MAX: Final = 2**32 - 1
SPEED_MIN: Final = 0.25
SPEED_MAX: Final = 4.0

Lang = Literal["zh", "en", "ja", "es", "ar"]
LANGS: Final[tuple[Lang, ...]] = ("zh", "en", "ja", "es", "ar")
"""The languages a request may name (``lang``); each engine speaks some of them."""


class SynthesisJob(msgspec.Struct, frozen=True, kw_only=True):
    """One validated request, with its audio paths already resolved to absolute files.

    The defaults here are the contract's, and the only place they are written: a request field
    left out (or ``null``) takes the value below (see `core.contract.jobs`).
    """

    text: str
    prompt_audio: str
    emo_mode: EmoMode = "none"
    emo_audio: str | None = None
    emo_alpha: float = 1.0
    emo_vector: tuple[float, ...] | None = None
    emo_text: str | None = None
    interval_silence: int = 200
    max_tokens: int = 120
    use_random: bool = False
    seed: int | None = None
    quick_first: int = 0
    lang: Lang | None = None
    """None: the engine picks the language from the text (`detect_lang`)."""
    speed: float = 1.0
    """Speaking rate: 1.25 is a quarter faster (the audio lasts 1/1.25 as long)."""
    plan: Plan | None = None
    """SSML's spans and breaks (`core.plan`; ``text`` is then the markup): the task runs them as
    one, through `core.plan.expand`. None: ``text`` is plain text."""


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What an engine can do, declared from what it loaded.

    A request outside it is refused before it is queued, naming its field
    (`core.contract.jobs.unfit`). The defaults are everything a request may ask for.
    """

    model: str
    """The model's name as errors show it (``IndexTTS-2``)."""
    langs: tuple[Lang, ...] = LANGS
    """The languages it speaks (``lang``)."""
    missing_tokenizers: tuple[Lang, ...] = ()
    """Of ``langs``, those whose tokenizer is not installed: refused until it is."""
    detects_lang: bool = False
    """Whether a request without ``lang`` gets the language `detect_lang` picks from its text; that
    language is then checked as a named one. False: the model reads the text as it comes."""
    emo_modes: tuple[EmoMode, ...] = EMO_MODES
    """The emotion modes it takes (``emo_mode``); ``text`` only with ``emotion_model``."""
    emotion_model: bool = True
    """Whether its emotion model (``qwen0.6bemo4-merge/``, emotion from text) is loaded."""
    speed: tuple[float, float] = (SPEED_MIN, SPEED_MAX)
    """The speeds it renders, its own duration control and the time-stretch together."""


def common_capabilities(declared: Sequence[Capabilities]) -> Capabilities | None:
    """What every one of several engines can do (any of them may run a task); None for none.

    The model's name is theirs when they agree, else the names joined with ``/``.
    """
    if not declared:
        return None
    first = declared[0]
    models = sorted({caps.model for caps in declared})
    low = max(caps.speed[0] for caps in declared)
    high = min(caps.speed[1] for caps in declared)
    return Capabilities(
        model=first.model if len(models) == 1 else "/".join(models),
        langs=tuple(lang for lang in first.langs if all(lang in caps.langs for caps in declared)),
        missing_tokenizers=tuple(
            lang for lang in LANGS if any(lang in caps.missing_tokenizers for caps in declared)
        ),
        detects_lang=any(caps.detects_lang for caps in declared),
        emo_modes=tuple(mode for mode in first.emo_modes if all(mode in caps.emo_modes for caps in declared)),
        emotion_model=all(caps.emotion_model for caps in declared),
        speed=(low, max(low, high)),
    )


class Segment(NamedTuple):
    """One text segment's audio, whether it is the utterance's last, and the text it was made from.

    ``text`` is the segment's text as the engine read it (after its own splitting and, where the
    model normalizes, as normalized); empty where an engine cannot say.
    """

    pcm: PCM
    last: bool
    text: str = ""


class Engine(Protocol):
    """A speech engine. Its methods are blocking and are only ever called from one thread at a time.

    ``synthesize`` returns an iterator that yields one `Segment` per text segment: a 1-D int16
    array at ``SAMPLE_RATE``. Every segment but the last ends with the job's ``interval_silence``,
    so the concatenation of all segments is the whole utterance. ``last`` marks the final one, so
    the caller need not ask again to learn that the work is done. The caller advances the iterator
    one segment per worker-thread call and may ``close()`` it between segments to stop the work.
    """

    name: str
    capabilities: Capabilities
    """What it can do, as loaded (set by the time it is built)."""

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]: ...

    def warm_up(self) -> None: ...


_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_ARABIC = re.compile(r"[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPANISH = re.compile(r"[ñÑáéíóúÁÉÍÓÚüÜ¿¡]")
_SPANISH_WORDS = re.compile(
    r"\b(el|la|los|las|que|de|del|y|es|en|por|para|con|una?|hola|gracias|señor|está|muy)\b", re.I
)
_ENGLISH_WORDS = re.compile(r"\b(the|and|is|are|of|to|you|it|this|that|with|for|hello|what)\b", re.I)


def lang_of(code: str) -> Lang | None:
    """A language tag (``en``, ``zh-CN``, ``en_US``) as the ``lang`` it names; ``None``: none we have."""
    base = code.split("-")[0].split("_")[0].lower()
    return next((lang for lang in LANGS if lang == base), None)


def detect_lang(text: str) -> Lang:
    """The language of ``text`` when a request names none, by its script.

    Kana anywhere: ``ja``. Else any Han character: ``zh`` (so Chinese mixed with English stays
    ``zh``, which reads the English words too). Else Arabic script: ``ar``. Else Latin text is
    ``es`` when it has Spanish letters or marks (ñ, á, ¿, ¡ ...) or more Spanish than English
    function words, otherwise ``en``.
    """
    if _KANA.search(text):
        return "ja"
    if _HAN.search(text):
        return "zh"
    if _ARABIC.search(text):
        return "ar"
    if _SPANISH.search(text):
        return "es"
    if len(_SPANISH_WORDS.findall(text)) > len(_ENGLISH_WORDS.findall(text)):
        return "es"
    return "en"


def split_speed(speed: float, native: tuple[float, float] | None) -> tuple[float, float]:
    """``speed`` as (the part the model renders itself, the part left to a time-stretch).

    The model takes what lies within its ``native`` range (None: none of it); the stretch makes
    up the rest, so the product is always ``speed``.
    """
    if native is None:
        return 1.0, speed
    low, high = native
    model = min(high, max(low, speed))
    return model, speed / model
