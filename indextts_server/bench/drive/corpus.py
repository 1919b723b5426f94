"""What the load generator sends: the corpus, the request frames, and the replies' audio sizes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np

from ...core.contract.decode import RequestError, decode_request
from ...core.contract.jobs import audio_fields, job_from
from ...core.contract.protocol import TtsStream
from ...core.engine import SynthesisJob
from ...io.audio.encoding import wav_bytes
from ...io.engines.tone import ToneEngine

PROMPT: Final = "asset/zero_shot_prompt.wav"

BUILTIN_CORPUS: Final = (
    # Each line is about 3 s of speech: 12 CJK characters, or about 42 Latin letters.
    "今天天气很好，我们一起散步。",
    "请在下一个路口向右转弯吧。",
    "这家餐厅的招牌菜非常好吃！",
    "会议改到明天下午三点开始。",
    "我刚刚收到了你寄来的包裹。",
    "周末我们打算去海边看日出。",
    "这本书的故事让我感动很久。",
    "火车马上就要到达终点站了。",
    "The weather is lovely today, so we walk to the park.",
    "Please turn right at the next corner, then go straight.",
    "The meeting has moved to three this afternoon instead.",
    "Thank you for the parcel that arrived this morning.",
)

Json = dict[str, object]


def load_corpus(path: Path | None) -> tuple[str, ...]:
    """One text per non-blank line of ``path``, or the built-in corpus."""
    if path is None:
        return BUILTIN_CORPUS
    texts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if not texts:
        raise ValueError(f"{path}: no texts in the corpus")
    return texts


def parse_field(spec: str) -> tuple[str, object]:
    """``key=json`` as given to ``--field``; a value that is not JSON is taken as a string."""
    key, sep, raw = spec.partition("=")
    if not sep or not key:
        raise ValueError(f"--field wants key=json, got {spec!r}")
    try:
        value: object = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def request_frames(texts: Iterable[str], fields: Mapping[str, object]) -> list[str]:
    """The contract's example request for each text, with ``fields`` laid over it, as JSON frames."""
    return [json.dumps(contract_request(text, **fields), ensure_ascii=False) for text in texts]


def contract_request(text: object, **fields: object) -> Json:
    """The contract's own example ``tts_stream`` request for ``text``, with ``fields`` laid over it."""
    request: Json = {
        "type": "tts_stream",
        "text": text,
        "prompt_audio": PROMPT,
        "emo_mode": "none",
        "interval_silence": 200,
        "max_tokens": 120,
        "use_random": False,
    }
    request.update(fields)
    return request


def reply_sizes(frames: Sequence[str]) -> dict[str, int]:
    """The size of the WAV the tone engine makes for each distinct frame (not streamed).

    Frames the tone engine cannot render (not a ``tts_stream`` a server would accept) are left
    out; the floor answers them with an error.
    """
    engine = ToneEngine()
    sizes: dict[str, int] = {}
    for frame in dict.fromkeys(frames):
        job = _job(frame)
        if job is None:
            continue
        chunks = [segment.pcm for segment in engine.synthesize(job)]
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        sizes[frame] = len(wav_bytes(pcm))
    return sizes


def _job(frame: str) -> SynthesisJob | None:
    """The job a server would run for ``frame`` (its paths unchecked), or ``None`` if it refuses it."""
    try:
        request = decode_request(frame, max_text_chars=1 << 30)
    except RequestError:
        return None
    if not isinstance(request, TtsStream):
        return None
    return job_from(request, audio_fields(request))
