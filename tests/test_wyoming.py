"""Home Assistant's Wyoming protocol on ``--wyoming-port``, driven by the ``wyoming`` package's
``AsyncTcpClient`` (what Home Assistant's integration uses), unmodified.

The client is asyncio: each exchange runs on a thread of its own (``asyncio.run``), while the
server runs in the test's Trio loop, so the test can look at its tasks and its engine.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from indextts_server.core import texts
from indextts_server.core import wyoming as protocol
from indextts_server.core.config import ServerConfig
from indextts_server.core.engine import SAMPLE_RATE, Capabilities, Engine, pause_samples
from indextts_server.io.engines.tone import ToneEngine
from indextts_server.io.service.service import Service
from indextts_server.io.transport.wyoming import WyomingTransport

from .conftest import GatedEngine, RecordingEngine, kernel_view, wait_until

T = TypeVar("T")
LONG = " ".join(["word"] * 250) + "."
"""One sentence the tone engine makes in three segments."""
STREAM_DONE = ("synthesize-stopped", "error")


async def on_client(port: int, script: Callable[[AsyncTcpClient], Awaitable[T]]) -> T:
    """Run ``script`` with a client connected to ``port``, on a thread of its own."""

    async def main() -> T:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            return await asyncio.wait_for(script(client), 120)

    return await trio.to_thread.run_sync(asyncio.run, main())


async def exchange(
    port: int, events: Sequence[Event], until: Sequence[str] = ("audio-stop", "error")
) -> list[Event]:
    """Send ``events``, then read until an event of a type in ``until``."""

    async def script(client: AsyncTcpClient) -> list[Event]:
        for event in events:
            await client.write_event(event)
        return await read_until(client, until)

    return await on_client(port, script)


class Wyoming:
    """A service and its Wyoming port, started in the test's nursery."""

    def __init__(self, service: Service, port: int):
        self.service = service
        self.port = port

    async def client(self, script: Callable[[AsyncTcpClient], Awaitable[T]]) -> T:
        return await on_client(self.port, script)

    async def exchange(
        self, events: Sequence[Event], until: Sequence[str] = ("audio-stop", "error")
    ) -> list[Event]:
        return await exchange(self.port, events, until)


async def read_until(client: AsyncTcpClient, until: Sequence[str]) -> list[Event]:
    got: list[Event] = []
    while True:
        event = await client.read_event()
        assert event is not None, f"connection closed after {[e.type for e in got]}"
        got.append(event)
        if event.type in until:
            return got


def types(events: Sequence[Event]) -> list[str]:
    """The event types, runs of ``audio-chunk`` written once."""
    out: list[str] = []
    for event in events:
        if not (event.type == "audio-chunk" and out and out[-1] == "audio-chunk"):
            out.append(event.type)
    return out


def audio(events: Sequence[Event]) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if e.type == "audio-chunk")


def error_text(events: Sequence[Event]) -> str:
    assert events[-1].type == "error", types(events)
    return Error.from_event(events[-1]).text


@pytest.fixture
def start_wyoming(nursery: trio.Nursery, tmp_path: Path) -> Callable[..., Awaitable[Wyoming]]:
    async def start(engine: Engine | None = None, **config: Any) -> Wyoming:
        config.setdefault("voices_dir", str(tmp_path / "voices"))
        service = Service(ServerConfig(host="127.0.0.1", port=0, **config), engine or ToneEngine())
        await nursery.start(service.run)
        transport = WyomingTransport(service, "127.0.0.1", 0)
        port = await nursery.start(transport.run)
        return Wyoming(service, port)

    return start


async def test_describe_lists_one_streaming_tts_program_with_the_voices_and_the_models_languages(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    [event] = await server.exchange([Describe().event()], until=("info",))
    [program] = Info.from_event(event).tts
    assert program.name == "indextts-server"
    assert program.installed and program.supports_synthesize_streaming
    assert [v.name for v in program.voices] == ["default"]
    assert program.voices[0].languages == ["zh", "en", "ja", "es", "ar"]


async def test_synthesize_answers_audio_start_chunks_and_stop_at_the_models_rate(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    events = await server.exchange([Synthesize(text="Hello there, how are you?").event()])
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"]
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (SAMPLE_RATE, 2, 1)
    assert len(audio(events)) > SAMPLE_RATE  # more than half a second of 16-bit samples


async def test_synthesize_sends_a_segments_audio_before_the_next_segment_exists(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = GatedEngine()  # every segment after the first waits for ``release``
    server = await start_wyoming(engine)

    async def script(client: AsyncTcpClient) -> list[Event]:
        await client.write_event(Synthesize(text=LONG).event())
        first = await read_until(client, ("audio-chunk",))
        engine.release()
        return first + await read_until(client, ("audio-stop",))

    events = await server.client(script)
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"]
    assert engine.texts("segment") == [LONG] * 3


async def test_a_stream_speaks_each_sentence_as_it_completes_and_ends_with_synthesize_stopped(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = RecordingEngine(ToneEngine())
    server = await start_wyoming(engine)

    async def script(client: AsyncTcpClient) -> tuple[list[Event], list[Event]]:
        await client.write_event(SynthesizeStart().event())
        for piece in ("Hello", " there. How", " are you"):
            await client.write_event(SynthesizeChunk(text=piece).event())
        first = await read_until(client, ("audio-stop",))  # before the stream is over
        await client.write_event(SynthesizeChunk(text=" today? Fine").event())
        await client.write_event(Synthesize(text="Hello there. How are you today? Fine").event())  # ignored
        await client.write_event(SynthesizeStop().event())
        return first, await read_until(client, STREAM_DONE)

    first, rest = await server.client(script)
    assert types(first) == ["audio-start", "audio-chunk", "audio-stop"]
    assert types(rest) == ["audio-start", "audio-chunk", "audio-stop"] * 2 + ["synthesize-stopped"]
    assert engine.texts("begin") == ["Hello there.", "How are you today?", "Fine"]


async def test_a_stream_with_no_text_ends_with_synthesize_stopped_alone(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    events = await server.exchange([SynthesizeStart().event(), SynthesizeStop().event()], STREAM_DONE)
    assert types(events) == ["synthesize-stopped"]


async def test_an_unknown_voice_is_an_error_and_the_connection_goes_on(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = RecordingEngine(ToneEngine())
    server = await start_wyoming(engine)

    async def script(client: AsyncTcpClient) -> tuple[list[Event], list[Event]]:
        await client.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name="nobody")).event())
        refused = await read_until(client, ("error",))
        await client.write_event(Synthesize(text="Hello.").event())
        return refused, await read_until(client, ("audio-stop",))

    refused, spoken = await server.client(script)
    assert error_text(refused) == texts.unknown_voice("voice", "nobody")
    assert types(spoken) == ["audio-start", "audio-chunk", "audio-stop"]
    assert engine.texts("begin") == ["Hello."]


async def test_a_language_no_model_reads_is_an_error(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    event = Event("synthesize", {"text": "Bonjour.", "voice": {"language": "fr_FR"}})
    assert error_text(await server.exchange([event])) == texts.wyoming_language("fr_FR")


class EnglishOnly(ToneEngine):
    capabilities = Capabilities(model="English-only", langs=("en",))


async def test_a_language_the_loaded_model_cannot_read_is_an_error_before_any_work(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = RecordingEngine(EnglishOnly())
    server = await start_wyoming(engine)
    start = Event("synthesize-start", {"voice": {"language": "zh_CN"}})
    sent = [start, SynthesizeChunk(text="你好。").event(), SynthesizeStop().event()]
    events = await server.exchange(sent, until=("synthesize-stopped",))
    assert types(events) == ["error", "synthesize-stopped"]
    assert Error.from_event(events[0]).text == texts.lang_unsupported("zh", "English-only", "en")
    assert engine.texts("begin") == []


async def test_a_text_format_other_than_text_or_ssml_is_an_error(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    event = Synthesize(text="# Hi", text_format="markdown").event()
    assert error_text(await server.exchange([event])) == texts.wyoming_text_format("markdown")


async def test_ssml_around_plain_text_is_that_text_sample_for_sample(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    plain = await server.exchange([Synthesize(text="一二三。四五六。").event()])
    marked = await server.exchange(
        [Synthesize(text="<speak>一二三。四五六。</speak>", text_format="ssml").event()]
    )
    assert audio(marked) == audio(plain) != b""


async def test_an_ssml_break_is_silence_of_exactly_its_length(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming()
    first = audio(await server.exchange([Synthesize(text="一二三。").event()]))
    second = audio(await server.exchange([Synthesize(text="四五六。").event()]))
    markup = '<speak>一二三。<break time="700ms"/>四五六。</speak>'
    marked = audio(await server.exchange([Synthesize(text=markup, text_format="ssml").event()]))
    assert marked == first + bytes(2 * pause_samples(700)) + second


async def test_a_streamed_ssml_element_spanning_sentences_is_held_until_it_closes(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = RecordingEngine(ToneEngine())
    server = await start_wyoming(engine)
    markup = '<speak><prosody rate="slow">一二三。四五六。</prosody>七八九。</speak>'
    whole = audio(await server.exchange([Synthesize(text=markup, text_format="ssml").event()]))
    sent = [
        SynthesizeStart(text_format="ssml").event(),
        *(
            SynthesizeChunk(text=piece).event()
            for piece in ('<speak><prosody rate="slow">一二三。', "四五六。</prosody>七八九。", "</speak>")
        ),
        SynthesizeStop().event(),
    ]
    streamed = await server.exchange(sent, until=STREAM_DONE)
    assert types(streamed) == ["audio-start", "audio-chunk", "audio-stop", "synthesize-stopped"]
    assert audio(streamed) == whole  # held until every element closed: one task, as whole
    begun = engine.texts("begin")  # the spans, for the whole request and then for the stream
    assert begun[: len(begun) // 2] == begun[len(begun) // 2 :] != []


async def test_malformed_ssml_is_an_error_before_any_work_and_the_connection_goes_on(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = RecordingEngine(ToneEngine())
    server = await start_wyoming(engine)

    async def script(client: AsyncTcpClient) -> tuple[list[Event], list[Event]]:
        await client.write_event(
            Synthesize(text="<speak>你好<break time='1s'></speak>", text_format="ssml").event()
        )
        refused = await read_until(client, ("error",))
        await client.write_event(Synthesize(text="你好。").event())
        return refused, await read_until(client, ("audio-stop",))

    refused, spoken = await server.client(script)
    assert error_text(refused).startswith("text 不是有效的 SSML")
    assert types(spoken) == ["audio-start", "audio-chunk", "audio-stop"]
    assert engine.texts("begin") == ["你好。"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", texts.WYOMING_NOT_EVENT),
        (b'{"data": {}}\n', texts.WYOMING_NOT_EVENT),
        (b'{"type": "synthesize", "data": {"text": 3}}\n', texts.wyoming_field("synthesize", "text")),
        (b'{"type": "synthesize-chunk", "data": {"text": "x"}}\n', texts.WYOMING_CHUNK_WITHOUT_START),
    ],
)
async def test_a_malformed_event_is_an_error_and_the_next_event_is_answered(
    start_wyoming: Callable[..., Awaitable[Wyoming]], line: bytes, message: str
) -> None:
    server = await start_wyoming()
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(line + protocol.event("describe"))
        received = b""
        while b'"info"' not in received:
            received += await stream.receive_some(65536)
        await stream.aclose()
    framing = protocol.Framing(1 << 20)
    framing.feed(received)
    error = framing.next()
    assert error is not None and error.type == "error" and error.data["text"] == message


async def test_an_oversized_event_is_skipped_with_an_error(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    server = await start_wyoming(max_message_bytes=1000)
    big = protocol.event("synthesize", {"text": "x" * 2000})
    events = await server.exchange([Event("raw"), Describe().event()], until=("info",))
    assert types(events) == ["info"]  # an unknown event type is ignored
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stream.send_all(big + protocol.event("describe"))
        received = b""
        while b'"info"' not in received:
            received += await stream.receive_some(65536)
        await stream.aclose()
    assert texts.wyoming_too_large(1000).encode() in received


async def test_a_disconnect_cancels_the_work(start_wyoming: Callable[..., Awaitable[Wyoming]]) -> None:
    engine = GatedEngine()
    server = await start_wyoming(engine)

    async def script(client: AsyncTcpClient) -> list[Event]:
        await client.write_event(Synthesize(text=LONG).event())
        await client.write_event(Synthesize(text="Queued behind it.").event())
        return await read_until(client, ("audio-chunk",))

    await server.client(script)  # then the client is gone
    await wait_until(lambda: not server.service.sessions)
    engine.release()
    board = server.service.board
    await wait_until(lambda: all(t.state in ("cancelled", "failed", "completed") for t in board.registry))
    assert sorted(t.state for t in board.registry) == ["cancelled", "cancelled"]
    assert engine.texts("begin") == [LONG]  # the queued one never started
    assert len(engine.texts("segment")) < 3  # the running one stopped at a segment boundary


async def test_a_client_that_never_reads_is_reset(start_wyoming: Callable[..., Awaitable[Wyoming]]) -> None:
    server = await start_wyoming(ToneEngine(), max_session_buffer=1 << 16)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # before connect: no autotuning
    await sock.connect(("127.0.0.1", server.port))
    stream = trio.SocketStream(sock)
    client_port = sock.getsockname()[1]
    await stream.send_all(protocol.event("synthesize", {"text": LONG}))
    with trio.fail_after(30):
        while kernel_view(server.port, client_port):  # noqa: ASYNC110 - the kernel's tables have no event
            await trio.sleep(0.05)
    with pytest.raises(trio.BrokenResourceError):
        while await stream.receive_some(1 << 20):
            pass
    assert not server.service.sessions


async def test_zeroconf_advertises_the_port_as_wyoming_tcp_until_the_drain() -> None:
    """Multicast on loopback: a browser on 127.0.0.1 resolves what the server announced there."""
    zeroconf = pytest.importorskip("zeroconf")
    from indextts_server.io.operations.discovery import SERVICE_TYPE, advertise

    def resolve(name: str) -> Any:
        browser = zeroconf.Zeroconf(interfaces=["127.0.0.1"])
        try:
            return browser.get_service_info(SERVICE_TYPE, name, timeout=5000)
        finally:
            browser.close()

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        name = await nursery.start(advertise, "127.0.0.1", 10200, stop)
        found = await trio.to_thread.run_sync(resolve, name)
        stop.set()
    assert name.endswith("._wyoming._tcp.local.")
    assert (found.port, found.parsed_addresses()) == (10200, ["127.0.0.1"])


async def test_the_drain_says_so_with_an_error_and_closes_the_connection(
    start_wyoming: Callable[..., Awaitable[Wyoming]], nursery: trio.Nursery
) -> None:
    server = await start_wyoming()

    async def script(client: AsyncTcpClient) -> list[Event | None]:
        await client.write_event(Describe().event())
        got: list[Event | None] = [await client.read_event()]
        trio.from_thread.run_sync(nursery.start_soon, server.service.drain)
        got += [await client.read_event(), await client.read_event()]
        return got

    info, error, closed = await server.client(script)
    assert info is not None and info.type == "info"
    assert error is not None and Error.from_event(error) == Error(texts.SHUTTING_DOWN, "shutting_down")
    assert closed is None


async def test_sentences_past_max_pending_per_session_wait_their_turn_instead_of_being_refused(
    start_wyoming: Callable[..., Awaitable[Wyoming]],
) -> None:
    engine = RecordingEngine(ToneEngine())
    server = await start_wyoming(engine, max_pending_per_session=1)
    sent = [
        SynthesizeStart().event(),
        SynthesizeChunk(text="One. Two. Three.").event(),
        SynthesizeStop().event(),
    ]
    events = await server.exchange(sent, until=STREAM_DONE)
    assert types(events) == ["audio-start", "audio-chunk", "audio-stop"] * 3 + ["synthesize-stopped"]
    assert engine.texts("begin") == ["One.", "Two.", "Three."]
