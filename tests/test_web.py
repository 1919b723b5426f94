"""The demo page in a real browser (headless Chromium) against a real tone server."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
from selenium import webdriver

from .browser import Page, start_chromium
from .conftest import REPO, CliServer

WEB = REPO / "indextts_server" / "web"
TWO_SEGMENTS = "今天天气很好，我们一起去散步吧。明天下午我们再去公园看看花。"
LONG = "第一段文字在这里呀呀呀呀。第二段文字在这里呀呀呀呀。第三段文字在这里呀呀呀呀。" * 3


class _Site(http.server.SimpleHTTPRequestHandler):
    """Interim: serves the page's files and its config until the HTTP port exists."""

    ws_port = 0

    def do_GET(self) -> None:
        if self.path == "/web/config.json":
            self._json({"ws_port": self.ws_port, "auth_required": False})
        elif self.path.startswith("/v1/audio/voices"):
            self._json({"voices": []})
        else:
            self.path = "/index.html" if self.path.split("?")[0] == "/" else self.path.removeprefix("/web")
            super().do_GET()

    def _json(self, value: object) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _site(ws_port: int) -> tuple[str, http.server.ThreadingHTTPServer]:
    handler = type("Site", (_Site,), {"ws_port": ws_port})
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(WEB)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{site.server_port}/", site


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def server() -> Iterator[CliServer]:
    running = CliServer(["--engine", "tone", "--port", "0", "--tone-rtf", "0.2"])
    yield running
    running.stop()


@pytest.fixture
def page(browser: webdriver.Chrome, server: CliServer) -> Iterator[Page]:
    url, site = _site(server.port)
    page = Page(browser, url)
    page.open()
    yield page
    site.shutdown()
    assert page.severe_console() == []


def _speak(page: Page, text: str, *, prompt: str = "asset/zero_shot_prompt.wav", max_tokens: int = 20) -> None:
    page.choose("voice", "path:")
    page.fill("prompt-path", prompt)
    page.fill("text", text)
    page.driver.execute_script("document.getElementById('more').open = true")
    page.fill("max-tokens", str(max_tokens))
    page.click("speak")


def test_streams_plays_every_segment_and_offers_the_whole_wav(page: Page, tmp_path: Path) -> None:
    _speak(page, TWO_SEGMENTS)
    state = page.wait_phase("done", "error")
    assert state["phase"] == "done", state
    assert state["error"] is None and state["segmentsReceived"] == 2
    assert state["position"] == 1 and state["taskId"]
    assert set(state["timing"]) == {"queue_wait", "first_audio", "total", "audio_seconds", "rtf"}
    assert abs(state["timing"]["audio_seconds"] - state["audioSeconds"]) < 0.01
    page.wait(lambda: page.state["segmentsPlayed"] == 2, "both segments to play out", timeout=30)
    rows = page.driver.find_elements("css selector", "#segments tbody tr td.playback")
    assert [row.get_attribute("data-state") for row in rows] == ["played", "played"]
    assert "real-time factor" in page.text("timing")
    href = page.element("download").get_attribute("href")
    assert href.startswith("blob:")
    wav = page.fetch_bytes(href)
    pcm, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 22050 and abs(len(pcm) / rate - state["audioSeconds"]) < 0.01
    page.driver.save_screenshot(str(tmp_path / "page.png"))


def test_shows_the_servers_error_as_written_and_stays_usable(page: Page) -> None:
    _speak(page, "你好。", prompt="asset/missing.wav")
    state = page.wait_phase("done", "error")
    assert state["phase"] == "error"
    assert page.text("error") == "prompt_audio 文件不存在: asset/missing.wav"
    _speak(page, "你好。")
    assert page.wait_phase("done", "error")["phase"] == "done"
    assert not page.element("error").is_displayed()


def test_cancel_stops_the_task_and_the_playback(page: Page) -> None:
    _speak(page, LONG)
    page.wait(lambda: page.state["segmentsReceived"] >= 1, "the first segment")
    page.click("cancel")
    state = page.wait_phase("cancelled", "done", "error")
    assert state["phase"] == "cancelled", state
    assert page.text("status") == "任务已取消"
    assert state["segmentsReceived"] < 9 and state["error"] is None
