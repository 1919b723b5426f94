"""The demo page in a real browser (headless Chromium) against a real tone server and its HTTP port."""

from __future__ import annotations

import io
import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
from selenium import webdriver

from indextts_server.core.segment import split_segments

from .browser import Page, PathProxy, start_chromium
from .conftest import PROMPT, REPO, CliServer

TWO_SEGMENTS = "今天天气很好，我们一起去散步吧。明天下午我们再去公园看看花。"
LONG = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。" * 3
TOKEN = "page-token"
SCREENSHOT = os.environ.get("INDEXTTS_SCREENSHOT")
"""Where to copy the page's screenshot (the README's picture is made this way)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    voices = tmp_path_factory.mktemp("voices")
    running = CliServer(["--engine", "tone", "--port", "0", "--tone-rtf", "0.2", "--voices-dir", str(voices)])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    voices = tmp_path_factory.mktemp("guarded-voices")
    running = CliServer(
        ["--engine", "tone", "--port", "0", "--voices-dir", str(voices), "--auth-token", TOKEN]
    )
    yield running
    running.stop()


def _open(browser: webdriver.Chrome, server: CliServer, query: str = "") -> Page:
    page = Page(browser, f"{server.http}/")
    browser.get(page.url)  # on the page's origin first, to forget what an earlier test stored there
    browser.execute_script("localStorage.clear()")
    page.open(query)
    return page


@pytest.fixture
def page(browser: webdriver.Chrome, server: CliServer) -> Iterator[Page]:
    page = _open(browser, server)
    yield page
    assert page.severe_console() == []


def _speak(page: Page, text: str, *, prompt: str | None = None, max_tokens: int = 20) -> None:
    if prompt is not None:
        page.choose("voice", "path:")
        page.fill("prompt-path", prompt)
    page.fill("text", text)
    page.driver.execute_script("document.getElementById('more').open = true")
    page.fill("max-tokens", str(max_tokens))
    page.click("speak")


def _library(server: CliServer, token: str | None = None) -> dict[str, dict[str, object]]:
    request = urllib.request.Request(f"{server.http}/v1/audio/voices")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return {voice["name"]: voice for voice in json.load(response)["voices"]}


def test_the_page_learns_the_websocket_port_and_lists_the_library(page: Page, server: CliServer) -> None:
    assert page.state["config"] == {"ws_port": server.port, "auth_required": False}
    assert page.element("ws-url").get_attribute("placeholder") == f"ws://127.0.0.1:{server.port}/"
    assert [voice["name"] for voice in page.state["voices"]] == list(_library(server))
    assert page.element("voice").get_attribute("value") == "default"


def test_streams_plays_every_segment_and_offers_the_whole_wav(page: Page, tmp_path: Path) -> None:
    _speak(page, TWO_SEGMENTS)
    state = page.wait_phase("done", "error")
    assert state["phase"] == "done", state
    assert state["error"] is None and state["segmentsReceived"] == 2
    assert state["position"] == 1 and state["taskId"]
    assert set(state["timing"]) == {"queue_wait", "first_audio", "total", "audio_seconds", "rtf"}
    assert abs(state["timing"]["audio_seconds"] - state["audioSeconds"]) < 0.01
    page.wait(lambda: page.state["segmentsPlayed"] == 2, "both segments to play out")
    rows = page.driver.find_elements("css selector", "#segments tbody td.playback")
    assert [row.get_attribute("data-state") for row in rows] == ["played", "played"]
    assert "real-time factor" in page.text("timing")
    href = page.element("download").get_attribute("href")
    assert href.startswith("blob:")
    pcm, rate = soundfile.read(io.BytesIO(page.fetch_bytes(href)), dtype="int16")
    assert rate == 22050 and abs(len(pcm) / rate - state["audioSeconds"]) < 0.01
    page.driver.find_element("tag name", "body").screenshot(str(tmp_path / "page.png"))
    if SCREENSHOT:
        shutil.copyfile(tmp_path / "page.png", SCREENSHOT)


def test_the_page_shows_the_text_of_the_segment_playing(page: Page) -> None:
    _speak(page, TWO_SEGMENTS)
    assert page.wait_phase("done", "error")["phase"] == "done"
    page.wait(lambda: page.state["segmentsPlayed"] == 2, "both segments to play out")
    state = page.state
    # Each segment's text appeared when it began to sound, in order, and went when it ended.
    assert state["captions"] == [
        {"segment": index, "text": text}
        for index, text in enumerate(split_segments(TWO_SEGMENTS, 20), start=1)
    ]
    assert state["caption"] == "" and not page.element("caption").is_displayed()
    texts = page.driver.find_elements("css selector", "#segments tbody td.text")
    assert [cell.text for cell in texts] == split_segments(TWO_SEGMENTS, 20)


def test_the_caption_is_the_segment_heard_while_it_plays(page: Page) -> None:
    _speak(page, LONG)
    texts = split_segments(LONG, 20)
    seen: list[tuple[int, str]] = []

    def playing_matches_caption() -> bool:
        # Read the page's playing segment and its caption in one go, as a listener would see them.
        now = page.driver.execute_script(
            "const cell = document.querySelector('#segments td.playback[data-state=\"playing\"]');"
            "return [cell ? Number(cell.parentElement.dataset.index) : 0, document.getElementById('caption').textContent];"
        )
        if now[0]:
            seen.append((now[0], now[1]))
        return bool(page.state["segmentsPlayed"] >= 3)

    page.wait(playing_matches_caption, "three segments to play out")
    assert seen, "no segment was seen playing"
    assert all(caption == texts[index - 1] for index, caption in seen), seen
    assert {index for index, _ in seen} >= {1, 2, 3}


def test_an_uploaded_file_becomes_a_voice_to_speak_with(page: Page, server: CliServer) -> None:
    page.driver.execute_script("document.getElementById('add-voice').open = true")
    page.fill("new-voice-name", "网页_voice")
    page.element("new-voice-file").send_keys(str(REPO / PROMPT))
    page.click("upload")
    page.wait(lambda: page.state["lastUpload"] is not None, "the upload")
    assert page.state["error"] is None
    assert page.element("voice").get_attribute("value") == "网页_voice"
    assert "网页_voice" in _library(server)
    _speak(page, "用上传的声音说话。")
    assert page.wait_phase("done", "error")["phase"] == "done"
    page.click("voice-delete")
    page.wait(lambda: "网页_voice" not in [v["name"] for v in page.state["voices"]], "the voice to go")
    assert "网页_voice" not in _library(server)


def test_a_microphone_recording_is_uploaded_as_wav(page: Page, server: CliServer) -> None:
    page.driver.execute_script("document.getElementById('add-voice').open = true")
    page.fill("new-voice-name", "mic")
    page.click("record")
    page.wait(lambda: page.state["recordingSeconds"] >= 1.5, "1.5 s of recording")
    page.click("record")
    page.wait(lambda: page.state["recordedSeconds"] is not None, "the WAV")
    recorded = page.state["recordedSeconds"]
    assert page.text("record-state").startswith(f"recorded {recorded:.1f} s (WAV, ")
    # At least the 1.5 s counted from the recorder's start; how much longer depends on how soon
    # the stop click lands, which a loaded machine decides.
    assert recorded >= 1.4, recorded
    page.click("upload")
    page.wait(lambda: page.state["lastUpload"] is not None, "the upload")
    assert page.state["error"] is None, page.state["error"]
    assert page.state["lastUpload"]["type"] == "audio/wav"
    # The library holds the recording the page made: its length, resampled to the server's rate.
    assert _library(server)["mic"]["duration"] == pytest.approx(recorded, abs=0.01)
    _speak(page, "麦克风的声音。")
    assert page.wait_phase("done", "error")["phase"] == "done"


def test_shows_the_servers_error_as_written_and_stays_usable(page: Page) -> None:
    _speak(page, "你好。", prompt="asset/missing.wav")
    state = page.wait_phase("done", "error")
    assert state["phase"] == "error"
    assert page.text("error") == "prompt_audio 文件不存在: asset/missing.wav"
    page.choose("voice", "default")
    _speak(page, "你好。")
    assert page.wait_phase("done", "error")["phase"] == "done"
    assert not page.element("error").is_displayed()


def test_an_upload_refused_by_the_server_shows_its_message(page: Page, tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all")
    page.driver.execute_script("document.getElementById('add-voice').open = true")
    page.fill("new-voice-name", "bad")
    page.element("new-voice-file").send_keys(str(not_audio))
    page.click("upload")
    page.wait(lambda: page.state["error"] is not None, "the error")
    assert page.text("error") == "audio_sample 无法解码为音频（支持 wav/flac/mp3/ogg/webm/m4a）"
    # The browser logs the refused request itself (a 400): that, and only that, is expected.
    assert [m for m in page.severe_console() if "v1/audio/voices - Failed to load resource" not in m] == []


def test_cancel_stops_the_task_and_the_playback(page: Page) -> None:
    _speak(page, LONG)
    page.wait(lambda: page.state["segmentsScheduled"] >= 1, "the first segment to be scheduled")
    page.click("cancel")
    state = page.wait_phase("cancelled", "done", "error")
    assert state["phase"] == "cancelled", state
    assert page.text("status") == "任务已取消"
    assert state["error"] is None and state["segmentsReceived"] < 9
    # Whatever was scheduled and had not played out was stopped with the cancel.
    assert state["segmentsStopped"] >= 1
    assert state["segmentsPlayed"] + state["segmentsStopped"] == state["segmentsScheduled"]
    cells = page.driver.find_elements("css selector", "#segments td.playback")
    assert "playing" not in [cell.get_attribute("data-state") for cell in cells]


def test_a_token_protected_server_works_with_the_token(browser: webdriver.Chrome, guarded: CliServer) -> None:
    page = _open(browser, guarded)
    assert page.state["config"]["auth_required"] is True
    assert page.text("connection-hint") == "This server needs a token."
    _speak(page, "你好。")
    assert page.wait_phase("done", "error")["phase"] == "error"
    assert page.text("error").startswith(f"cannot connect to ws://127.0.0.1:{guarded.port}/")
    # The browser reports the refused handshake (401) on its console: expected here.
    assert all("WebSocket connection to" in m for m in page.severe_console())
    page.fill("token", TOKEN)
    page.element("text").click()  # the token field's change event
    page.wait(lambda: [v["name"] for v in page.state["voices"]] == ["default"], "the library, with the token")
    page.choose("voice", "default")
    _speak(page, "你好。")
    state = page.wait_phase("done", "error")
    assert state["phase"] == "done", state
    assert page.severe_console() == []


def test_the_websocket_url_can_be_overridden(browser: webdriver.Chrome, server: CliServer) -> None:
    page = _open(browser, server, f"?ws=ws://localhost:{server.port}/")
    assert page.element("ws-url").get_attribute("value") == f"ws://localhost:{server.port}/"
    _speak(page, "你好。")
    assert page.wait_phase("done", "error")["phase"] == "done"
    assert page.severe_console() == []


def _mode(page: Page, mode: str) -> None:
    page.driver.execute_script(
        "const r = document.querySelector(`input[name=emo-mode][value=${arguments[0]}]`);"
        "r.checked = true; r.dispatchEvent(new Event('change'));",
        mode,
    )


def _slide(page: Page, element_id: str, value: float) -> None:
    page.driver.execute_script(
        "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('input'));",
        element_id,
        str(value),
    )


def test_each_emotion_mode_sends_its_fields(page: Page) -> None:
    expected_common = {
        "type": "tts_stream", "voice": "default", "stream": True, "format": "wav", "details": True, "timestamps": True,
    }  # fmt: skip
    cases: list[tuple[str, dict[str, object]]] = [
        ("none", {"emo_mode": "none"}),
        ("audio", {"emo_mode": "audio", "emo_voice": "default", "emo_alpha": 0.6}),
        ("vector", {"emo_mode": "vector", "emo_vector": [0.8, 0, 0, 0, 0, 0, 0.2, 0]}),
        ("text", {"emo_mode": "text", "emo_text": "有点难过", "emo_alpha": 0.6}),
    ]
    _slide(page, "emo-alpha", 0.6)
    _slide(page, "emo-0", 0.8)
    _slide(page, "emo-6", 0.2)
    for mode, fields in cases:
        _mode(page, mode)
        if mode == "text":
            page.fill("emo-text", "有点难过")
        visible = page.driver.execute_script(
            "return [...document.querySelectorAll('[data-mode]')].filter(e => !e.hidden).map(e => e.dataset.mode)"
        )
        assert all(mode in shown.split() for shown in visible), (mode, visible)
        _speak(page, "情感测试。")
        state = page.wait_phase("done", "error")
        assert state["phase"] == "done", (mode, state["error"])
        sent = state["lastRequest"]
        assert sent == {**expected_common, "text": "情感测试。", "max_tokens": 20, **fields}, mode
    assert page.text("emo-alpha-value") == "0.60"


def test_the_pure_helpers_of_the_page(page: Page) -> None:
    results = page.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all([import('./web/api.js'), import('./web/audio.js')]).then(async ([api, audio]) => {"
        "  const blob = audio.wavBlob([new Uint8Array([1, 0, 255, 127])], 16000);"
        "  const parsed = audio.parseWav(await blob.arrayBuffer());"
        "  let refused = null;"
        "  try { audio.parseWav(new ArrayBuffer(8)); } catch (e) { refused = e.message; }"
        "  done({"
        "    https: api.defaultWebSocketUrl({ws_port: 9}, {protocol: 'https:', hostname: 'tts.example.com'}),"
        "    http: api.defaultWebSocketUrl({ws_port: 8770}, {protocol: 'http:', hostname: '::1'}),"
        "    token: api.withToken('wss://h/ws?x=1', 'a b&c'),"
        "    wav: [blob.size, blob.type, parsed.sampleRate, parsed.channels, Array.from(parsed.pcm)],"
        "    refused,"
        "  });"
        "}).catch(e => done(String(e)));"
    )
    assert results == {
        "https": "wss://tts.example.com:9/",
        "http": "ws://[::1]:8770/",
        "token": "wss://h/ws?x=1&token=a+b%26c",
        "wav": [48, "audio/wav", 16000, 1, [1, 0, 255, 127]],
        "refused": "not a WAV file",
    }


def test_the_websocket_url_follows_the_pages_host(browser: webdriver.Chrome, server: CliServer) -> None:
    page = Page(browser, f"http://localhost:{server.http_port}/")
    page.open()
    assert page.element("ws-url").get_attribute("placeholder") == f"ws://localhost:{server.port}/"
    _speak(page, "你好。")
    assert page.wait_phase("done", "error")["phase"] == "done"
    assert page.severe_console() == []


def test_behind_a_reverse_proxy_with_the_websocket_on_a_path(
    browser: webdriver.Chrome, server: CliServer
) -> None:
    proxy = PathProxy({"/ws": server.port, "/": server.http_port})
    try:
        origin = f"http://127.0.0.1:{proxy.port}"
        page = Page(browser, f"{origin}/")
        page.open(f"?ws=ws://127.0.0.1:{proxy.port}/ws")
        assert [voice["name"] for voice in page.state["voices"]][:1] == ["default"]
        _speak(page, TWO_SEGMENTS)
        state = page.wait_phase("done", "error")
        assert state["phase"] == "done", state
        assert state["segmentsReceived"] == 2
        assert proxy.paths[0].startswith("/?ws=") and "/ws" in proxy.paths  # first request per connection
        assert page.severe_console() == []
        # The override is remembered: the next visit needs no ?ws=.
        page.open()
        assert page.element("ws-url").get_attribute("value") == f"ws://127.0.0.1:{proxy.port}/ws"
    finally:
        proxy.close()
