"""The sample encodings voice agents ask for: 16-bit and float PCM, and G.711 mu-law and A-law."""

from __future__ import annotations

from typing import Final, Literal

import numpy as np

from ..engine import PCM

Encoding = Literal["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]
ENCODINGS: Final[tuple[Encoding, ...]] = ("pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw")

_MU_BIAS: Final = 33
_MU_CLIP: Final = 8159
_MU_SEGMENT_ENDS: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_A_SEGMENT_ENDS: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def mulaw(pcm: PCM) -> bytes:
    """G.711 mu-law: each 16-bit sample (its top 14 bits, as G.711 reads them) as one byte."""
    x = pcm.astype(np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), _MU_CLIP) + _MU_BIAS
    segment = np.searchsorted(_MU_SEGMENT_ENDS, magnitude).astype(np.int32)
    value = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return ((value ^ mask) & 0xFF).astype(np.uint8).tobytes()


def alaw(pcm: PCM) -> bytes:
    """G.711 A-law: each 16-bit sample (its top 13 bits) as one byte, even bits inverted."""
    x = pcm.astype(np.int32) >> 3
    mask = np.where(x >= 0, 0xD5, 0x55)
    magnitude = np.where(x >= 0, x, -x - 1)
    segment = np.searchsorted(_A_SEGMENT_ENDS, magnitude).astype(np.int32)
    shift = np.where(segment < 2, 1, segment)
    value = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return ((value ^ mask) & 0xFF).astype(np.uint8).tobytes()


def encode(pcm: PCM, encoding: Encoding) -> bytes:
    """``pcm`` (16-bit samples) as raw little-endian bytes of ``encoding``."""
    if encoding == "pcm_s16le":
        return np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    if encoding == "pcm_f32le":
        return (pcm.astype("<f4") / np.float32(32768.0)).tobytes()
    if encoding == "pcm_mulaw":
        return mulaw(pcm)
    return alaw(pcm)


def bytes_per_sample(encoding: Encoding) -> int:
    return {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}[encoding]
