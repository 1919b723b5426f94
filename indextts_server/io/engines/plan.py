"""A job with an SSML plan, run as one task: its spans' segments chained, its breaks exact silences."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ...core.engine import Engine, Segment, SynthesisJob, pause_samples
from ...core.plan import Word, expand, shown, words
from .speed import close_segments

Outcome = Segment | BaseException | None
Advance = Callable[[Sequence[Iterator[Segment]]], list[Outcome]]


def synthesize(engine: Engine, job: SynthesisJob) -> Iterator[Segment]:
    """``engine.synthesize(job)``, or for a job with a plan, its spans as one utterance.

    The result keeps the `Engine` port's contract (one `Segment` per text segment, ``last`` on
    the final one, ``close()`` between segments), so whoever runs a task, batches, streams or
    places cues needs to know nothing about plans.
    """
    if job.plan is None:
        return engine.synthesize(job)
    return Chained(engine, expand(job, engine.capabilities.model), words(job.plan))


class Chained(Iterator[Segment]):
    """The spans' segments in order, each span from ``engine.synthesize`` when it is reached.

    A span's segments come as the engine makes them (their pauses included); its last one takes
    the silence that follows it (a break's length, else the job's ``interval_silence``) and is
    ``last`` only at the plan's end. Silence before the first span opens the first segment.
    Exact sample counts at ``SAMPLE_RATE``. A cue's text is what the engine read, pronunciation
    markup shown as its word.
    """

    def __init__(self, engine: Engine, items: list[SynthesisJob | int], spoken: list[tuple[Word, ...]]):
        self._engine = engine
        self._items: deque[SynthesisJob | int] = deque(items)
        self._words: deque[tuple[Word, ...]] = deque(spoken)  # each span's, as its cue shows them
        self._span_words: tuple[Word, ...] = ()
        self._current: Iterator[Segment] | None = None
        self._lead = 0  # samples of silence that open the next segment
        self._done = False

    def __next__(self) -> Segment:
        while not self._done:
            if self._current is None:
                item = self._items.popleft() if self._items else None
                if item is None:  # a last span that said nothing
                    self._done = True
                    return Segment(np.zeros(self._lead, dtype=np.int16), True)
                if isinstance(item, int):
                    self._lead += pause_samples(item)
                    continue
                self._span_words = self._words.popleft() if self._words else ()
                self._current = self._engine.synthesize(item)
            segment = next(self._current, None)
            if segment is None:
                self._current = None
                continue
            return self._place(segment)
        raise StopIteration

    def _place(self, segment: Segment) -> Segment:
        parts = [segment.pcm]
        if self._lead:
            parts.insert(0, np.zeros(self._lead, dtype=np.int16))
            self._lead = 0
        last = False
        if segment.last:
            self._current = None
            after = 0
            while self._items and isinstance(head := self._items[0], int):
                after += pause_samples(head)
                self._items.popleft()
            last = not self._items
            self._done = last
            if after:
                parts.append(np.zeros(after, dtype=np.int16))
        pcm = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return Segment(pcm, last, shown(segment.text, self._span_words) if self._span_words else segment.text)

    # --- batched: the span being spoken is the row the engine advances ----------------------------

    def span(self) -> Iterator[Segment] | None:
        """The engine's iterator for the span to advance next (started if need be; a break before
        it is taken); None when no span is left (then ``next()`` gives the end)."""
        while self._current is None and not self._done and self._items:
            item = self._items.popleft()
            if isinstance(item, int):
                self._lead += pause_samples(item)
            else:
                self._span_words = self._words.popleft() if self._words else ()
                self._current = self._engine.synthesize(item)
        return self._current

    @property
    def speaking(self) -> bool:
        """A span is being spoken (`span` gave the engine's iterator, not this plan's end)."""
        return self._current is not None

    def take(self, outcome: Outcome) -> Outcome:
        """What one batched step of `span` gives this plan: the segment placed, its error (the plan
        stops), or, where the span ended with no segment, the plan's next segment."""
        if isinstance(outcome, Segment):
            return self._place(outcome)
        if isinstance(outcome, BaseException):
            self.close()
            return outcome
        self._current = None
        try:
            return next(self)
        except StopIteration:
            return None
        except Exception as exc:
            return exc

    def close(self) -> None:
        """Stop the span being spoken (idempotent); the rest are never started."""
        self._done = True
        self._items.clear()
        current, self._current = self._current, None
        if current is not None:
            close_segments(current)


def batched(advance: Advance) -> Advance:
    """An engine's ``advance`` for rows that may be plans: each plan is advanced as the span it is
    speaking, so a span shares the engine's batched step with plain rows as a request would."""

    def run(rows: Sequence[Iterator[Segment]]) -> list[Outcome]:
        spans: list[Iterator[Segment]] = []
        failed: dict[int, BaseException] = {}  # a span that could not start: that row's error
        for index, row in enumerate(rows):
            span: Iterator[Segment] | None = row
            if isinstance(row, Chained):
                try:
                    span = row.span()
                except Exception as exc:
                    row.close()
                    failed[index] = exc
                    continue
            spans.append(row if span is None else span)
        outcomes = iter(advance(spans))
        results: list[Outcome] = []
        for index, row in enumerate(rows):
            if index in failed:
                results.append(failed[index])
                continue
            outcome = next(outcomes)
            results.append(row.take(outcome) if isinstance(row, Chained) and row.speaking else outcome)
        return results

    return run
