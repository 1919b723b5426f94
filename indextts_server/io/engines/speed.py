"""Speed by time-stretch: what an engine does with the part of a job's ``speed`` its model cannot render."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ...core.engine import Segment
from ..audio.encoding import Tempo


def stretched(segments: Iterator[Segment], factor: float) -> Iterator[Segment]:
    """``segments`` played ``factor`` times as fast, pitch kept (``factor`` 1: as they are).

    One filter graph runs over the whole utterance, so there are no seams between segments;
    the filter's tail goes out with the last segment. Closing the result closes ``segments``.
    """
    if factor == 1.0:
        return segments
    return _stretch(segments, factor)


def _stretch(segments: Iterator[Segment], factor: float) -> Iterator[Segment]:
    tempo = Tempo(factor)
    try:
        for segment in segments:
            pcm = tempo.feed(segment.pcm)
            if segment.last:
                pcm = np.concatenate([pcm, tempo.finish()])
            yield segment._replace(pcm=pcm)
    finally:
        close_segments(segments)


def close_segments(segments: Iterator[Segment]) -> None:
    """Stop an engine's iterator if it can be stopped (generators and the engines' own can)."""
    close = getattr(segments, "close", None)
    if close is not None:
        close()
