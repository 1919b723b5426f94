"""Engine output as the bytes clients receive: WAV, raw PCM, FLAC, MP3, and for HTTP also Opus and AAC."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Iterator
from fractions import Fraction
from typing import Final, Literal

import av
import numpy as np
import soundfile

from ...core.contract.protocol import AudioFormat
from ...core.engine import PCM, SAMPLE_RATE

_WAV_HEADER: Final = struct.Struct("<4sI4s4sIHHIIHH4sI")


def wav_bytes(pcm: PCM, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A complete mono 16-bit PCM WAV file holding ``pcm`` (the samples are copied once)."""
    samples = np.ascontiguousarray(pcm, dtype="<i2")
    size = samples.nbytes
    header = _WAV_HEADER.pack(
        b"RIFF", 36 + size, b"WAVE", b"fmt ", 16,
        1, 1, sample_rate, sample_rate * 2, 2, 16,  # PCM, mono, byte rate, block align, bits
        b"data", size,
    )  # fmt: skip
    return b"".join((header, samples.data.cast("B")))


def encode_audio(pcm: PCM, audio_format: AudioFormat, sample_rate: int = SAMPLE_RATE) -> bytes:
    """``pcm`` (at ``sample_rate``) as one complete file (or raw little-endian samples for ``pcm``).

    WAV and PCM are cheap; FLAC and MP3 go through libsndfile, so call those from a thread.
    """
    if audio_format == "wav":
        return wav_bytes(pcm, sample_rate)
    if audio_format == "pcm":
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    buffer = io.BytesIO()
    subtype = "PCM_16" if audio_format == "flac" else "MPEG_LAYER_III"
    soundfile.write(buffer, pcm, sample_rate, format=audio_format.upper(), subtype=subtype)
    return buffer.getvalue()


class Resampler:
    """Engine samples to ``rate``, fed segment by segment: FFmpeg's swresample through PyAV.

    One resampler per utterance, so a streamed one is resampled as one piece: its pieces
    concatenated equal the whole audio resampled at once.
    """

    def __init__(self, rate: int):
        self.rate = rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        self._pts = 0

    def feed(self, pcm: PCM) -> PCM:
        out: list[av.AudioFrame] = []
        for frame in _frames(pcm, self._pts):
            out.extend(self._resampler.resample(frame))
        self._pts += len(pcm)
        return _samples(out)

    def finish(self) -> PCM:
        return _samples(self._resampler.resample(None))


def _samples(frames: list[av.AudioFrame]) -> PCM:
    out = [frame.to_ndarray().reshape(-1).astype(np.int16, copy=False) for frame in frames]
    return np.concatenate(out) if out else np.zeros(0, np.int16)


class SegmentFiles:
    """A task's audio as the WebSocket sends it: complete files (one, or one per segment) at ``rate``.

    ``file`` takes the engine's samples of one delivery; ``last`` says no more follow, so the
    resampler's tail goes into it. Resampling is CPU work; `cheap` says when there is none.
    """

    def __init__(self, audio_format: AudioFormat, rate: int = SAMPLE_RATE):
        self.format = audio_format
        self.rate = rate
        self._resampler = Resampler(rate) if rate != SAMPLE_RATE else None

    @property
    def cheap(self) -> bool:
        return self._resampler is None and self.format in ("wav", "pcm")

    def file(self, chunks: list[PCM], *, last: bool) -> bytes:
        whole = chunks[0] if len(chunks) == 1 else np.concatenate(chunks or [np.zeros(0, np.int16)])
        if self._resampler is not None:
            whole = self._resampler.feed(whole)
            if last:
                whole = np.concatenate([whole, self._resampler.finish()])
        return encode_audio(whole, self.format, self.rate)


# --- The HTTP API's formats: every OpenAI response_format, whole or streamed, at any speed ---------

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

_CONTAINERS: Final[dict[str, tuple[str, str, dict[str, str]]]] = {
    # format: (muxer, encoder, muxer options). Short Ogg pages let each segment's audio leave when
    # it is encoded.
    "mp3": ("mp3", "libmp3lame", {}),
    "opus": ("ogg", "libopus", {"page_duration": "20000"}),
    "aac": ("adts", "aac", {}),
    "flac": ("flac", "flac", {}),
}
OPUS_RATES: Final = (8000, 12000, 16000, 24000, 48000)
"""The only rates Opus encodes: any other is encoded at the next one up (22050 Hz as 24 kHz)."""
_TIME_BASE: Final = Fraction(1, SAMPLE_RATE)
OPEN_ENDED: Final = 0xFFFFFFFF
"""The RIFF and data sizes of a streamed WAV header: the length is not known when it is sent."""


def encoded_rate(response_format: ResponseFormat, rate: int) -> int:
    """The rate ``response_format`` is encoded at when ``rate`` is asked for (Opus: its own family)."""
    if response_format == "opus":
        return next((opus for opus in OPUS_RATES if opus >= rate), OPUS_RATES[-1])
    return rate


def media_type(response_format: ResponseFormat, rate: int = SAMPLE_RATE) -> str:
    """The Content-Type; raw ``pcm`` names its rate (``audio/pcm;rate=24000``, as Open WebUI reads it)."""
    return {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg; codecs=opus",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": f"audio/pcm;rate={rate}",
    }[response_format]


def open_ended_wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A WAV header for a stream of unknown length (sizes at their maximum, as ffmpeg writes pipes)."""
    return _WAV_HEADER.pack(
        b"RIFF", OPEN_ENDED, b"WAVE", b"fmt ", 16,
        1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", OPEN_ENDED,
    )  # fmt: skip


FRAME_SAMPLES: Final = 4096
"""Samples per frame handed to FFmpeg: its buffers grow with the frame, so a long segment goes in
as many short frames (one 30 s frame costs the resampler tens of MB)."""


def _frames(pcm: PCM, pts: int) -> Iterator[av.AudioFrame]:
    for offset in range(0, len(pcm), FRAME_SAMPLES):
        yield _frame(pcm[offset : offset + FRAME_SAMPLES], pts + offset)


def _frame(pcm: PCM, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = _TIME_BASE
    return frame


class Tempo:
    """Speed change with the pitch kept: FFmpeg's ``atempo`` filter (WSOLA) through PyAV.

    One filter graph per utterance, fed segment by segment, so a streamed response is stretched
    as one piece, without seams. ``atempo`` takes factors of 0.5 to 100 per stage; slower speeds
    chain stages of 0.5.
    """

    def __init__(self, speed: float):
        graph = av.filter.Graph()
        nodes = [
            graph.add_abuffer(format="s16", sample_rate=SAMPLE_RATE, layout="mono", time_base=_TIME_BASE)
        ]
        factor = speed
        while factor < 0.5:
            nodes.append(graph.add("atempo", "0.5"))
            factor /= 0.5
        nodes.append(graph.add("atempo", f"{factor:.6f}"))
        nodes.append(graph.add("aformat", "sample_fmts=s16:channel_layouts=mono"))
        nodes.append(graph.add("abuffersink"))
        for upstream, downstream in itertools.pairwise(nodes):
            upstream.link_to(downstream)
        graph.configure()
        self._graph = graph
        self._pts = 0

    def feed(self, pcm: PCM) -> PCM:
        out: list[PCM] = []
        for frame in _frames(pcm, self._pts):
            self._graph.push(frame)
            out.append(self._pull())
        self._pts += len(pcm)
        return np.concatenate(out) if out else np.zeros(0, np.int16)

    def finish(self) -> PCM:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> PCM:
        frames: list[av.AudioFrame] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            assert isinstance(frame, av.AudioFrame)
            frames.append(frame)
        return _samples(frames)


class _Sink:
    """Where a muxer writes: collects the bytes until they are taken; not seekable (a stream)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | memoryview) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class _Muxed:
    """One PyAV encoder and muxer; ``streaming`` writes to a pipe-like sink instead of a file."""

    def __init__(self, response_format: str, rate: int, *, streaming: bool):
        muxer, codec, options = _CONTAINERS[response_format]
        self._sink: _Sink | io.BytesIO = _Sink() if streaming else io.BytesIO()
        self._container = av.open(self._sink, mode="w", format=muxer, options=options)
        stream = self._container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        self._resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        self._pts = 0

    def feed(self, pcm: PCM) -> bytes:
        for frame in _frames(pcm, self._pts):
            self._encode(frame)
        self._pts += len(pcm)
        return self._take()

    def finish(self) -> bytes:
        self._encode(None)
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        if isinstance(self._sink, io.BytesIO):
            return self._sink.getvalue()
        return self._sink.take()

    def _encode(self, frame: av.AudioFrame | None) -> None:
        for resampled in self._resampler.resample(frame):
            for packet in self._stream.encode(resampled):
                self._container.mux(packet)

    def _take(self) -> bytes:
        return self._sink.take() if isinstance(self._sink, _Sink) else b""


class Transcoder:
    """Engine segments in, one response's bytes out: speed applied, resampled, encoded as asked.

    ``streaming`` output can be sent as it comes (WAV with a canonical 44-byte open-ended header,
    formats whose headers need the length written without it); otherwise ``finish`` returns the
    whole file and ``feed`` returns nothing. ``rate`` is the output's (see `encoded_rate` for
    Opus). Encoding is CPU work: call it from a thread, except plain PCM/WAV at the engine's rate
    and speed 1, which is a copy (``cheap``).
    """

    def __init__(
        self,
        response_format: ResponseFormat,
        *,
        speed: float = 1.0,
        streaming: bool = False,
        rate: int = SAMPLE_RATE,
    ):
        self.format = response_format
        self.streaming = streaming
        self.rate = encoded_rate(response_format, rate)
        self._tempo = Tempo(speed) if speed != 1.0 else None
        plain = response_format in ("wav", "pcm")
        self._resampler = Resampler(self.rate) if plain and self.rate != SAMPLE_RATE else None
        self._muxed = None if plain else _Muxed(response_format, self.rate, streaming=streaming)
        self._kept: list[PCM] = []
        self._header_sent = False

    @property
    def cheap(self) -> bool:
        return self._muxed is None and self._tempo is None and self._resampler is None

    def feed(self, pcm: PCM) -> bytes:
        if self._tempo is not None:
            pcm = self._tempo.feed(pcm)
        return self._out(pcm)

    def finish(self) -> bytes:
        tail = self._out(self._tempo.finish()) if self._tempo is not None else b""
        if self._resampler is not None:
            tail += self._plain(self._resampler.finish())
        if self._muxed is not None:
            return tail + self._muxed.finish()
        if self.streaming:
            return tail + self._header()
        whole = np.concatenate(self._kept) if self._kept else np.zeros(0, np.int16)
        return encode_audio(whole, "wav" if self.format == "wav" else "pcm", self.rate)

    def _out(self, pcm: PCM) -> bytes:
        if self._muxed is not None:
            return self._muxed.feed(pcm)
        if self._resampler is not None:
            pcm = self._resampler.feed(pcm)
        return self._plain(pcm)

    def _plain(self, pcm: PCM) -> bytes:
        if not self.streaming:
            self._kept.append(pcm)
            return b""
        return self._header() + np.ascontiguousarray(pcm, dtype="<i2").tobytes()

    def _header(self) -> bytes:
        if self.format != "wav" or self._header_sent:
            return b""
        self._header_sent = True
        return open_ended_wav_header(self.rate)
