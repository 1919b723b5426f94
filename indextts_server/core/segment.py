"""Text segmentation and speaking-time estimates for the weight-free tone engine.

A token is one CJK character or one Latin word (letters and digits); punctuation is free.
Text splits at sentence punctuation, sentences merge greedily up to ``max_tokens``, and a
sentence that is still too long splits at commas and then at token boundaries.
"""

from __future__ import annotations

import itertools
import re
from typing import Final

CJK_PER_SECOND: Final = 4.0
LATIN_LETTERS_PER_SECOND: Final = 14.0
MIN_SEGMENT_SECONDS: Final = 0.25

_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[A-Za-z0-9']+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_SENTENCE_END = re.compile(r"(?<=[。！？!?；;…\n])|(?<=\.)(?=\s|$)")
_CLAUSE_END = re.compile(r"(?<=[，,、：:])")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def token_count(text: str) -> int:
    return len(_TOKEN.findall(text))


def speech_seconds(text: str) -> float:
    """About how long a person takes to say ``text``."""
    cjk = len(_CJK.findall(text))
    latin = sum(len(word) for word in tokens(text) if not _CJK.fullmatch(word))
    return max(MIN_SEGMENT_SECONDS, cjk / CJK_PER_SECOND + latin / LATIN_LETTERS_PER_SECOND)


def split_segments(text: str, max_tokens: int, quick_first: int = 0) -> list[str]:
    """Split ``text`` into segments of at most ``max_tokens`` tokens, each non-empty.

    As the model's tokenizer does with ``quick_streaming_tokens``: until ``quick_first`` tokens
    have been read, a sentence joins the segment before it only if both together stay within
    half of ``max_tokens``, so the first segments (the first audio) come sooner.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be positive")
    pieces: list[str] = []
    for sentence in _split(_SENTENCE_END, text):
        if token_count(sentence) <= max_tokens:
            pieces.append(sentence)
            continue
        for clause in _split(_CLAUSE_END, sentence):
            pieces.extend(_hard_cut(clause, max_tokens))
    return _merge(pieces, max_tokens, quick_first)


def _split(pattern: re.Pattern[str], text: str) -> list[str]:
    return [part.strip() for part in pattern.split(text) if token_count(part) > 0]


def _hard_cut(text: str, max_tokens: int) -> list[str]:
    if token_count(text) <= max_tokens:
        return [text]
    matches = list(_TOKEN.finditer(text))
    cuts = [matches[i].start() for i in range(max_tokens, len(matches), max_tokens)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b].strip() for a, b in itertools.pairwise(bounds)]


def _merge(pieces: list[str], max_tokens: int, quick_first: int) -> list[str]:
    segments: list[str] = []
    current = ""
    count = read = 0
    for piece in pieces:
        n = token_count(piece)
        read += n
        limit = max_tokens if read > quick_first else max_tokens // 2
        if current and count + n > limit:
            segments.append(current)
            current, count = "", 0
        current = f"{current} {piece}" if current and _latin_join(current, piece) else current + piece
        count += n
    if current:
        segments.append(current)
    return segments


def _latin_join(left: str, right: str) -> bool:
    return not (_CJK.search(left[-1:]) or _CJK.search(right[:1]))
