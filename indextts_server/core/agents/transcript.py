"""A context's text as an agent writes it: pieces joined, sentences committed as soon as complete.

Theory of operation. Text arrives in pieces (``continue: true``): a language model's tokens, or
whole sentences from a framework that splits them itself. `Transcript` joins the pieces, putting
back the space a framework leaves out between two sentences ("Hello." + "How are you?"), never
between Chinese or Japanese characters, and never inside a word a model split ("Hel" + "lo").

It commits text (hands it over to be spoken) at the first boundary it is sure of:

- a sentence end: ``。！？；…!?;`` or a line break at once; a ``.`` when it ends a sentence, which
  needs the text after it unless the word before it shows it (``3.`` may become ``3.14``, ``Mr.``
  and ``U.`` abbreviate, ``Hello.`` ends);
- in the context's first sentence only, a clause end (``，、：,:``) once the clause holds
  `FIRST_CLAUSE_TOKENS` tokens, so a long first sentence starts speaking sooner;
- text with no boundary waits at most ``max_buffer_delay`` seconds after its first piece came
  (`expire`, with the caller's clock), then goes up to its last whole word; a delay of 0 commits
  every piece as it comes (frameworks that split sentences themselves send 0);
- `flush` (``continue: false``) commits whatever is left.

Committed text holds at least one token (`core.segment.tokens`); punctuation alone is dropped.
Nothing here reads a clock: times are passed in.
"""

from __future__ import annotations

import re
from typing import Final

from ..segment import token_count, tokens

FIRST_CLAUSE_TOKENS: Final = 6
"""A first sentence is cut at a clause end that many tokens in, or later."""
DEFAULT_DELAY: Final = 3.0
"""Seconds text with no boundary waits for more when the client names no ``max_buffer_delay_ms``."""

_CJK: Final = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u3000-\u303f\uff00-\uffef"
_WIDE = re.compile(f"[{_CJK}]")
_WORD_CHAR = re.compile(r"[^\W_]", re.UNICODE)
_SPACE_AFTER = frozenset(".!?;:,)]}\u201d")
"""Latin punctuation a following word is written apart from."""
_HARD_END = re.compile(r"[。！？；…!?;\n]+[\"'\u201d\u2019)\]」』]*")
_CLAUSE_END = re.compile(r"[，、：]|[,:](?=\s)")
_DOT = re.compile(r"\.(?=\s|$)")
_LAST_WORD = re.compile(r"([^\W_]+)\.$")
ABBREVIATIONS: Final = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "no", "fig", "inc", "ltd", "co", "mt"}
)


def join(left: str, right: str) -> str:
    """``right`` appended to ``left``, with the space between them a framework left out."""
    if not left or not right or left[-1].isspace() or right[0].isspace():
        return left + right
    before, after = left[-1], right[0]
    if _WIDE.match(before) or _WIDE.match(after):
        return left + right
    if before in _SPACE_AFTER and _WORD_CHAR.match(after):
        if before in ".," and after.isdigit() and len(left) > 1 and left[-2].isdigit():
            return left + right  # 3. + 14, 1, + 000: one number
        return f"{left} {right}"
    return left + right


def _dot_ends_sentence(text: str, dot: int) -> bool | None:
    """Whether the ``.`` at ``dot`` ends a sentence: True, False, or None (the text after it decides)."""
    at_end = text[dot + 1 :].strip() == ""
    word = _LAST_WORD.search(text[: dot + 1])
    if word is None:
        return True  # after punctuation or a CJK character
    name = word.group(1)
    if name.lower() in ABBREVIATIONS or (len(name) == 1 and name.isalpha()):
        return False if not at_end else None
    if name.isdigit():
        return None if at_end else True  # 3. may continue as 3.14; "in 2023. Then" ends
    return True


class Transcript:
    """One context's uncommitted text. ``feed``, ``expire`` and ``flush`` return what is committed."""

    def __init__(self, max_buffer_delay: float | None = None):
        self.delay = DEFAULT_DELAY if max_buffer_delay is None else max(0.0, max_buffer_delay)
        self.pending = ""
        self.committed = 0  # commits so far: only the first sentence is cut at a clause
        self._last = ""  # the last character committed, for the space rule
        self._since: float | None = None  # when the oldest uncommitted text arrived

    def feed(self, piece: str, now: float) -> list[str]:
        """Add ``piece`` (arrived at ``now``); the sentences it completes."""
        before = self.pending or self._last
        self.pending += join(before, piece)[len(before) :]
        if self._since is None and self.pending.strip():
            self._since = now
        if self.delay == 0:
            return self.flush()
        out = self._commit_complete()
        if out and self._since is not None:
            self._since = now  # what is left came with this piece
        return out + self.expire(now)

    @property
    def due(self) -> float | None:
        """When the uncommitted text must go if nothing completes it (``None``: nothing waits)."""
        return None if self._since is None else self._since + self.delay

    def expire(self, now: float) -> list[str]:
        """The uncommitted text up to its last whole word, once it has waited ``max_buffer_delay``."""
        due = self.due
        if due is None or now < due:
            return []
        cut = len(self.pending)
        if _WORD_CHAR.match(self.pending[-1:]) and not _WIDE.match(self.pending[-1:]):
            cut = max(self.pending.rfind(" "), self.pending.rfind("\n")) + 1  # a word may still grow
        out = self._take(cut)
        if self.pending.strip():
            self._since = now  # what is left (part of a word) waits another delay
        return out

    def flush(self) -> list[str]:
        """Everything uncommitted (``continue: false``), split at the boundaries it holds."""
        out = self._commit_complete(final=True)
        return out + self._take(len(self.pending))

    def _commit_complete(self, *, final: bool = False) -> list[str]:
        out: list[str] = []
        while (cut := self._boundary(final)) is not None:
            out += self._take(cut)
        return out

    def _boundary(self, final: bool) -> int | None:
        """Where the first complete sentence (or first clause) of ``pending`` ends, if it is sure."""
        text = self.pending
        ends: list[int] = []
        hard = _HARD_END.search(text)
        if hard is not None:
            ends.append(hard.end())
        for dot in _DOT.finditer(text):
            sure = _dot_ends_sentence(text, dot.start())
            if sure or (sure is None and final):
                ends.append(dot.end())
                break
            if sure is None:
                break
        if self.committed == 0:
            for clause in _CLAUSE_END.finditer(text):
                if token_count(text[: clause.end()]) >= FIRST_CLAUSE_TOKENS:
                    ends.append(clause.end())
                    break
        return min(ends, default=None)

    def _take(self, cut: int) -> list[str]:
        """Commit ``pending[:cut]`` if it holds a token (punctuation alone is dropped); keep the rest."""
        if cut <= 0:
            return []
        head, self.pending = self.pending[:cut], self.pending[cut:]
        self._last = head[-1]
        if not self.pending.strip():
            self._since = None
        text = head.strip()
        if not tokens(text):
            return []
        self.committed += 1
        return [text]
