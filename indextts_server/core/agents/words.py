"""Word timings: where each word of a segment falls in its audio, exact on tone, estimated elsewhere.

A "word" is what a listener hears as one: a run of Latin letters or digits between spaces (with
the punctuation written against it), and for Chinese and Japanese (and Korean) one character,
each with the punctuation that follows it. Punctuation on its own is never a word.

Two ways to place them, both within the segment's span and in order:

- ``tone``: the tone engine plays one note of equal length per token (`core.segment.tokens`)
  over the segment's whole span, so each word's share is its token count: exact.
- any other engine: the span is the segment's voiced audio (from the first to the last 10 ms
  frame whose level is within `VOICED_DB` of the segment's loudest), and each word gets a share
  proportional to its syllables (vowel groups for Latin words, one per character for CJK, one
  per digit). The method and its measured error are in docs/voice-agents.md.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import numpy as np

from ..engine import PCM
from ..segment import tokens

VOICED_DB: Final = 30.0
"""A frame quieter than the segment's loudest by more than this is silence."""
FRAME_SECONDS: Final = 0.01

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WIDE_MARKS = "\u3000-\u303f\uff00-\uffef"
_UNIT = re.compile(f"[{_CJK}]|[{_WIDE_MARKS}]|[^\\s{_CJK}{_WIDE_MARKS}]+")
_HAS_TOKEN = re.compile(f"[{_CJK}]|[A-Za-z0-9\\u00c0-\\u024f\\u0400-\\u04ff\\u0600-\\u06ff]")
_VOWELS = re.compile(r"[aeiouyàáâãäåèéêëìíîïòóôõöùúûüýÿ]+", re.I)
_DIGIT = re.compile(r"\d")


class Word(NamedTuple):
    text: str
    start: float
    end: float


def split_words(text: str) -> list[str]:
    """``text``'s words in order, punctuation attached to the word before it (as written)."""
    spans: list[list[int]] = []
    for unit in _UNIT.finditer(text):
        if _HAS_TOKEN.search(unit.group()) or not spans:
            spans.append([unit.start(), unit.end()])
        else:
            spans[-1][1] = unit.end()  # punctuation alone belongs to the word before it
    words = [text[a:b] for a, b in spans]
    return [word for word in words if _HAS_TOKEN.search(word)]


def syllables(word: str) -> int:
    """About how many syllables ``word`` takes to say (at least one)."""
    cjk = len(re.findall(f"[{_CJK}]", word))
    latin = len(_VOWELS.findall(word)) + len(_DIGIT.findall(word))
    return max(1, cjk + latin)


def tone_share(word: str) -> int:
    """The tone engine's notes in ``word``: one per token."""
    return max(1, len(tokens(word)))


def place(words: list[str], weights: list[int], start: float, end: float) -> list[Word]:
    """``words`` laid end to end over ``[start, end]`` (seconds), each by its weight."""
    total = sum(weights)
    if not words or total <= 0:
        return []
    placed: list[Word] = []
    at = 0
    for word, weight in zip(words, weights, strict=True):
        begin = start + (end - start) * at / total
        at += weight
        placed.append(Word(word, round(begin, 3), round(start + (end - start) * at / total, 3)))
    return placed


def voiced_span(pcm: PCM, rate: int) -> tuple[int, int]:
    """The samples from the first to the last voiced frame (``(0, 0)`` for silence)."""
    frame = max(1, int(rate * FRAME_SECONDS))
    count = len(pcm) // frame
    if count == 0:
        return (0, len(pcm)) if np.any(pcm) else (0, 0)
    frames = pcm[: count * frame].astype(np.float64).reshape(count, frame)
    level = np.sqrt(np.mean(frames * frames, axis=1))
    loudest = float(level.max())
    if loudest == 0.0:
        return 0, 0
    voiced = np.flatnonzero(level >= loudest * 10 ** (-VOICED_DB / 20))
    return int(voiced[0]) * frame, min(len(pcm), (int(voiced[-1]) + 1) * frame)


def estimate(words: list[str], pcm: PCM, rate: int) -> list[Word]:
    """``words`` in ``pcm``'s voiced span, by their syllables (seconds from ``pcm``'s start)."""
    first, last = voiced_span(pcm, rate)
    return place(words, [syllables(word) for word in words], first / rate, last / rate)


def exact_tone(words: list[str], start: float, end: float) -> list[Word]:
    """``words`` as the tone engine played them over ``[start, end]``."""
    return place(words, [tone_share(word) for word in words], start, end)


def take_words(words: list[str], spoken: str) -> tuple[list[str], list[str]]:
    """The client's ``words`` a segment spoke, and the rest.

    A model may normalize what it reads (``Hello`` as ``HELLO``, a number spelled out), so the
    words sent back are the client's own: as many as the engine's text of the segment (``spoken``)
    holds, in order (all of them when the engine cannot say).
    """
    count = len(split_words(spoken)) if spoken else len(words)
    return words[:count], words[count:]
