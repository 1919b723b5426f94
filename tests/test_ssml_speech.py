"""SSML served on the tone engine, over the WebSocket and HTTP: exact to the sample.

The expected audio is the engine's own for each span (`ToneEngine.synthesize`), joined with
silences of the exact lengths the markup asks for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from indextts_server.core.engine import PCM, SAMPLE_RATE, Segment, SynthesisJob, pause_samples
from indextts_server.core.ssml import bind, parse
from indextts_server.io.engines.plan import Chained, batched, synthesize
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.scheduling.runner import advance_each

from .conftest import PROMPT, REPO, JobsEngine, Running, StartServer, decode_wav, tts
from .test_agents import agent, audio_of, message
from .test_cluster import Node, broker, fleet  # noqa: F401 - fixtures: a redis-server, its nodes
from .test_voices import sample, stored, upload

PROMPT_FILE = os.path.realpath(REPO / PROMPT)
ITTS = 'xmlns:itts="urn:indextts-server:ssml"'
PAUSE = 200  # the contract's interval_silence: between spans that no break separates


def spoken(text: str, **fields: Any) -> PCM:
    """The tone engine's own audio for ``text`` alone (the request's defaults, ``fields`` changed)."""
    job = SynthesisJob(text=text, prompt_audio=fields.pop("prompt_audio", PROMPT_FILE), **fields)
    return np.concatenate([segment.pcm for segment in ToneEngine().synthesize(job)])


def silence(ms: int) -> PCM:
    return np.zeros(pause_samples(ms), dtype=np.int16)


def ssml(markup: str, **fields: Any) -> dict[str, Any]:
    return tts(markup, text_format="ssml", **fields)


@pytest.fixture
async def api(start_http: StartServer) -> Running:
    return await start_http()


async def pcm_of(api: Running, request: dict[str, Any]) -> PCM:
    async with api.connect() as client:
        _, wav = await client.request(request)
    pcm, rate, _ = decode_wav(wav)
    assert rate == SAMPLE_RATE
    return pcm


# --- the audio ----------------------------------------------------------------------------------


async def test_ssml_around_plain_text_changes_nothing_sample_for_sample(api: Running) -> None:
    text = "大家好，我现在正在体验 AI 科技！今天天气很好。明天也不错。"
    async with api.connect() as client:
        _, plain = await client.request(tts(text, max_tokens=20))
        _, marked = await client.request(ssml(f"<speak>{text}</speak>", max_tokens=20))
    assert marked == plain


async def test_a_break_is_silence_of_exactly_its_length(api: Running) -> None:
    pcm = await pcm_of(api, ssml('一二三。<break time="700ms"/>四五六。'))
    assert np.array_equal(pcm, np.concatenate([spoken("一二三。"), silence(700), spoken("四五六。")]))


async def test_breaks_at_either_end_open_and_close_the_audio(api: Running) -> None:
    pcm = await pcm_of(api, ssml('<speak><break time="250ms"/>一二三。<break strength="strong"/></speak>'))
    assert np.array_equal(pcm, np.concatenate([silence(250), spoken("一二三。"), silence(750)]))


async def test_sentences_are_apart_by_the_requests_pause(api: Running) -> None:
    pcm = await pcm_of(api, ssml("<speak><s>一二三</s><s>四五六</s></speak>", interval_silence=300))
    expected = [spoken("一二三", interval_silence=300), silence(300), spoken("四五六", interval_silence=300)]
    assert np.array_equal(pcm, np.concatenate(expected))


async def test_prosody_rate_changes_only_its_spans_duration(api: Running) -> None:
    pcm = await pcm_of(api, ssml('一二三。<prosody rate="50%">四五六七八。</prosody>'))
    slow = spoken("四五六七八。", speed=0.5)
    assert np.array_equal(pcm, np.concatenate([spoken("一二三。"), silence(PAUSE), slow]))
    assert len(slow) == pytest.approx(2 * len(spoken("四五六七八。")), rel=0.02)


async def test_prosody_rate_multiplies_the_requests_speed(api: Running) -> None:
    pcm = await pcm_of(api, ssml('<prosody rate="fast">一二三四五六。</prosody>', speed=0.8))
    assert np.array_equal(pcm, spoken("一二三四五六。", speed=1.0))  # 0.8 x 1.25, to the sample


async def test_sub_speaks_its_alias_and_say_as_its_expansion(api: Running) -> None:
    pcm = await pcm_of(
        api, ssml('<sub alias="世界卫生组织">WHO</sub>说<say-as interpret-as="digits">110</say-as>')
    )
    assert np.array_equal(pcm, spoken("世界卫生组织说1 1 0"))


async def test_a_voice_span_speaks_in_that_library_voice(api: Running) -> None:
    await upload(api.http, "alice", sample(2.0))
    pcm = await pcm_of(api, ssml('<speak>你好。<voice name="alice">我是爱丽丝。</voice></speak>'))
    alice = spoken("我是爱丽丝。", prompt_audio=stored(api, "alice"))
    assert np.array_equal(pcm, np.concatenate([spoken("你好。"), silence(PAUSE), alice]))
    assert not np.array_equal(alice, spoken("我是爱丽丝。"))


async def test_an_emotion_span_takes_its_emo_mode(api: Running) -> None:
    vector = "0,0,0.9,0,0,0,0,0"
    markup = f'<speak {ITTS}>好。<itts:emotion mode="vector" vector="{vector}">难过。</itts:emotion></speak>'
    pcm = await pcm_of(api, ssml(markup))
    sad = spoken("难过。", emo_mode="vector", emo_vector=(0, 0, 0.9, 0, 0, 0, 0, 0))
    assert np.array_equal(pcm, np.concatenate([spoken("好。"), silence(PAUSE), sad]))


async def test_at_batch_size_4_ssml_and_plain_tasks_share_steps_and_keep_their_audio(
    start_http: StartServer,
) -> None:
    server = await start_http(batch_size=4)
    markup = '<speak>一二三。<break time="300ms"/><prosody rate="slow">四五六。</prosody></speak>'
    expected = np.concatenate([spoken("一二三。"), silence(300), spoken("四五六。", speed=0.75)])
    results: dict[str, PCM] = {}

    async def speak(name: str, request: dict[str, Any]) -> None:
        results[name] = await pcm_of(server, request)

    async with trio.open_nursery() as nursery:
        for index in range(3):
            nursery.start_soon(speak, f"ssml{index}", ssml(markup))
            nursery.start_soon(speak, f"plain{index}", tts("七八九十。"))
    for index in range(3):
        assert np.array_equal(results[f"ssml{index}"], expected)
        assert np.array_equal(results[f"plain{index}"], spoken("七八九十。"))


async def test_in_cluster_mode_the_plan_crosses_the_broker_to_a_worker(
    fleet: Callable[..., Node],  # noqa: F811 - the fixture imported above
) -> None:
    gateway = fleet("gateway")
    fleet("worker")
    async with gateway.connect() as client:
        _, wav = await client.request(
            ssml('一二三。<break time="700ms"/><prosody rate="fast">四五六。</prosody>')
        )
    expected = np.concatenate([spoken("一二三。"), silence(700), spoken("四五六。", speed=1.25)])
    assert np.array_equal(decode_wav(wav)[0], expected)


class BatchingTone(ToneEngine):
    """A tone engine with an ``advance``, keeping the rows each step was given."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[list[Iterator[Segment]]] = []

    def advance(self, rows: Sequence[Iterator[Segment]]) -> list[Segment | BaseException | None]:
        self.steps.append(list(rows))
        return advance_each(rows)


def test_a_batched_step_advances_the_span_a_plan_is_speaking() -> None:
    engine = BatchingTone()
    markup = '<speak><break time="100ms"/>一二三。<break time="300ms"/><prosody rate="slow">四五六。</prosody></speak>'
    plan = bind(parse(markup), {})
    planned = SynthesisJob(text="一二三。 四五六。", prompt_audio=PROMPT_FILE, plan=plan)
    rows = [
        synthesize(engine, planned),
        synthesize(engine, SynthesisJob(text="七。八。", prompt_audio=PROMPT_FILE, max_tokens=20)),
    ]
    step = batched(engine.advance)
    audio: list[list[PCM]] = [[], []]
    live = [0, 1]
    while live:
        outcomes = step([rows[index] for index in live])
        for index, outcome in zip(list(live), outcomes, strict=True):
            assert isinstance(outcome, Segment), outcome
            audio[index].append(outcome.pcm)
            if outcome.last:
                live.remove(index)
    expected = np.concatenate(
        [silence(100), spoken("一二三。"), silence(300), spoken("四五六。", speed=0.75)]
    )
    assert np.array_equal(np.concatenate(audio[0]), expected)
    assert np.array_equal(np.concatenate(audio[1]), spoken("七。八。", max_tokens=20))
    assert not any(isinstance(row, Chained) for rows_ in engine.steps for row in rows_)  # the spans, batched


async def test_an_audio_emotion_span_names_a_library_voice(api: Running) -> None:
    await upload(api.http, "angry", sample(1.0))
    markup = (
        f'<speak {ITTS}><itts:emotion mode="audio" voice="angry" alpha="0.7">走开！</itts:emotion></speak>'
    )
    pcm = await pcm_of(api, ssml(markup))
    assert np.array_equal(
        pcm, spoken("走开！", emo_mode="audio", emo_audio=stored(api, "angry"), emo_alpha=0.7)
    )


# --- cues -----------------------------------------------------------------------------------------


async def test_cues_follow_the_spans_with_breaks_between_them(api: Running) -> None:
    markup = '<speak><break time="500ms"/><s>一二三。</s><break time="1s"/><s><sub alias="四五六">456</sub>。</s></speak>'
    async with api.connect() as client:
        await client.send(ssml(markup, timestamps=True))
        while not isinstance(end := await client.recv(), dict) or end["type"] != "end":
            pass
    first, second = end["cues"]
    assert (first["text"], second["text"]) == ("一二三。", "四五六。")
    assert first["start"] == pytest.approx(0.5, abs=0.002)
    gap = second["start"] - (first["start"] + first["duration"])
    assert gap == pytest.approx(1.0, abs=0.002)
    assert first["duration"] == pytest.approx(len(spoken("一二三。")) / SAMPLE_RATE, abs=0.002)


# --- refusals -------------------------------------------------------------------------------------


async def test_malformed_markup_is_refused_before_the_queue_and_the_connection_goes_on(api: Running) -> None:
    async with api.connect() as client:
        error = await client.error(ssml("<speak>你好<break time='1s'></speak>"))
        message = "text 不是有效的 SSML（第 1 行第 29 列）：标记格式错误（mismatched tag）"
        assert error == client.error_reply(message)
        await client.request(tts())


async def test_an_unknown_voice_in_the_markup_is_refused_naming_it(api: Running) -> None:
    async with api.connect() as client:
        error = await client.error(ssml('<voice name="nobody">你好</voice>'))
        assert error == client.error_reply("voice 不存在: nobody")


async def test_text_format_must_be_text_or_ssml(api: Running) -> None:
    async with api.connect() as client:
        assert await client.error(tts(text_format="html")) == client.error_reply(
            "text_format 必须是 text/ssml"
        )


# --- over HTTP ------------------------------------------------------------------------------------


def post(api: Running, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.post(f"{api.http}/v1/audio/speech", json=body)


async def test_http_speaks_ssml_exactly(api: Running) -> None:
    await upload(api.http, "alice", sample(2.0))
    body = {
        "input": '一二三。<break time="400ms"/>四五六。',
        "voice": "alice",
        "text_format": "ssml",
        "response_format": "wav",
        "stream": False,
    }
    response = await trio.to_thread.run_sync(post, api, body)
    assert response.status_code == 200
    pcm, _, _ = decode_wav(response.content)
    alice = stored(api, "alice")
    expected = [spoken("一二三。", prompt_audio=alice), silence(400), spoken("四五六。", prompt_audio=alice)]
    assert np.array_equal(pcm, np.concatenate(expected))


async def test_http_refuses_malformed_markup_naming_input(api: Running) -> None:
    response = await trio.to_thread.run_sync(post, api, {"input": "a <b", "text_format": "ssml"})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "input 不是有效的 SSML（第 1 行第 5 列）：标记格式错误（not well-formed (invalid token)）",
            "type": "invalid_request_error",
            "param": "input",
            "code": "invalid_value",
        }
    }


# --- voice agents (/tts/websocket, extension text_format) -----------------------------------------


async def test_an_agents_element_spanning_sentences_is_held_until_it_closes(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await client.send(message(transcript='<prosody rate="slow">Hello there. ', text_format="ssml"))
        await client.send(message(transcript="How are you?</prosody> Fine.", text_format="ssml"))
        await client.send(message(transcript="", more=False, text_format="ssml"))
        replies = await client.until_done()
    assert replies[-1]["type"] == "done"
    assert [(job.text, job.speed) for job in engine.jobs] == [
        ("Hello there. How are you?", 0.75),
        ("Fine.", 1.0),
    ]


async def test_an_agents_break_is_silence_of_its_length(api: Running) -> None:
    async with agent(api) as client:
        output = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": SAMPLE_RATE}
        replies = await client.speak(
            'Hello.<break time="500ms"/>Bye.', text_format="ssml", output_format=output
        )
    pcm = np.frombuffer(audio_of(replies), dtype="<i2")
    silent = np.flatnonzero(np.diff(np.concatenate([[0], (pcm == 0).astype(np.int8), [0]])))
    longest = max(int(end - start) for start, end in zip(silent[::2], silent[1::2], strict=True))
    assert pause_samples(500) <= longest <= pause_samples(500) + 4  # a note's fades end on a zero


async def test_an_agents_malformed_markup_ends_its_context_naming_text(api: Running) -> None:
    async with agent(api) as client:
        replies = await client.speak("Hello <b.", text_format="ssml")
    assert replies[-1]["type"] == "error"
    assert (
        replies[-1]["error"]
        == "text 不是有效的 SSML（第 1 行第 10 列）：标记格式错误（not well-formed (invalid token)）"
    )
