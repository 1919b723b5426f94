"""The engine port: what the inference task asks of a speech engine, and nothing about how."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Literal, NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

EmoMode = Literal["none", "audio", "vector", "text"]

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

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]: ...

    def warm_up(self) -> None: ...
