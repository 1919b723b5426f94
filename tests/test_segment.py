"""Segmentation and speaking-time estimates of the tone engine."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from indextts_server.core.segment import speech_seconds, split_segments, token_count, tokens


def test_tokens_are_cjk_characters_and_latin_words() -> None:
    assert token_count("大家好，AI 科技 rocks!") == 7


def test_sentences_merge_up_to_max_tokens() -> None:
    assert split_segments("一二三。四五六。七八九。", 6) == ["一二三。四五六。", "七八九。"]


def test_long_sentence_splits_at_commas_then_hard() -> None:
    text = "一二三四五，六七八九十一二三四五六七八九十。"
    segments = split_segments(text, 5)
    assert all(token_count(s) <= 5 for s in segments)
    assert segments[0] == "一二三四五，"


def test_latin_words_keep_their_spaces() -> None:
    assert split_segments("Hello there. General Kenobi.", 20) == ["Hello there. General Kenobi."]


def test_speaking_time_follows_the_documented_rates() -> None:
    assert speech_seconds("一二三四") == 1.0
    assert speech_seconds("abcdefghijklmn") == 1.0


@given(st.text(max_size=300), st.integers(min_value=1, max_value=50))
def test_segmentation_keeps_every_token_in_order(text: str, max_tokens: int) -> None:
    segments = split_segments(text, max_tokens)
    assert all(0 < token_count(s) <= max_tokens for s in segments)
    assert [t for s in segments for t in tokens(s)] == tokens(text)


def test_quick_first_keeps_the_first_sentences_apart_as_the_model_does() -> None:
    text = "第一句话在这。" * 6  # six sentences of 6 tokens
    assert [token_count(s) for s in split_segments(text, 20)] == [18, 18]
    # Until 24 tokens are read, sentences merge only within half of max_tokens (10): not at all.
    assert [token_count(s) for s in split_segments(text, 20, quick_first=24)] == [6, 6, 6, 18]
    assert [token_count(s) for s in split_segments(text, 40, quick_first=24)] == [18, 18]
