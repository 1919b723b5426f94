"""Headless Chromium for the demo page's tests: Debian's chromium and chromedriver, driven by Selenium."""

from __future__ import annotations

import base64
import shutil
import socket
import threading
from collections.abc import Callable
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--window-size=1000,1500",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",  # grant the microphone without asking
    "--use-fake-device-for-media-stream",  # a synthetic microphone (a beeping tone)
)


def start_chromium() -> webdriver.Chrome:
    """A headless Chromium that keeps its console log; fails clearly when the browser is missing."""
    binary = shutil.which("chromium") or CHROMIUM
    driver_binary = shutil.which("chromedriver") or CHROMEDRIVER
    options = webdriver.ChromeOptions()
    for flag in FLAGS:
        options.add_argument(flag)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver_binary))


class Page:
    """The demo page in a browser: its state as the page exposes it, and waits on that state."""

    def __init__(self, driver: webdriver.Chrome, url: str):
        self.driver = driver
        self.url = url
        self.console: list[dict[str, Any]] = []

    def open(self, query: str = "") -> None:
        self.driver.get(self.url + query)
        self.wait(lambda: self.state["phase"] not in ("loading", None), "the page to start")

    @property
    def state(self) -> dict[str, Any]:
        value = self.driver.execute_script("return window.indextts ? window.indextts.state : {}")
        assert isinstance(value, dict)
        return value

    def wait(self, condition: Callable[[], object], what: str, timeout: float = 30) -> None:
        """Wait for page state (polled by WebDriver: the browser is another process)."""
        WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            lambda _: condition(), message=f"waiting for {what}; page state: {self.state}"
        )

    def wait_phase(self, *phases: str, timeout: float = 30) -> dict[str, Any]:
        self.wait(lambda: self.state["phase"] in phases, f"phase {phases}", timeout)
        return self.state

    def element(self, element_id: str) -> Any:
        return self.driver.find_element("id", element_id)

    def fill(self, element_id: str, text: str) -> None:
        element = self.element(element_id)
        element.clear()
        element.send_keys(text)

    def click(self, element_id: str) -> None:
        self.element(element_id).click()

    def choose(self, element_id: str, value: str) -> None:
        self.driver.execute_script(
            "const e = document.getElementById(arguments[0]); e.value = arguments[1];"
            "e.dispatchEvent(new Event('change'));",
            element_id,
            value,
        )

    def text(self, element_id: str) -> str:
        return str(self.element(element_id).text)

    def severe_console(self) -> list[str]:
        """Console errors (SEVERE) since the last call."""
        self.console.extend(self.driver.get_log("browser"))  # type: ignore[no-untyped-call]  # selenium leaves it untyped
        severe = [entry["message"] for entry in self.console if entry["level"] == "SEVERE"]
        self.console.clear()
        return severe

    def fetch_bytes(self, url: str) -> bytes:
        """The bytes behind a URL the page can read (a blob: URL, say)."""
        encoded = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(arguments[0]).then(r => r.blob()).then(blob => {"
            "  const reader = new FileReader();"
            "  reader.onload = () => done(reader.result.split(',')[1]);"
            "  reader.readAsDataURL(blob);"
            "}).catch(e => done('error: ' + e));",
            url,
        )
        assert isinstance(encoded, str) and not encoded.startswith("error: "), encoded
        return base64.b64decode(encoded)


class PathProxy:
    """A reverse proxy on one loopback port, as a site would put in front of the server.

    Each connection goes, whole, to ``routes[prefix]`` for the longest prefix its first request's
    path starts with: enough for a page on ``/`` and the WebSocket on ``/ws`` under one origin.
    The bytes are passed through unchanged (WebSocket upgrades included).
    """

    def __init__(self, routes: dict[str, int]):
        self.routes = sorted(routes.items(), key=lambda item: -len(item[0]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paths: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        with client:
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode("latin-1")
            self.paths.append(path)
            port = next(port for prefix, port in self.routes if path.startswith(prefix))
            with socket.create_connection(("127.0.0.1", port)) as upstream:
                upstream.sendall(head)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join()


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass
