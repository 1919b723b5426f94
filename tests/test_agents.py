"""Voice agents on ``/tts/websocket`` (Cartesia's protocol), driven by a plain WebSocket client."""

from __future__ import annotations

import base64
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from trio_websocket import (
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from indextts_server.core import texts
from indextts_server.core.agents.audio import alaw, mulaw
from indextts_server.core.agents.cartesia import EMOTIONS
from indextts_server.core.engine import Segment, SynthesisJob
from indextts_server.core.tasks import Task
from indextts_server.io.engines.tone import ToneEngine

from .conftest import (
    Client,
    GatedEngine,
    JobsEngine,
    RecordingEngine,
    Running,
    StartServer,
    tts,
    wait_until,
)

Json = dict[str, Any]
VOICE = {"mode": "id", "id": "default"}


def message(context_id: str = "c1", transcript: str = "", more: bool = True, **fields: Any) -> Json:
    """A message as pipecat builds it (``max_buffer_delay_ms`` 0: it sends whole sentences)."""
    return {
        "context_id": context_id,
        "transcript": transcript,
        "continue": more,
        "model_id": "sonic-3",
        "voice": VOICE,
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
        "add_timestamps": True,
        "use_normalized_timestamps": False,
        "max_buffer_delay_ms": 0,
        "language": "en",
        **fields,
    }


def fmt(encoding: str, rate: int) -> Json:
    return {"container": "raw", "encoding": encoding, "sample_rate": rate}


class Agent:
    def __init__(self, ws: WebSocketConnection):
        self.ws = ws

    async def send(self, payload: Json | str) -> None:
        await self.ws.send_message(payload if isinstance(payload, str) else json.dumps(payload))

    async def recv(self) -> Json:
        with trio.fail_after(20):
            reply: Json = json.loads(await self.ws.get_message())
        return reply

    async def until_done(self, context_id: str = "c1") -> list[Json]:
        """Every message up to the context's ``done`` (or ``error``), other contexts' too."""
        seen: list[Json] = []
        while True:
            reply = await self.recv()
            seen.append(reply)
            if reply["context_id"] == context_id and reply["type"] in ("done", "error"):
                return seen

    async def speak(self, *sentences: str, context_id: str = "c1", **fields: Any) -> list[Json]:
        for sentence in sentences:
            await self.send(message(context_id, sentence, **fields))
        await self.send(message(context_id, "", more=False, **fields))
        return await self.until_done(context_id)


def audio_of(replies: list[Json], context_id: str = "c1") -> bytes:
    return b"".join(
        base64.b64decode(r["data"]) for r in replies if r["type"] == "chunk" and r["context_id"] == context_id
    )


def words_of(replies: list[Json]) -> list[tuple[str, float, float]]:
    out = []
    for reply in replies:
        if reply["type"] == "timestamps":
            stamps = reply["word_timestamps"]
            out += list(zip(stamps["words"], stamps["start"], stamps["end"], strict=True))
    return out


def url(server: Running, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.http_port}/tts/websocket{query}"


@asynccontextmanager
async def agent(
    server: Running, query: str = "", headers: list[tuple[str, str]] | None = None
) -> AsyncIterator[Agent]:
    raw = [(k.encode(), v.encode()) for k, v in headers or []]
    async with open_websocket_url(url(server, query), extra_headers=raw) as ws:
        yield Agent(ws)


@pytest.fixture
async def server(start_http: StartServer) -> Running:
    return await start_http()


def tasks_of(server: Running) -> list[Task]:
    return list(server.service.board.registry)


# --- replies -------------------------------------------------------------------------------------


async def test_a_sentence_comes_back_as_chunks_of_its_audio_then_done(server: Running) -> None:
    async with agent(server) as client:
        replies = await client.speak("Hello there.")
    assert [r["type"] for r in replies][-1] == "done"
    assert replies[-1] == {"type": "done", "context_id": "c1", "done": True, "status_code": 206}
    chunk = next(r for r in replies if r["type"] == "chunk")
    assert set(chunk) == {"type", "context_id", "data", "done", "status_code"}
    assert len(audio_of(replies)) > 0


async def test_words_are_timed_exactly_on_tone(server: Running) -> None:
    async with agent(server) as client:
        replies = await client.speak("Hello there.", "How are you?")
    seconds = len(audio_of(replies)) / 2 / 16000
    assert [w for w, _, _ in words_of(replies)] == ["Hello", "there.", "How", "are", "you?"]
    stamps = words_of(replies)
    assert stamps[0][1] == 0.0
    assert stamps[-1][2] == pytest.approx(seconds, abs=0.002)
    assert all(a[2] <= b[1] + 1e-9 for a, b in itertools.pairwise(stamps))
    # tone gives each word the same time within its sentence
    first = [end - start for _, start, end in stamps[:2]]
    assert first[0] == pytest.approx(first[1], abs=0.002)


async def test_a_timestamps_message_carries_no_data(server: Running) -> None:
    async with agent(server) as client:
        replies = await client.speak("Hello there.")
    stamps = next(r for r in replies if r["type"] == "timestamps")
    assert "data" not in stamps
    assert stamps["context_id"] == "c1"


async def test_no_timestamps_unless_asked(server: Running) -> None:
    async with agent(server) as client:
        replies = await client.speak("Hello there.", add_timestamps=False)
    assert [r for r in replies if r["type"] == "timestamps"] == []


async def test_chinese_words_are_characters(server: Running) -> None:
    async with agent(server) as client:
        replies = await client.speak("大家好。", "我是AI。", language="zh")
    assert [w for w, _, _ in words_of(replies)] == ["大", "家", "好。", "我", "是", "AI。"]


async def test_sentences_of_a_context_play_in_order(server: Running) -> None:
    async with agent(server) as client:
        replies = await client.speak("One.", "Two three.", "Four five six.")
    assert [w for w, _, _ in words_of(replies)] == ["One.", "Two", "three.", "Four", "five", "six."]


async def test_each_sentence_is_a_task_submitted_when_it_is_complete(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await client.send(message(transcript="Hello there. How", max_buffer_delay_ms=None))
        with trio.fail_after(10):
            first = await client.recv()
        assert first["type"] in ("timestamps", "chunk")
        assert [job.text for job in engine.jobs] == ["Hello there."]
        await client.send(message(transcript=" are you?", max_buffer_delay_ms=None))
        await client.send(message(transcript="", more=False))
        await client.until_done()
    assert [job.text for job in engine.jobs] == ["Hello there.", "How are you?"]


async def test_text_without_a_sentence_end_goes_after_max_buffer_delay(server: Running) -> None:
    async with agent(server) as client:
        await client.send(message(transcript="no end in sight ", max_buffer_delay_ms=50))
        first = await client.recv()  # no continue: false was sent
    assert first["type"] == "timestamps"
    assert first["word_timestamps"]["words"] == ["no", "end", "in", "sight"]


async def test_a_message_without_continue_is_the_whole_input(server: Running) -> None:
    async with agent(server) as client:
        await client.send({"context_id": "c1", "transcript": "Hello there.", "voice": VOICE})
        replies = await client.until_done()
    assert replies[-1]["type"] == "done"
    assert audio_of(replies)


async def test_flush_is_answered_after_the_audio_before_it(server: Running) -> None:
    async with agent(server) as client:
        await client.send(message(transcript="Hello there."))
        await client.send({"context_id": "c1", "flush": True})
        replies: list[Json] = []
        while not replies or replies[-1]["type"] != "flush_done":
            replies.append(await client.recv())
    assert audio_of(replies)
    assert replies[-1] == {
        "type": "flush_done",
        "context_id": "c1",
        "flush_id": 1,
        "flush_done": True,
        "done": False,
        "status_code": 206,
    }


async def test_contexts_on_one_socket_are_independent(server: Running) -> None:
    async with agent(server) as client:
        await client.send(message("a", "First context."))
        await client.send(message("b", "Second context here."))
        await client.send(message("b", "", more=False))
        await client.send(message("a", "", more=False))
        replies = await client.until_done("a")
        if not any(r["type"] == "done" and r["context_id"] == "b" for r in replies):
            replies += await client.until_done("b")
    assert {r["context_id"] for r in replies if r["type"] == "done"} == {"a", "b"}
    assert audio_of(replies, "a") and audio_of(replies, "b")


# --- formats -------------------------------------------------------------------------------------


async def _audio(server: Running, encoding: str, rate: int) -> bytes:
    async with agent(server) as client:
        return audio_of(await client.speak("Hello there.", output_format=fmt(encoding, rate)))


async def test_mulaw_at_8khz_is_the_g711_of_the_samples(server: Running) -> None:
    pcm = np.frombuffer(await _audio(server, "pcm_s16le", 8000), dtype="<i2")
    encoded = await _audio(server, "pcm_mulaw", 8000)
    assert len(encoded) == len(pcm)
    assert encoded == mulaw(pcm)


async def test_alaw_is_the_g711_of_the_samples(server: Running) -> None:
    pcm = np.frombuffer(await _audio(server, "pcm_s16le", 8000), dtype="<i2")
    assert await _audio(server, "pcm_alaw", 8000) == alaw(pcm)


async def test_f32le_is_the_samples_as_floats(server: Running) -> None:
    pcm = np.frombuffer(await _audio(server, "pcm_s16le", 24000), dtype="<i2")
    floats = np.frombuffer(await _audio(server, "pcm_f32le", 24000), dtype="<f4")
    assert np.array_equal(floats, pcm.astype(np.float32) / 32768)


async def test_the_rate_asked_for_is_the_rate_sent(server: Running) -> None:
    at16 = len(await _audio(server, "pcm_s16le", 16000)) / 2
    at48 = len(await _audio(server, "pcm_s16le", 48000)) / 2
    assert at48 / at16 == pytest.approx(3, rel=0.01)


# --- controls ------------------------------------------------------------------------------------


async def test_language_speed_and_emotion_reach_the_job(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await client.speak("Hello.", language="es", generation_config={"speed": 1.2, "emotion": "excited"})
    job = engine.jobs[0]
    assert (job.lang, job.speed, job.emo_mode) == ("es", 1.2, "vector")
    assert job.emo_vector == tuple(0.6 if e == "happy" else 0.0 for e in EMOTIONS)


async def test_an_emotion_level_sets_its_weight(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await client.speak("Hello.", generation_config={"emotion": ["anger:highest"]})
    assert engine.jobs[0].emo_vector == tuple(1.0 if e == "angry" else 0.0 for e in EMOTIONS)


async def test_an_emotion_without_a_dimension_asks_for_none(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await client.speak("Hello.", generation_config={"emotion": "neutral"})
    assert engine.jobs[0].emo_mode == "none"


async def test_a_voice_resolves_as_in_the_http_api(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await client.speak("Hello.")
    assert engine.jobs[0].prompt_audio == server.service.voices.resolve("voice", "default")


# --- errors: each one an error, and the socket lives ---------------------------------------------


async def _refused(server: Running, payload: Json | str) -> Json:
    async with agent(server) as client:
        await client.send(payload)
        error = await client.recv()
        replies = await client.speak("Still here.", context_id="after")
    assert replies[-1]["type"] == "done"
    return error


def _error(context_id: str | None, text: str) -> Json:
    return {"type": "error", "context_id": context_id, "error": text, "done": True, "status_code": 400}


async def test_an_unknown_voice_is_an_error_and_the_socket_lives(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    error = await _refused(server, message(transcript="Hi.", voice={"mode": "id", "id": "nobody"}))
    assert error == _error("c1", texts.unknown_voice("voice", "nobody"))
    assert [job.text for job in engine.jobs] == ["Still here."]


async def test_malformed_json_is_an_error_and_the_socket_lives(server: Running) -> None:
    assert await _refused(server, "{not json") == _error(None, texts.MALFORMED_JSON)


async def test_a_message_without_a_context_id_is_an_error(server: Running) -> None:
    assert await _refused(server, {"transcript": "Hi."}) == _error(
        None, texts.AGENT_FIELD_ERRORS["context_id"]
    )


@pytest.mark.parametrize(
    ("output_format", "field"),
    [
        (fmt("mp3", 16000), "encoding"),
        (fmt("pcm_s16le", 7999), "sample_rate"),
        (fmt("pcm_s16le", 48001), "sample_rate"),
        ({"container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000}, "container"),
        ({"container": "raw", "encoding": "pcm_s16le", "sample_rate": "fast"}, "sample_rate"),
    ],
)
async def test_a_bad_format_is_an_error_before_any_work(
    start_http: StartServer, output_format: Json, field: str
) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    error = await _refused(server, message(transcript="Hi.", output_format=output_format))
    assert error == _error("c1", texts.AGENT_FIELD_ERRORS[field])
    assert [job.text for job in engine.jobs] == ["Still here."]


async def test_a_language_the_model_cannot_speak_is_an_error(start_http: StartServer) -> None:
    engine = JobsEngine()
    server = await start_http(engine)
    error = await _refused(server, message(transcript="Hallo.", language="de"))
    assert error == _error("c1", texts.agent_language("de"))
    assert [job.text for job in engine.jobs] == ["Still here."]


async def test_a_speed_out_of_range_is_an_error(server: Running) -> None:
    error = await _refused(server, message(transcript="Hi.", generation_config={"speed": 9}))
    assert error == _error("c1", texts.AGENT_FIELD_ERRORS["speed"])


async def test_a_failed_sentence_ends_its_context_with_an_error(start_http: StartServer) -> None:
    server = await start_http(ToneEngine(fail_on="BOOM"))
    async with agent(server) as client:
        replies = await client.speak("BOOM goes the engine.")
        assert replies[-1]["type"] == "error" and replies[-1]["context_id"] == "c1"
        assert replies[-1]["error"].startswith(texts.engine_failed(""))
        assert (await client.speak("Fine.", context_id="c2"))[-1]["type"] == "done"


async def test_too_much_text_waiting_is_an_error(start_http: StartServer) -> None:
    server = await start_http(max_text_chars=50)
    error = await _refused(server, message(transcript="a" * 60, max_buffer_delay_ms=None))
    assert error == _error("c1", texts.agent_transcript_too_long(50))


# --- auth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", [("X-API-Key", "s3cret")]),
        ("?api_key=s3cret&cartesia_version=2025-04-16", None),
        ("", [("Authorization", "Bearer s3cret")]),
    ],
)
async def test_the_token_is_accepted_as_cartesia_clients_send_it(
    start_http: StartServer, query: str, headers: list[tuple[str, str]] | None
) -> None:
    server = await start_http(auth_token="s3cret")
    async with agent(server, query, headers) as client:
        assert (await client.speak("Hi."))[-1]["type"] == "done"


@pytest.mark.parametrize("headers", [None, [("X-API-Key", "wrong")]])
async def test_a_missing_or_wrong_token_is_refused(
    start_http: StartServer, headers: list[tuple[str, str]] | None
) -> None:
    server = await start_http(auth_token="s3cret")
    with pytest.raises(ConnectionRejected):
        async with agent(server, "", headers):
            pass


# --- cancel and a closed socket stop the server's work ------------------------------------------


LONG = " ".join(["word"] * 250) + "."
"""One sentence the tone engine makes in three segments (120 tokens each at most)."""


async def _running_and_two_queued(server: Running, engine: GatedEngine, client: Agent) -> None:
    """A long sentence running (its first segment out, the rest held) and two queued behind it."""
    for sentence in (LONG, "Second sentence.", "Third sentence."):
        await client.send(message(transcript=sentence))
    assert (await client.recv())["type"] == "timestamps"
    await engine.first_segment()
    await wait_until(lambda: len(tasks_of(server)) == 3)


def _states(server: Running) -> list[str]:
    return [t.state for t in sorted(tasks_of(server), key=lambda t: t.accepted_at)]


async def test_a_cancel_stops_the_running_sentence_and_drops_the_queued_ones(start_http: StartServer) -> None:
    engine = GatedEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await _running_and_two_queued(server, engine, client)
        await client.send({"context_id": "c1", "cancel": True})
        await wait_until(lambda: _states(server) == ["running", "cancelled", "cancelled"])
        engine.release()
        await wait_until(lambda: _states(server) == ["cancelled"] * 3)
        assert (await client.speak("Next turn.", context_id="c2"))[-1]["type"] == "done"
    assert engine.texts("begin") == [LONG, "Next turn."]
    assert engine.texts("segment").count(LONG) == 2  # of its three
    assert {t.error_message for t in tasks_of(server) if t.state == "cancelled"} == {texts.CANCELLED}


async def test_a_closed_socket_stops_all_of_its_work(start_http: StartServer) -> None:
    engine = GatedEngine()
    server = await start_http(engine)
    async with agent(server) as client:
        await _running_and_two_queued(server, engine, client)
    await wait_until(lambda: _states(server) == ["running", "cancelled", "cancelled"])
    engine.release()
    await wait_until(lambda: _states(server) == ["cancelled"] * 3)
    assert engine.texts("begin") == [LONG]
    assert engine.texts("segment").count(LONG) == 2


async def test_sentences_past_the_sockets_limit_wait_their_turn(start_http: StartServer) -> None:
    engine = GatedEngine()
    server = await start_http(engine, max_pending_per_session=2)
    async with agent(server) as client:
        await client.send(message(transcript=LONG))
        assert (await client.recv())["type"] == "timestamps"  # running, the rest of it held
        for sentence in ("Two.", "Three.", "Four.", "Five."):
            await client.send(message(transcript=sentence))
        await client.send("{")  # answered once every message before it has been handled
        replies: list[Json] = []
        while (reply := await client.recv())["type"] != "error":
            replies.append(reply)
        assert len(tasks_of(server)) == 2
        engine.release()
        await client.send(message(transcript="", more=False))
        replies += await client.until_done()
    assert [w for w, _, _ in words_of(replies)][-4:] == ["Two.", "Three.", "Four.", "Five."]
    assert len(tasks_of(server)) == 5


async def test_sentences_batched_together_still_play_in_order(start_http: StartServer) -> None:
    server = await start_http(batch_size=4)
    lines = ["A rather longer first sentence than the others.", "Two.", "Three four.", "Five."]
    async with agent(server) as client:
        replies = await client.speak(*lines)
    assert " ".join(w for w, _, _ in words_of(replies)) == " ".join(lines)


# --- realtime lane: a sentence goes ahead of bulk work -----------------------------------------------

BULK = "第一段是一段很长很长的文字。第二段是一段很长很长的文字。第三段是一段很长很长的文字。第四段是一段很长很长的文字。"


class PacedEngine(RecordingEngine):
    """Tone, where a bulk task's segments after its first wait for the test to let each through
    (``permit``), so a test knows exactly which segment boundary a sentence meets."""

    def __init__(self) -> None:
        super().__init__(ToneEngine())
        self.permits = threading.Semaphore(0)

    def synthesize(self, job: SynthesisJob) -> Iterator[Segment]:
        segments = super().synthesize(job)
        for index in itertools.count():
            if job.text == BULK and index > 0:
                self.permits.acquire(timeout=30)
            segment = next(segments, None)
            if segment is None:
                return
            yield segment

    def permit(self, n: int = 1) -> None:
        for _ in range(n):
            self.permits.release()

    def made(self, text: str) -> int:
        return self.texts("segment").count(text)


@asynccontextmanager
async def bulk_then_sentence(
    server: Running, engine: PacedEngine
) -> AsyncIterator[tuple[Client, Task, Agent]]:
    """A contract task of four segments, held inside its second; then an agent's sentence."""
    async with server.connect() as client, agent(server) as speaker:
        await client.send(tts(BULK, max_tokens=20, stream=True))
        queued = await client.recv_json()
        bulk = server.service.board.registry.get(queued["task_id"])
        assert bulk is not None
        await wait_until(lambda: engine.made(BULK) == 1)  # its second segment waits for a permit
        await speaker.send(message("c1", "Hello there.", more=False))
        await wait_until(lambda: len(server.service.board.urgent) == 1)
        yield client, bulk, speaker


async def _end_of(client: Client) -> None:
    while not isinstance(reply := await client.recv(), dict) or reply["type"] != "end":
        pass


async def test_at_batch_size_1_a_sentence_goes_ahead_of_a_running_contract_task_at_its_next_segment(
    start_http: StartServer,
) -> None:
    engine = PacedEngine()
    server = await start_http(engine)
    async with bulk_then_sentence(server, engine) as (client, bulk, speaker):
        engine.permit()  # the bulk task's second segment: the boundary the sentence takes
        replies = await speaker.until_done()
        assert replies[-1]["type"] == "done" and audio_of(replies)
        # The contract task is still running, paused after the segment it was in.
        assert bulk.state == "running" and engine.made(BULK) == 2
        engine.permit(2)
        await _end_of(client)
        assert engine.made(BULK) == 4


async def test_above_batch_size_1_a_sentence_joins_the_running_batch_at_the_next_step(
    start_http: StartServer,
) -> None:
    engine = PacedEngine()
    server = await start_http(engine, batch_size=4)
    async with bulk_then_sentence(server, engine) as (client, bulk, speaker):
        engine.permit()  # the step in progress ends; the sentence joins the next, beside the task
        await wait_until(lambda: "Hello there." in engine.texts("begin"))
        assert engine.made(BULK) == 2
        engine.permit()  # that step's bulk segment
        replies = await speaker.until_done()
        assert replies[-1]["type"] == "done" and audio_of(replies)
        assert bulk.state == "running" and engine.made(BULK) == 3
        engine.permit()
        await _end_of(client)
