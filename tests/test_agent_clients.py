"""The real voice-agent clients, unmodified, against ``/tts/websocket``: pipecat's
``CartesiaTTSService`` through pipecat's own ``run_test``, and LiveKit Agents' ``cartesia.TTS``.

Both are asyncio programs, so the server runs in-process on a thread of its own (`ThreadServer`),
and the tests look at its task registry and engine to see what the server did.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import trio
from livekit.agents import APIConnectOptions, APIError
from livekit.plugins import cartesia
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.services.cartesia.tts import CartesiaTTSService
from pipecat.services.tts_service import TextAggregationMode
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transcriptions.language import Language

from indextts_server.core import texts
from indextts_server.core.config import ServerConfig
from indextts_server.core.engine import Engine
from indextts_server.core.tasks import Task
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.http.app import HttpApi
from indextts_server.io.service.service import Service
from indextts_server.io.transport.http import bound_port, serve_http

from .conftest import GatedEngine

T = TypeVar("T")
LONG = " ".join(["word"] * 250) + "."
"""One sentence the tone engine makes in three segments (120 tokens each at most)."""


class ThreadServer:
    """The service and its HTTP port, run by Trio on a thread of their own."""

    def __init__(self, engine: Engine, voices: Path, **config: Any):
        self.engine = engine
        self._config = ServerConfig(host="127.0.0.1", port=0, voices_dir=str(voices), **config)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.port = 0

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        assert self._ready.wait(30), "the server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(30)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            self.service = Service(self._config, self.engine)
            await nursery.start(self.service.run)
            serving = functools.partial(serve_http, HttpApi(self.service), "127.0.0.1", 0)
            self.port = bound_port(await nursery.start(serving))
            self._ready.set()

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/tts/websocket"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on_loop(self, fn: Callable[[], T]) -> T:
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def states(self) -> list[str]:
        """Every task's state, in the order they were accepted."""

        def read() -> list[str]:
            tasks: list[Task] = sorted(self.service.board.registry, key=lambda t: t.accepted_at)
            return [t.state for t in tasks]

        return self.on_loop(read)

    def errors(self) -> set[str | None]:
        return self.on_loop(lambda: {t.error_message for t in self.service.board.registry})

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # the server's state has no event another thread can wait on
            assert time.monotonic() < deadline, "the server never got there"
            time.sleep(0.01)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    with ThreadServer(ToneEngine(), tmp_path / "voices") as running:
        yield running


# --- pipecat -------------------------------------------------------------------------------------


def pipecat_tts(server: ThreadServer | str, **options: Any) -> CartesiaTTSService:
    """pipecat's Cartesia service aimed at ``server`` (or a ``ws://`` URL)."""
    url = server if isinstance(server, str) else server.ws
    settings = CartesiaTTSService.Settings(voice=options.pop("voice", "default"))
    if "language" in options:
        settings.language = options.pop("language")
    return CartesiaTTSService(api_key="unused", url=url, settings=settings, **options)


def turn(*pieces: str, after: Sequence[Frame] = (), wait: float = 1.0) -> list[Frame]:
    """An LLM turn written as ``pieces``, then ``after``, then time for the audio to come."""
    return [
        LLMFullResponseStartFrame(),
        *(LLMTextFrame(text=piece) for piece in pieces),
        LLMFullResponseEndFrame(),
        *after,
        SleepFrame(sleep=wait),
    ]


def pipecat_run(tts: CartesiaTTSService, frames: list[Frame]) -> tuple[Sequence[Frame], Sequence[Frame]]:
    return asyncio.run(run_test(tts, frames_to_send=frames))


def test_pipecat_speaks_a_turn_with_its_words_timed(server: ThreadServer) -> None:
    down, up = pipecat_run(pipecat_tts(server, sample_rate=16000), turn("Hello there. ", "How are you?"))
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and {f.sample_rate for f in audio} == {16000}
    words = [f.text.strip() for f in down if isinstance(f, TTSTextFrame)]
    assert words == ["Hello", "there.", "How", "are", "you?"]
    assert any(isinstance(f, TTSStoppedFrame) for f in down)
    assert not [f for f in [*down, *up] if isinstance(f, ErrorFrame)]
    assert server.states() == ["completed", "completed"]


def test_pipecat_streaming_tokens_split_mid_word_is_spoken_sentence_by_sentence(server: ThreadServer) -> None:
    tts = pipecat_tts(server, sample_rate=16000, text_aggregation_mode=TextAggregationMode.TOKEN)
    down, up = pipecat_run(tts, turn("Hel", "lo there", ". How", " are", " you?"))
    assert not [f for f in [*down, *up] if isinstance(f, ErrorFrame)]
    words = [f.text.strip() for f in down if isinstance(f, TTSTextFrame)]
    assert words == ["Hello", "there.", "How", "are", "you?"]
    assert server.states() == ["completed", "completed"]  # one task a sentence


def test_pipecat_speaks_chinese_a_character_a_word(server: ThreadServer) -> None:
    tts = pipecat_tts(server, sample_rate=16000, language=Language.ZH)
    down, _ = pipecat_run(tts, turn("大家好。", "我是AI。"))
    words = "".join(f.text for f in down if isinstance(f, TTSTextFrame))
    assert words.replace(" ", "") == "大家好。我是AI。"


def test_pipecat_gets_8khz_mulaw(server: ThreadServer) -> None:
    tts = pipecat_tts(server, sample_rate=8000, encoding="pcm_mulaw")
    down, up = pipecat_run(tts, turn("Hello there."))
    audio = b"".join(f.audio for f in down if isinstance(f, TTSAudioRawFrame))
    assert not [f for f in [*down, *up] if isinstance(f, ErrorFrame)]
    # one byte a sample at 8 kHz: "Hello there." lasts about as long as the tone engine says
    assert len(audio) / 8000 == pytest.approx(len("Hellothere") / 14, abs=0.02)


def test_a_pipecat_interruption_stops_the_work_on_the_server(tmp_path: Path) -> None:
    engine = GatedEngine()
    with ThreadServer(engine, tmp_path / "voices") as server:
        frames = turn(
            LONG + " ",
            "Second sentence. ",
            "Third sentence.",
            after=[SleepFrame(sleep=0.5), InterruptionFrame()],
        )
        down, _ = pipecat_run(pipecat_tts(server, sample_rate=16000), frames)
        assert any(isinstance(f, TTSAudioRawFrame) for f in down)  # the first segment played
        server.wait_for(lambda: server.states() == ["running", "cancelled", "cancelled"])
        engine.release()
        server.wait_for(lambda: server.states() == ["cancelled"] * 3)
        assert server.errors() == {texts.CANCELLED}
    assert engine.texts("begin") == [LONG]
    assert engine.texts("segment").count(LONG) == 2  # of its three


def test_pipecat_sees_an_unknown_voice_as_an_error(server: ThreadServer) -> None:
    down, up = pipecat_run(pipecat_tts(server, voice="nobody"), turn("Hello."))
    errors = [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)]
    assert any(texts.unknown_voice("voice", "nobody") in error for error in errors)
    assert server.states() == []


def test_pipecat_sees_a_bad_format_as_an_error(server: ThreadServer) -> None:
    down, up = pipecat_run(pipecat_tts(server, encoding="mp3"), turn("Hello."))
    errors = [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)]
    assert any(texts.AGENT_FIELD_ERRORS["encoding"] in error for error in errors)
    assert server.states() == []


# --- LiveKit -------------------------------------------------------------------------------------


async def livekit_speak(
    server: ThreadServer | str, text: str, **options: Any
) -> tuple[bytes, list[Any], int]:
    """``text`` through a livekit TTS stream to ``server`` (or an ``http://`` base URL): the audio,
    the timed words, the frames' rate."""
    base = server if isinstance(server, str) else server.http
    async with aiohttp.ClientSession() as http:
        tts = cartesia.TTS(api_key="unused", base_url=base, voice="default", http_session=http, **options)
        stream = tts.stream()
        stream.push_text(text)
        stream.end_input()
        audio, words, rates = b"", [], set()
        async for event in stream:
            audio += bytes(event.frame.data)
            rates.add(event.frame.sample_rate)
            words += event.frame.userdata.get("lk.timed_transcripts", [])
        await stream.aclose()
        await tts.aclose()
    assert len(rates) == 1
    return audio, words, rates.pop()


def test_livekit_speaks_with_its_words_timed(server: ThreadServer) -> None:
    audio, words, rate = asyncio.run(livekit_speak(server, "Hello there. How are you?", sample_rate=16000))
    assert rate == 16000 and audio
    assert [w.strip() for w in words] == ["Hello", "there.", "How", "are", "you?"]
    assert [w.end_time for w in words][-1] == pytest.approx(len(audio) / 2 / 16000, abs=0.03)
    assert server.states() == ["completed", "completed"]


def test_livekit_speaks_chinese(server: ThreadServer) -> None:
    audio, words, _ = asyncio.run(livekit_speak(server, "大家好。我是AI。", language="zh", sample_rate=16000))
    assert audio
    assert "".join(words).replace(" ", "") == "大家好。我是AI。"


def test_a_livekit_aclose_drops_the_socket_and_stops_the_work(tmp_path: Path) -> None:
    engine = GatedEngine()

    async def interrupted(server: ThreadServer) -> None:
        async with aiohttp.ClientSession() as http:
            tts = cartesia.TTS(api_key="unused", base_url=server.http, voice="default", http_session=http)
            stream = tts.stream()
            stream.push_text(LONG + " Second sentence. Third sentence.")
            stream.end_input()
            await stream.__anext__()  # the first audio
            await stream.aclose()
            await tts.aclose()

    with ThreadServer(engine, tmp_path / "voices") as server:
        asyncio.run(interrupted(server))
        server.wait_for(lambda: server.states()[0:1] == ["running"] and "pending" not in server.states())
        engine.release()
        server.wait_for(lambda: set(server.states()) == {"cancelled"})
    assert engine.texts("begin") == [LONG]
    assert engine.texts("segment").count(LONG) == 2


def test_four_livekit_agents_at_once(server: ThreadServer) -> None:
    async def four() -> list[tuple[bytes, list[Any], int]]:
        lines = ["One agent speaks.", "Two agents speak.", "Three agents speak.", "Four agents speak."]
        return await asyncio.gather(*(livekit_speak(server, line, sample_rate=16000) for line in lines))

    results = asyncio.run(four())
    assert [" ".join(w.strip() for w in words) for _, words, _ in results] == [
        "One agent speaks.",
        "Two agents speak.",
        "Three agents speak.",
        "Four agents speak.",
    ]
    assert all(audio for audio, _, _ in results)
    assert server.states() == ["completed"] * 4


def test_livekit_fails_on_an_unknown_voice(server: ThreadServer) -> None:
    """livekit reads the ``error`` (``done: true``) as the end of the context, so what it reports
    is a turn without audio; the server did no work."""

    async def unknown() -> None:
        async with aiohttp.ClientSession() as http:
            tts = cartesia.TTS(api_key="unused", base_url=server.http, voice="nobody", http_session=http)
            try:
                stream = tts.stream(conn_options=APIConnectOptions(max_retry=0))
                stream.push_text("Hello.")
                stream.end_input()
                async for _ in stream:
                    pass
            finally:
                await tts.aclose()

    with pytest.raises(APIError, match="no audio frames"):
        asyncio.run(unknown())
    assert server.states() == []


# --- the docs' snippets run as written -----------------------------------------------------------


def snippets() -> list[str]:
    page = (Path(__file__).resolve().parent.parent / "docs" / "voice-agents.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", page, flags=re.S)


@pytest.mark.parametrize("index", [0, 1], ids=["pipecat", "livekit"])
def test_the_docs_snippet_runs_as_written(
    server: ThreadServer, index: int, capsys: pytest.CaptureFixture[str]
) -> None:
    source = snippets()[index].replace("127.0.0.1:8771", f"127.0.0.1:{server.port}")
    exec(compile(source, f"voice-agents.md snippet {index}", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    assert "Hello" in printed and "you?" in printed
    if index == 0:
        assert int(re.findall(r"(\d+) bytes of 16 kHz audio", printed)[0]) > 0
    assert server.states() == ["completed", "completed"]
