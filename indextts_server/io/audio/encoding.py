"""Engine output as the bytes clients receive: WAV, raw PCM, FLAC, MP3, and for HTTP also Opus and AAC."""

from __future__ import annotations

import io
import itertools
import struct
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


def encode_audio(pcm: PCM, audio_format: AudioFormat) -> bytes:
    """``pcm`` as one complete file (or raw little-endian samples for ``pcm``).

    WAV and PCM are cheap; FLAC and MP3 go through libsndfile, so call those from a thread.
    """
    if audio_format == "wav":
        return wav_bytes(pcm)
    if audio_format == "pcm":
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    buffer = io.BytesIO()
    subtype = "PCM_16" if audio_format == "flac" else "MPEG_LAYER_III"
    soundfile.write(buffer, pcm, SAMPLE_RATE, format=audio_format.upper(), subtype=subtype)
    return buffer.getvalue()


# --- The HTTP API's formats: every OpenAI response_format, whole or streamed, at any speed ---------

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

_CONTAINERS: Final[dict[str, tuple[str, str, int, dict[str, str]]]] = {
    # format: (muxer, encoder, sample rate, muxer options). Opus has no 22050 Hz mode: 24 kHz is
    # the nearest it has. Short Ogg pages let each segment's audio leave when it is encoded.
    "mp3": ("mp3", "libmp3lame", SAMPLE_RATE, {}),
    "opus": ("ogg", "libopus", 24000, {"page_duration": "20000"}),
    "aac": ("adts", "aac", SAMPLE_RATE, {}),
    "flac": ("flac", "flac", SAMPLE_RATE, {}),
}
_TIME_BASE: Final = Fraction(1, SAMPLE_RATE)
OPEN_ENDED: Final = 0xFFFFFFFF
"""The RIFF and data sizes of a streamed WAV header: the length is not known when it is sent."""


def media_type(response_format: ResponseFormat) -> str:
    return {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg; codecs=opus",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/L16; rate=22050; channels=1",
    }[response_format]


def open_ended_wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A WAV header for a stream of unknown length (sizes at their maximum, as ffmpeg writes pipes)."""
    return _WAV_HEADER.pack(
        b"RIFF", OPEN_ENDED, b"WAVE", b"fmt ", 16,
        1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", OPEN_ENDED,
    )  # fmt: skip


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
        self._graph.push(_frame(pcm, self._pts))
        self._pts += len(pcm)
        return self._pull()

    def finish(self) -> PCM:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> PCM:
        out: list[PCM] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                break
            assert isinstance(frame, av.AudioFrame)
            out.append(frame.to_ndarray().reshape(-1).astype(np.int16, copy=False))
        return np.concatenate(out) if out else np.zeros(0, np.int16)


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

    def __init__(self, response_format: str, *, streaming: bool):
        muxer, codec, rate, options = _CONTAINERS[response_format]
        self._sink: _Sink | io.BytesIO = _Sink() if streaming else io.BytesIO()
        self._container = av.open(self._sink, mode="w", format=muxer, options=options)
        stream = self._container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        self._resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        self._pts = 0

    def feed(self, pcm: PCM) -> bytes:
        if len(pcm):
            self._encode(_frame(pcm, self._pts))
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
    """Engine segments in, one response's bytes out: speed applied, then encoded as asked.

    ``streaming`` output can be sent as it comes (WAV with an open-ended header, formats whose
    headers need the length written without it); otherwise ``finish`` returns the whole file and
    ``feed`` returns nothing. Encoding is CPU work: call it from a thread, except plain PCM/WAV at
    speed 1, which is a copy (``cheap``).
    """

    def __init__(self, response_format: ResponseFormat, *, speed: float = 1.0, streaming: bool = False):
        self.format = response_format
        self.streaming = streaming
        self._tempo = Tempo(speed) if speed != 1.0 else None
        self._muxed = (
            None if response_format in ("wav", "pcm") else _Muxed(response_format, streaming=streaming)
        )
        self._kept: list[PCM] = []
        self._header_sent = False

    @property
    def cheap(self) -> bool:
        return self._muxed is None and self._tempo is None

    def feed(self, pcm: PCM) -> bytes:
        if self._tempo is not None:
            pcm = self._tempo.feed(pcm)
        return self._out(pcm)

    def finish(self) -> bytes:
        tail = self._out(self._tempo.finish()) if self._tempo is not None else b""
        if self._muxed is not None:
            return tail + self._muxed.finish()
        if self.streaming:
            return tail + self._header()
        whole = np.concatenate(self._kept) if self._kept else np.zeros(0, np.int16)
        return wav_bytes(whole) if self.format == "wav" else encode_audio(whole, "pcm")

    def _out(self, pcm: PCM) -> bytes:
        if self._muxed is not None:
            return self._muxed.feed(pcm)
        if not self.streaming:
            self._kept.append(pcm)
            return b""
        return self._header() + np.ascontiguousarray(pcm, dtype="<i2").tobytes()

    def _header(self) -> bytes:
        if self.format != "wav" or self._header_sent:
            return b""
        self._header_sent = True
        return open_ended_wav_header()
