"""A context's text as an agent writes it: pieces joined and committed sentence by sentence (no socket)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from indextts_server.core.agents.transcript import FIRST_CLAUSE_TOKENS, Transcript, join
from indextts_server.core.segment import tokens


def feed_all(pieces: list[str], delay: float | None = None) -> list[str]:
    transcript = Transcript(delay)
    out: list[str] = []
    for piece in pieces:
        out += transcript.feed(piece, 0.0)
    return out + transcript.flush()


def test_a_space_goes_between_sentences_a_framework_sends_without_one() -> None:
    assert join("Hello.", "How are you?") == "Hello. How are you?"


def test_no_space_goes_between_chinese_pieces() -> None:
    assert join("你好。", "今天怎么样？") == "你好。今天怎么样？"


def test_no_space_goes_between_latin_and_chinese_pieces() -> None:
    assert join("我在用", "AI") == "我在用AI"


def test_a_word_split_in_two_pieces_stays_one_word() -> None:
    assert join("Hel", "lo") == "Hello"


def test_a_number_split_at_its_point_stays_one_number() -> None:
    assert join("Pi is 3.", "14") == "Pi is 3.14"


def test_a_piece_that_brings_its_own_space_gets_no_second_one() -> None:
    assert join("Hello. ", "How") == "Hello. How"
    assert join("Hello.", " How") == "Hello. How"


def test_a_sentence_is_committed_when_its_end_arrives() -> None:
    transcript = Transcript()
    assert transcript.feed("How are", 0.0) == []
    assert transcript.feed(" you? I am", 0.0) == ["How are you?"]
    assert transcript.pending == " I am"


def test_a_chinese_sentence_is_committed_at_its_full_stop() -> None:
    transcript = Transcript()
    assert transcript.feed("你好", 0.0) == []
    assert transcript.feed("。今天", 0.0) == ["你好。"]


def test_a_point_inside_a_number_is_not_a_sentence_end() -> None:
    transcript = Transcript()
    assert transcript.feed("Pi is 3.", 0.0) == []
    assert transcript.feed("14 exactly. Then", 0.0) == ["Pi is 3.14 exactly."]


def test_an_abbreviation_is_not_a_sentence_end() -> None:
    transcript = Transcript()
    assert transcript.feed("Ask Mr.", 0.0) == []
    assert transcript.feed(" Smith now. Then", 0.0) == ["Ask Mr. Smith now."]


def test_a_word_and_its_full_stop_end_a_sentence_at_once() -> None:
    assert Transcript().feed("Hello.", 0.0) == ["Hello."]


def test_a_long_first_sentence_is_cut_at_a_clause() -> None:
    transcript = Transcript()
    assert transcript.feed("大家好，我现在正在体验AI科技，非常", 0.0) == ["大家好，我现在正在体验AI科技，"]


def test_a_short_first_clause_is_not_cut() -> None:
    transcript = Transcript()
    assert transcript.feed("Well, I", 0.0) == []


def test_only_the_first_sentence_is_cut_at_a_clause() -> None:
    transcript = Transcript()
    transcript.feed("Done. ", 0.0)
    assert transcript.feed("This second sentence is long enough, and it goes on", 0.0) == []


def test_the_first_clause_needs_its_token_count() -> None:
    clause = "one two three four five six,"
    assert len(tokens(clause)) == FIRST_CLAUSE_TOKENS
    assert Transcript().feed(clause + " seven", 0.0) == [clause]


def test_a_comma_inside_a_number_is_no_clause_end() -> None:
    assert Transcript().feed("We sold 1,000,000,000 units in", 0.0) == []


def test_flush_returns_the_rest() -> None:
    transcript = Transcript()
    transcript.feed("The end is near", 0.0)
    assert transcript.flush() == ["The end is near"]
    assert transcript.flush() == []


def test_flush_splits_what_it_returns_into_sentences() -> None:
    transcript = Transcript()
    transcript.feed("Pi is 3.", 0.0)
    assert transcript.flush() == ["Pi is 3."]


def test_punctuation_alone_is_never_committed() -> None:
    transcript = Transcript()
    assert transcript.feed("Really?", 0.0) == ["Really?"]
    assert transcript.feed("!", 0.0) == []
    assert transcript.flush() == []


def test_text_without_a_boundary_goes_once_its_delay_has_passed() -> None:
    transcript = Transcript(max_buffer_delay=0.5)
    assert transcript.feed("one two ", 10.0) == []
    assert transcript.due == 10.5
    assert transcript.expire(10.4) == []
    assert transcript.expire(10.5) == ["one two"]
    assert transcript.due is None


def test_a_word_still_being_written_stays_when_the_delay_passes() -> None:
    transcript = Transcript(max_buffer_delay=0.5)
    transcript.feed("one two thr", 10.0)
    assert transcript.expire(11.0) == ["one two"]
    assert transcript.pending == "thr"
    assert transcript.due == 11.5


def test_the_delay_counts_from_the_oldest_piece_waiting() -> None:
    transcript = Transcript(max_buffer_delay=1.0)
    transcript.feed("one", 10.0)
    transcript.feed(" two", 10.8)
    assert transcript.feed(" three", 11.0) == ["one two"]


def test_what_is_left_after_a_sentence_waits_from_its_own_arrival() -> None:
    transcript = Transcript(max_buffer_delay=1.0)
    transcript.feed("one", 10.0)
    transcript.feed(" two. three", 10.5)
    assert transcript.due == 11.5


def test_a_zero_delay_commits_every_piece_at_once() -> None:
    transcript = Transcript(max_buffer_delay=0)
    assert transcript.feed("Hello there", 0.0) == ["Hello there"]


def test_a_zero_delay_still_splits_a_piece_into_sentences() -> None:
    assert Transcript(max_buffer_delay=0).feed("Hi. How are you?", 0.0) == ["Hi.", "How are you?"]


def test_pipecat_sentences_read_as_one_text() -> None:
    assert feed_all(["Hello.", "How are you?", ""], delay=0) == ["Hello.", "How are you?"]


def test_livekit_pieces_with_a_space_appended() -> None:
    assert feed_all(["Hello there. ", "How are you? ", " "], delay=0) == ["Hello there.", "How are you?"]


def test_mixed_chinese_and_english() -> None:
    assert feed_all(["我今天用 Open", "AI 的 API", "。然后", "去 shopping."]) == [
        "我今天用 OpenAI 的 API。",
        "然后去 shopping.",
    ]


def test_japanese_gets_no_spaces() -> None:
    assert feed_all(["こんにちは。", "元気ですか？"]) == ["こんにちは。", "元気ですか？"]


@given(st.text(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_every_token_is_committed_once_in_order_however_the_text_is_cut(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    committed = feed_all(pieces)
    assert [t for sentence in committed for t in tokens(sentence)] == tokens(text)
    assert all(tokens(sentence) for sentence in committed)


@given(
    st.lists(
        st.sampled_from(["你好", "。", "，", "我", "们", "AI", "？", "！", "很好", "東京", "です"]),
        max_size=30,
    ),
    st.floats(min_value=0, max_value=2),
)
def test_chinese_and_japanese_text_gets_no_space(pieces: list[str], delay: float) -> None:
    assert not any(" " in sentence for sentence in feed_all(pieces, delay))


@given(
    st.lists(
        st.sampled_from(["Hel", "lo", ".", " ", "How", " are", " you", "?", "Mr.", "3.", "14", ","]),
        max_size=30,
    )
)
def test_english_words_split_across_pieces_are_never_broken(pieces: list[str]) -> None:
    committed = feed_all(pieces)
    assert [t for s in committed for t in tokens(s)] == tokens("".join(pieces))
