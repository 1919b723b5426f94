"""The ``tts_stream`` request the client sends, built from its options (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Format = Literal["wav", "pcm", "flac", "mp3"]
FORMATS: Final[tuple[Format, ...]] = ("wav", "pcm", "flac", "mp3")
EMOTIONS: Final = ("happy", "angry", "sad", "afraid", "disgusted", "melancholic", "surprised", "calm")
"""The eight emotions of ``emo_vector``, in the contract's order (高兴 愤怒 悲伤 恐惧 反感 低落 惊讶 自然)."""


DEFAULT_VOICE: Final = "default"
"""The library's bundled voice, spoken with when neither ``--voice`` nor ``--prompt`` is given."""


class UsageError(ValueError):
    """Options that cannot make a request; the message names the option."""


@dataclass(frozen=True, kw_only=True)
class SayOptions:
    """What ``indextts-client say`` was asked for."""

    text: str
    voice: str | None = None
    prompt: str | None = None
    emo_voice: str | None = None
    emo_audio: str | None = None
    emo_vector: tuple[float, ...] | None = None
    emo_text: str | None = None
    emo_alpha: float | None = None
    interval_silence: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    use_random: bool = False
    quick_first: int | None = None
    lang: str | None = None
    speed: float | None = None
    format: Format = "wav"
    stream: bool = False
    sample_rate: int | None = None
    subtitles: str | None = None
    """A path ending in ``.srt`` or ``.vtt``: ask for the cues and write them there."""


SubtitleKind = Literal["srt", "vtt"]


def subtitle_kind(path: str) -> SubtitleKind:
    """``--subtitles``: SRT or WebVTT, by the path's suffix."""
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix == "srt":
        return "srt"
    if suffix == "vtt":
        return "vtt"
    raise UsageError(f"--subtitles: {path} must end in .srt or .vtt")


def wire_format(options: SayOptions) -> tuple[Format, bool]:
    """What to ask the server for: the format and whether to stream it.

    WAV and PCM are always fetched as streamed raw PCM (so progress can count segments); the
    client writes the WAV header itself, and the samples equal the server's non-streamed WAV.
    MP3 frames concatenate, so streamed MP3 comes as it is. FLAC files do not concatenate:
    FLAC is asked for whole, and ``--stream`` is refused for it.
    """
    if options.format in ("wav", "pcm"):
        return "pcm", True
    if options.format == "flac":
        if options.stream:
            raise UsageError(
                "--stream cannot write flac (FLAC files do not concatenate); use wav, pcm or mp3"
            )
        return "flac", False
    return "mp3", options.stream


def parse_vector(value: str) -> tuple[float, ...]:
    """``--emo-vector``: eight comma-separated numbers, or ``name=value`` pairs (others 0)."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if parts and all("=" in part for part in parts):
        vector = dict.fromkeys(EMOTIONS, 0.0)
        for part in parts:
            name, _, number = part.partition("=")
            if name.strip() not in vector:
                raise UsageError(
                    f"--emo-vector: unknown emotion {name.strip()!r} (one of {', '.join(EMOTIONS)})"
                )
            vector[name.strip()] = _number(number)
        return tuple(vector.values())
    numbers = tuple(_number(part) for part in parts)
    if len(numbers) != 8:
        raise UsageError("--emo-vector takes 8 comma-separated numbers, or pairs such as happy=0.8,calm=0.2")
    return numbers


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--emo-vector: not a number: {text.strip()!r}") from None


def build_request(options: SayOptions) -> dict[str, object]:
    """The JSON request for ``options``; every field beyond the contract's is opt-in."""
    if not options.text.strip():
        raise UsageError("no text to speak (give TEXT, --text-file, or text on stdin)")
    if options.voice is not None and options.prompt is not None:
        raise UsageError(
            "give --voice NAME (a library voice) or --prompt PATH (audio on the server), not both"
        )
    emotions = [
        name
        for name, value in (
            ("--emo-voice", options.emo_voice),
            ("--emo-audio", options.emo_audio),
            ("--emo-vector", options.emo_vector),
            ("--emo-text", options.emo_text),
        )
        if value is not None
    ]
    if len(emotions) > 1:
        raise UsageError(f"choose one emotion control, not {' and '.join(emotions)}")
    audio_format, stream = wire_format(options)
    request: dict[str, object] = {"type": "tts_stream", "text": options.text}
    if options.prompt is not None:
        request["prompt_audio"] = options.prompt
    else:
        request["voice"] = options.voice or DEFAULT_VOICE
    if options.emo_voice is not None or options.emo_audio is not None:
        request["emo_mode"] = "audio"
        if options.emo_voice is not None:
            request["emo_voice"] = options.emo_voice
        else:
            request["emo_audio"] = options.emo_audio
    elif options.emo_vector is not None:
        request["emo_mode"] = "vector"
        request["emo_vector"] = list(options.emo_vector)
    elif options.emo_text is not None:
        request["emo_mode"] = "text"
        request["emo_text"] = options.emo_text
    else:
        request["emo_mode"] = "none"
    optional: dict[str, object | None] = {
        "emo_alpha": options.emo_alpha,
        "interval_silence": options.interval_silence,
        "max_tokens": options.max_tokens,
        "seed": options.seed,
        "quick_first": options.quick_first,
        "lang": options.lang,
        "speed": options.speed,
        "sample_rate": options.sample_rate,
    }
    request.update({name: value for name, value in optional.items() if value is not None})
    if options.use_random:
        request["use_random"] = True
    if options.subtitles is not None:
        subtitle_kind(options.subtitles)
        request["timestamps"] = True
    request.update(stream=stream, format=audio_format, details=True)
    return request
