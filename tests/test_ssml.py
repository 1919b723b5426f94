"""SSML (``text_format: "ssml"``), pure: the subset parsed to a plan, its refusals, and its safety."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indextts_server.core.contract.decode import RequestError, decode_request
from indextts_server.core.contract.jobs import job_from, unfit
from indextts_server.core.engine import Capabilities, SynthesisJob
from indextts_server.core.plan import Emotion, Pause, Speech, Word, expand, render, shown, silences
from indextts_server.core.ssml import MAX_DEPTH, MAX_STEPS, MAX_VOICES, SsmlError, bind, parse, voices

from .conftest import encode, tts

ITTS = 'xmlns:itts="urn:indextts-server:ssml"'


def speech(*pieces: str | Word, **fields: object) -> Speech:
    return Speech(pieces=pieces, **fields)  # type: ignore[arg-type]  # test shorthand


# -- the subset ---------------------------------------------------------------------------------


def test_plain_text_in_speak_is_one_span_of_that_text() -> None:
    assert parse("<speak>你好，世界。</speak>") == (speech("你好，世界。"),)


def test_markup_without_speak_is_read_as_its_content() -> None:
    assert parse('Hello <break time="1s"/> world') == (speech("Hello"), Pause(ms=1000), speech("world"))


@pytest.mark.parametrize(
    ("attributes", "ms"),
    [
        ('time="250ms"', 250),
        ('time="1.5s"', 1500),
        ('strength="none"', 0),
        ('strength="x-weak"', 100),
        ('strength="weak"', 250),
        ('strength="medium"', 500),
        ('strength="strong"', 750),
        ('strength="x-strong"', 1000),
        ("", 500),
        ('time="300ms" strength="x-strong"', 300),  # time wins
    ],
)
def test_a_break_is_a_pause_of_its_time_or_strength(attributes: str, ms: int) -> None:
    assert parse(f"<speak>a<break {attributes}/>b</speak>") == (speech("a"), Pause(ms=ms), speech("b"))


def test_paragraphs_and_sentences_are_spans_of_their_own() -> None:
    markup = "<speak>\n  <p><s>一。</s><s>二。</s></p>\n  <p>三。</p>\n</speak>"
    assert parse(markup) == (speech("一。"), speech("二。"), speech("三。"))


@pytest.mark.parametrize(
    ("rate", "factor"),
    [
        ("x-slow", 0.5),
        ("slow", 0.75),
        ("medium", 1.0),
        ("fast", 1.25),
        ("x-fast", 1.5),
        ("150%", 1.5),
        ("+20%", 1.2),
        ("-20%", 0.8),
        ("0.9", 0.9),
    ],
)
def test_prosody_rate_is_the_spans_speed_factor(rate: str, factor: float) -> None:
    assert parse(f'<prosody rate="{rate}">b</prosody>') == (speech("b", rate=pytest.approx(factor)),)


def test_nested_prosody_rates_multiply_and_default_resets() -> None:
    markup = (
        '<prosody rate="slow">a<prosody rate="200%">b<prosody rate="default">c</prosody></prosody></prosody>'
    )
    assert parse(markup) == (speech("a", rate=0.75), speech("b", rate=1.5), speech("c"))


def test_a_phoneme_is_a_word_with_its_pronunciation() -> None:
    plan = parse('<speak>银<phoneme alphabet="pinyin" ph="hang2">行</phoneme>。</speak>')
    assert plan == (speech("银", Word(text="行", alphabet="pinyin", ph="hang2"), "。"),)


def test_a_phoneme_in_an_alphabet_no_model_reads_is_its_word_as_written() -> None:
    assert parse('<phoneme alphabet="ipa" ph="təˈmɑːtoʊ">tomato</phoneme>') == (speech("tomato"),)


def test_sub_speaks_its_alias() -> None:
    assert parse('<speak>the <sub alias="World Wide Web">WWW</sub>.</speak>') == (
        speech("the World Wide Web."),
    )


@pytest.mark.parametrize(
    ("interpret_as", "format_", "content", "spoken"),
    [
        ("characters", "", "ABC", "A B C"),
        ("digits", "", "2024", "2 0 2 4"),
        ("cardinal", "", "1,234,567", "1234567"),
        ("telephone", "", "010-8888 1234", "0 1 0, 8 8 8 8, 1 2 3 4"),
        ("date", "mdy", "5/1/2024", "May 1, 2024"),
        ("date", "", "2024-05-01", "May 1, 2024"),
        ("date", "dmy", "31.12.1999", "December 31, 1999"),
        ("date", "dmy", "99.99.1999", "99.99.1999"),  # not a date: as written
    ],
)
def test_say_as_spells_out_what_the_normalizer_cannot_be_told(
    interpret_as: str, format_: str, content: str, spoken: str
) -> None:
    markup = f'<speak>x <say-as interpret-as="{interpret_as}" format="{format_}">{content}</say-as></speak>'
    assert parse(markup, lang="en") == (speech(f"x {spoken}"),)


def test_a_date_reads_in_chinese_in_chinese_text() -> None:
    assert parse('<speak>今天是<say-as interpret-as="date">2024-05-01</say-as>。</speak>') == (
        speech("今天是2024年5月1日。"),
    )


def test_voice_spans_name_library_voices() -> None:
    plan = parse(
        '<speak>你好。<voice name="alice">我是爱丽丝。</voice><voice name="bob">我是鲍勃。</voice></speak>'
    )
    assert plan == (
        speech("你好。"),
        speech("我是爱丽丝。", voice="alice"),
        speech("我是鲍勃。", voice="bob"),
    )
    assert voices(plan) == ["alice", "bob"]
    assert bind(plan, {"alice": "/v/alice.wav", "bob": "/v/bob.wav"})[2] == speech(
        "我是鲍勃。", voice="/v/bob.wav"
    )


@pytest.mark.parametrize(
    ("attributes", "emotion"),
    [
        (
            'mode="vector" vector="0,0,0.8,0,0,0,0,0"',
            Emotion(mode="vector", vector=(0, 0, 0.8, 0, 0, 0, 0, 0)),
        ),
        ('mode="text" text="悲伤" alpha="0.6"', Emotion(mode="text", text="悲伤", alpha=0.6)),
        ('mode="audio" voice="angry"', Emotion(mode="audio", voice="angry")),
        ('mode="none"', Emotion(mode="none")),
    ],
)
def test_the_emotion_extension_maps_to_the_four_emo_modes(attributes: str, emotion: Emotion) -> None:
    plan = parse(f"<speak {ITTS}>a<itts:emotion {attributes}>b</itts:emotion></speak>")
    assert plan == (speech("a"), speech("b", emotion=emotion))


@pytest.mark.parametrize(
    "markup",
    [
        "<speak>a <emphasis>b</emphasis> c</speak>",
        '<speak>a <lang xml:lang="en">b</lang> c</speak>',
        '<speak xmlns:x="urn:other">a <x:thing>b</x:thing> c</speak>',
        '<speak>a <audio src="http://127.0.0.1:9/never">b</audio> c</speak>',
        '<speak>a <mark name="m"/>b c</speak>',
    ],
)
def test_unknown_elements_and_audio_speak_their_text(markup: str) -> None:
    assert parse(markup) == (speech("a b c"),)


def test_the_ssml_namespace_is_the_default_one() -> None:
    markup = '<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis">a<break time="2s"/>b</speak>'
    assert parse(markup) == (speech("a"), Pause(ms=2000), speech("b"))


def test_predefined_entities_and_character_references_are_text() -> None:
    assert parse("<speak>R&amp;D &#25105; &lt;3</speak>") == (speech("R&D 我 <3"),)


# -- refusals: each names text and the position ----------------------------------------------------


@pytest.mark.parametrize(
    ("markup", "message"),
    [
        (
            "<speak>a <b</speak>",
            "text 不是有效的 SSML（第 1 行第 12 列）：标记格式错误（not well-formed (invalid token)）",
        ),
        ("a <b", "text 不是有效的 SSML（第 1 行第 5 列）：标记格式错误（not well-formed (invalid token)）"),
        ("<speak>\nok\n</spek>", "text 不是有效的 SSML（第 3 行第 3 列）：标记格式错误（mismatched tag）"),
        ("<speak>&nbsp;</speak>", "text 不是有效的 SSML（第 1 行第 8 列）：标记格式错误（undefined entity）"),
        (
            '<?xml version="1.0"?><!DOCTYPE speak [<!ENTITY a "aaaa">]><speak>&a;</speak>',
            "text 不是有效的 SSML（第 1 行第 22 列）：不支持 DOCTYPE、实体声明和外部引用",
        ),
        (
            '<!DOCTYPE speak SYSTEM "file:///etc/passwd"><speak>x</speak>',
            "text 不是有效的 SSML（第 1 行第 1 列）：不支持 DOCTYPE、实体声明和外部引用",
        ),
        (
            '<speak>a<break time="fast"/></speak>',
            "text 不是有效的 SSML（第 1 行第 9 列）：<break> 的 time 无效: 'fast'",
        ),
        (
            '<speak>a<break time="11s"/></speak>',
            "text 不是有效的 SSML（第 1 行第 9 列）：<break> 过长：最多 10000 毫秒",
        ),
        (
            '<speak><prosody rate="warp">a</prosody></speak>',
            "text 不是有效的 SSML（第 1 行第 8 列）：<prosody> 的 rate 无效: 'warp'",
        ),
        (
            '<speak><prosody rate="900%">a</prosody></speak>',
            "text 不是有效的 SSML（第 1 行第 8 列）：<prosody> 的 rate 无效: '900%'",
        ),
        (
            '<speak><phoneme alphabet="pinyin" ph="a|b">x</phoneme></speak>',
            "text 不是有效的 SSML（第 1 行第 8 列）：<phoneme> 的 ph 无效: 'a|b'",
        ),
        ("<speak><sub>x</sub></speak>", "text 不是有效的 SSML（第 1 行第 8 列）：<sub> 的 alias 无效: ''"),
        (
            '<speak><sub alias="y"><break/></sub></speak>',
            "text 不是有效的 SSML（第 1 行第 23 列）：<sub> 只能包含文本",
        ),
        (
            '<speak><say-as interpret-as="ordinal">1</say-as></speak>',
            "text 不是有效的 SSML（第 1 行第 8 列）：<say-as> 的 interpret-as 无效: 'ordinal'",
        ),
        (
            "<speak><voice>x</voice></speak>",
            "text 不是有效的 SSML（第 1 行第 8 列）：<voice> 的 name 无效: ''",
        ),
        (
            f'<speak {ITTS}><itts:emotion mode="joy">x</itts:emotion></speak>',
            f"text 不是有效的 SSML（第 1 行第 {len(ITTS) + 9} 列）：<emotion> 的 mode 无效: 'joy'",
        ),
        (
            f'<speak {ITTS}><itts:emotion mode="vector" vector="1,2">x</itts:emotion></speak>',
            f"text 不是有效的 SSML（第 1 行第 {len(ITTS) + 9} 列）：<emotion> 的 vector 无效: '1,2'",
        ),
        ("<speak><break/></speak>", "缺少有效的 text"),
    ],
)
def test_refused_markup_names_text_and_the_position(markup: str, message: str) -> None:
    with pytest.raises(SsmlError) as refused:
        parse(markup)
    assert str(refused.value) == message


def test_nesting_is_bounded() -> None:
    markup = "<speak>" + "<p>" * MAX_DEPTH + "x" + "</p>" * MAX_DEPTH + "</speak>"
    with pytest.raises(SsmlError, match=f"元素嵌套过深：最多 {MAX_DEPTH} 层"):
        parse(markup)


def test_spans_and_breaks_are_bounded() -> None:
    with pytest.raises(SsmlError, match=f"片段和停顿过多：最多 {MAX_STEPS} 个"):
        parse("<speak>" + "<s>x</s>" * (MAX_STEPS + 1) + "</speak>")


def test_voices_are_bounded() -> None:
    markup = "".join(f'<voice name="v{n}">x</voice>' for n in range(MAX_VOICES + 1))
    with pytest.raises(SsmlError, match=f"声音过多：最多 {MAX_VOICES} 个"):
        parse(markup)


def test_a_refusal_over_the_websocket_is_the_frame_error() -> None:
    with pytest.raises(RequestError, match=r"^text 不是有效的 SSML（第 1 行第 5 列）"):
        decode_request(encode(tts("a <b", text_format="ssml")), max_text_chars=1000)


def test_ssml_is_opt_in() -> None:
    request = decode_request(encode(tts("a <b")), max_text_chars=1000)
    assert job_from(request, {"prompt_audio": "/p.wav"}).text == "a <b"  # type: ignore[arg-type]


# -- safety, by property ------------------------------------------------------------------------


_FRAGMENTS = st.sampled_from(
    [
        "<speak>",
        "</speak>",
        "<p>",
        "</p>",
        "<s>",
        "</s>",
        "<break/>",
        '<break time="20ms"/>',
        '<prosody rate="slow">',
        "</prosody>",
        '<voice name="a">',
        "</voice>",
        '<sub alias="x">',
        "</sub>",
        '<phoneme alphabet="pinyin" ph="hang2">',
        "</phoneme>",
        '<say-as interpret-as="date">',
        "</say-as>",
        "&amp;",
        "&lt;",
        "&#65;",
        "&x;",
        "<!DOCTYPE speak>",
        '<!ENTITY e "boom">',
        "<![CDATA[",
        "]]>",
        "<?pi x?>",
        "<!--",
        "-->",
        "<",
        ">",
        "&",
        '"',
        "你好",
        "hello",
        " ",
        "\n",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FRAGMENTS | st.text(max_size=8), max_size=40))
def test_the_parser_answers_any_markup_with_a_plan_or_a_refusal(parts: list[str]) -> None:
    try:
        plan = parse("".join(parts))
    except SsmlError as refused:
        assert str(refused).startswith(("text 不是有效的 SSML（第 ", "缺少有效的 text"))
    else:
        assert any(isinstance(step, Speech) for step in plan)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc ", min_size=1, max_size=6), st.integers(1, 50))
def test_an_entity_is_never_expanded(value: str, uses: int) -> None:
    markup = f'<?xml version="1.0"?><!DOCTYPE speak [<!ENTITY e "{value}">]><speak>{"&e;" * uses}</speak>'
    with pytest.raises(SsmlError, match="不支持 DOCTYPE、实体声明和外部引用"):
        parse(markup)
    with pytest.raises(SsmlError, match="undefined entity"):
        parse(f"<speak>{'&e;' * uses}</speak>")


# -- the plan as the engine's jobs ---------------------------------------------------------------


def _job(markup: str, **fields: object) -> SynthesisJob:
    request = decode_request(encode(tts(markup, text_format="ssml", **fields)), max_text_chars=10_000)
    return job_from(request, {"prompt_audio": "/p.wav"}, parse(markup))  # type: ignore[arg-type]


def test_ssml_around_plain_text_is_that_text_with_no_plan() -> None:
    assert _job("<speak>你好，世界。</speak>") == _job_plain("你好，世界。")


def _job_plain(text: str) -> SynthesisJob:
    return job_from(decode_request(encode(tts(text)), max_text_chars=10_000), {"prompt_audio": "/p.wav"})  # type: ignore[arg-type]


def test_the_plan_expands_to_span_jobs_and_exact_silences() -> None:
    job = _job(
        '<speak><break time="100ms"/>一。<s>二。</s><prosody rate="50%">三</prosody><break time="1s"/></speak>',
        speed=1.2,
    )
    items = expand(job, "tone")
    assert [item if isinstance(item, int) else (item.text, item.speed, item.plan) for item in items] == [
        100,
        ("一。", 1.2, None),
        200,
        ("二。", 1.2, None),
        200,
        ("三", 0.6, None),
        1000,
    ]
    assert silences(job) == (max(1000, -(-200 * 10 // 6)), 100, 1000)


def test_a_span_takes_its_voice_and_emotion_and_keeps_the_rest() -> None:
    job = _job(
        f'<speak {ITTS}>a<voice name="x"><itts:emotion mode="text" text="sad">b</itts:emotion></voice></speak>',
        seed=7,
    )
    job = job.__class__(
        **{
            **{f: getattr(job, f) for f in job.__struct_fields__},
            "plan": bind(job.plan or (), {"x": "/x.wav"}),
        }
    )
    first, _, second = expand(job, "tone")
    assert isinstance(first, SynthesisJob) and isinstance(second, SynthesisJob)
    assert (first.prompt_audio, first.emo_mode, first.seed) == ("/p.wav", "none", 7)
    assert (second.prompt_audio, second.emo_mode, second.emo_text, second.seed) == (
        "/x.wav",
        "text",
        "sad",
        7,
    )


@pytest.mark.parametrize(
    ("model", "text"),
    [
        ("IndexTTS-2.5", "<行|HANG2> <minute|M IH1 . N AH0 T> <上手|じょうず>"),
        ("IndexTTS-2", "HANG2 minute 上手"),
        ("tone", "行 minute 上手"),
    ],
)
def test_pronunciation_is_rendered_as_each_model_reads_it(model: str, text: str) -> None:
    pieces = (
        Word(text="行", alphabet="pinyin", ph="hang2"),
        " ",
        Word(text="minute", alphabet="cmu", ph="M IH1 . N AH0 T"),
        " ",
        Word(text="上手", alphabet="kana", ph="じょうず"),
    )
    assert render(pieces, model) == text
    words = tuple(piece for piece in pieces if isinstance(piece, Word))
    assert shown(render(pieces, model), words) == "行 minute 上手"


def test_a_cue_shows_the_word_as_the_normalizer_left_its_markup() -> None:
    words = (Word(text="行", alphabet="pinyin", ph="xing2"),)
    assert shown("我们<|SPECIAL_TOKEN_2|>XING2<|SPECIAL_TOKEN_2|>走吧", words) == "我们行走吧"


def test_a_span_the_model_cannot_do_is_refused_before_the_queue() -> None:
    job = _job(f'<speak {ITTS}>a<itts:emotion mode="text" text="sad">b</itts:emotion></speak>')
    problem = unfit(job, Capabilities(model="M", emotion_model=False))
    assert problem is not None and problem.field == "emo_mode"
    job = _job('<speak>a<prosody rate="x-fast">b</prosody></speak>', speed=2.0)
    problem = unfit(job, Capabilities(model="M", speed=(0.5, 2.0)))
    assert problem is not None and problem.field == "speed"
