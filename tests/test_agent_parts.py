"""The voice-agent protocol's pure parts: G.711, word timings, Cartesia's messages (no socket)."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from indextts_server.core import texts
from indextts_server.core.agents.audio import alaw, encode, mulaw
from indextts_server.core.agents.cartesia import EMOTIONS, Invalid, decode, emotion_vector, settings
from indextts_server.core.agents.words import (
    estimate,
    exact_tone,
    place,
    split_words,
    syllables,
    take_words,
    voiced_span,
)
from indextts_server.core.engine import SAMPLE_RATE, SynthesisJob
from indextts_server.core.segment import tokens
from indextts_server.io.engines.tone import ToneEngine

from .conftest import PROMPT

SAMPLES = np.array([0, -1, 1, 1000, -1000, 32767, -32768, 8159 * 4, -124], dtype=np.int16)


def test_mulaw_of_known_samples() -> None:
    assert mulaw(SAMPLES).hex() == "ff7effce4e8000806f"


def test_alaw_of_known_samples() -> None:
    assert alaw(SAMPLES).hex() == "d555d5fa7aaa2aaa52"


def test_g711_matches_cpythons_audioop_for_every_sample() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    every = np.arange(-32768, 32768, dtype=np.int16)
    assert mulaw(every) == audioop.lin2ulaw(every.tobytes(), 2)
    assert alaw(every) == audioop.lin2alaw(every.tobytes(), 2)


def test_f32le_is_the_sample_over_32768() -> None:
    assert np.frombuffer(encode(SAMPLES[:4], "pcm_f32le"), "<f4").tolist() == [
        0.0,
        -1 / 32768,
        1 / 32768,
        1000 / 32768,
    ]


def test_words_keep_their_punctuation_and_cjk_words_are_characters() -> None:
    assert split_words("Hello, world! 大家好。OK") == ["Hello,", "world!", "大", "家", "好。", "OK"]


def test_punctuation_alone_is_no_word() -> None:
    assert split_words("— yes … no ") == ["yes …", "no"]


def test_syllables_count_vowel_groups_and_characters() -> None:
    assert [syllables(w) for w in ("beautiful", "rhythm", "大", "2024", "I")] == [3, 1, 1, 4, 1]


def test_words_are_placed_by_weight_end_to_end() -> None:
    placed = place(["a", "bb", "c"], [1, 2, 1], 1.0, 2.0)
    assert [(w.start, w.end) for w in placed] == [(1.0, 1.25), (1.25, 1.75), (1.75, 2.0)]


def test_tone_words_share_the_span_by_tokens() -> None:
    placed = exact_tone(split_words("It costs 3.14 now."), 0.0, 1.0)
    assert [(w.text, w.start, w.end) for w in placed] == [
        ("It", 0.0, 0.2),
        ("costs", 0.2, 0.4),
        ("3.14", 0.4, 0.8),
        ("now.", 0.8, 1.0),
    ]


def test_the_voiced_span_leaves_out_silence_at_both_ends() -> None:
    rate = 1000
    pcm = np.zeros(1000, dtype=np.int16)
    pcm[200:700] = 8000
    pcm[100] = 50  # far below the loudest: silence
    assert voiced_span(pcm, rate) == (200, 700)


@given(
    st.text(max_size=80), st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=4000)
)
def test_estimated_words_are_in_order_and_inside_the_segment(text: str, lead: int, sound: int) -> None:
    pcm = np.concatenate([np.zeros(lead, np.int16), np.full(sound, 5000, np.int16), np.zeros(300, np.int16)])
    placed = estimate(split_words(text), pcm, 16000)
    seconds = len(pcm) / 16000
    assert all(0 <= w.start <= w.end <= seconds + 0.0005 for w in placed)
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(placed))


def test_a_segment_gets_the_clients_words_however_the_model_normalized_them() -> None:
    words = ["Hello", "there.", "It", "costs", "3.14."]
    assert take_words(words, "HELLO THERE.") == (["Hello", "there."], ["It", "costs", "3.14."])
    assert take_words(["3.14."], "THREE POINT ONE FOUR.") == (["3.14."], [])
    assert take_words(words, "") == (words, [])


def test_an_emotion_fits_its_dimension() -> None:
    assert emotion_vector("scared") == tuple(0.6 if e == "afraid" else 0.0 for e in EMOTIONS)
    assert emotion_vector("positivity:low") == tuple(0.4 if e == "happy" else 0.0 for e in EMOTIONS)
    assert emotion_vector("neutral") is None
    assert emotion_vector("sarcastic") is None


def test_unknown_fields_and_cartesia_version_are_ignored() -> None:
    message = decode(
        b'{"context_id": "x", "cartesia_version": "2025", "model_id": "sonic", "new_thing": [1]}'
    )
    assert message.context_id == "x"


def test_a_context_id_of_a_bad_message_is_kept_for_its_error() -> None:
    with pytest.raises(Invalid) as refused:
        decode(b'{"context_id": "x", "continue": "yes"}')
    assert (str(refused.value), refused.value.context_id) == (texts.AGENT_FIELD_ERRORS["continue"], "x")


def test_a_voice_in_embedding_mode_is_refused() -> None:
    with pytest.raises(Invalid, match="voice"):
        settings(decode(b'{"context_id": "x", "voice": {"mode": "embedding", "embedding": [0.1]}}'))


def test_a_regional_language_code_is_its_language() -> None:
    assert settings(decode(b'{"context_id": "x", "language": "en-US"}')).tuning.lang == "en"


def test_a_named_speed_is_a_rate() -> None:
    message = decode(b'{"context_id": "x", "generation_config": {"speed": "fast"}}')
    assert settings(message).tuning.speed == 1.2


# --- word timings measured on tone audio, where the truth is known ---------------------------------

MEASURED = [
    "Hello there.",
    "How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "Extraordinary circumstances require unconventional solutions.",
    "I am fine, thanks for asking.",
    "Pi is roughly 3.14159, give or take.",
    "大家好，我现在正在体验 AI 科技！",
    "今天天气很好，我们去公园散步吧。",
    "这是一个关于语音合成的测试句子。",
    "我用 OpenAI 的 API 写了一个 agent。",
    "No, absolutely not!",
    "こんにちは、元気ですか？",
]


def _boundary_errors(text: str) -> list[float]:
    """How far (seconds) each estimated word boundary lies from the tone engine's note boundary."""
    (segment,) = ToneEngine().synthesize(SynthesisJob(text=text, prompt_audio=PROMPT))
    truth = _tone_notes(segment.text, len(segment.pcm))
    guess = estimate(split_words(segment.text), segment.pcm, SAMPLE_RATE)
    assert [w.text for w in guess] == [w for w, _, _ in truth]
    return [abs(g.start - t[1]) for g, t in zip(guess, truth, strict=True)] + [
        abs(g.end - t[2]) for g, t in zip(guess, truth, strict=True)
    ]


def _tone_notes(text: str, samples: int) -> list[tuple[str, float, float]]:
    """Each word's notes as the tone engine renders them: one per token, all of one length."""
    notes = tokens(text)
    per = samples // len(notes)
    assert per * len(notes) == samples  # the notes fill the segment: no pause, no remainder
    out, at = [], 0
    for word in split_words(text):
        count = len(tokens(word))
        out.append((word, at * per / SAMPLE_RATE, (at + count) * per / SAMPLE_RATE))
        at += count
    return out


@pytest.mark.parametrize("text", MEASURED)
def test_tone_timings_are_the_notes_the_engine_played(text: str) -> None:
    (segment,) = ToneEngine().synthesize(SynthesisJob(text=text, prompt_audio=PROMPT))
    end = len(segment.pcm) / SAMPLE_RATE
    truth = _tone_notes(segment.text, len(segment.pcm))
    exact = exact_tone(split_words(segment.text), 0.0, end)
    assert max(abs(a.start - b[1]) + abs(a.end - b[2]) for a, b in zip(exact, truth, strict=True)) <= 0.001


def test_the_estimate_on_tone_audio_is_within_its_documented_error() -> None:
    """The figures docs/voice-agents.md gives (tone gives every token the same time, so long
    Latin words are where a syllable count errs most; CJK characters are one syllable each)."""
    latin = np.array([e for text in MEASURED[:6] + MEASURED[10:11] for e in _boundary_errors(text)])
    cjk = np.array([e for text in MEASURED[6:9] + MEASURED[11:] for e in _boundary_errors(text)])
    assert np.median(latin) <= 0.1 and np.percentile(latin, 95) <= 0.25
    assert cjk.max() <= 0.015
