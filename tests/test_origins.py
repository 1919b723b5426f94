"""Which browser pages may use the server: the one decision on ``Origin`` both ports take (pure)."""

from __future__ import annotations

import pytest

from indextts_server.core.origins import Verdict, judge_origin

HOST = "tts.example:8770"
"""The WebSocket handshake's Host; the server's HTTP port (its page) is 8771."""


@pytest.mark.parametrize(
    ("origin", "verdict"),
    [
        (None, "absent"),
        ("http://tts.example:8770", "own"),
        ("https://tts.example:8770", "own"),
        ("http://tts.example:8771", "own"),
        ("http://TTS.example:8771", "own"),
        ("http://localhost", "loopback"),
        ("https://localhost:3000", "loopback"),
        ("http://127.0.0.1:5173", "loopback"),
        ("http://127.9.9.9", "loopback"),
        ("http://[::1]:8080", "loopback"),
        ("http://tts.example:8772", "foreign"),
        ("http://tts.example", "foreign"),
        ("http://evil.example:8771", "foreign"),
        ("http://localhost.evil.example", "foreign"),
        ("http://127.0.0.1.evil.example", "foreign"),
        ("null", "foreign"),
        ("file://", "foreign"),
        ("chrome-extension://abcdef", "foreign"),
        ("http://tts.example:notaport", "foreign"),
    ],
)
def test_the_verdict_on_an_origin_by_default(origin: str | None, verdict: Verdict) -> None:
    assert judge_origin(origin, HOST, (), page_ports=(8771,)) == verdict


def test_the_default_port_of_the_scheme_counts_as_named() -> None:
    assert judge_origin("https://tts.example", "tts.example", ()) == "own"
    assert judge_origin("https://tts.example:443", "tts.example", ()) == "own"
    assert judge_origin("http://tts.example", "tts.example:443", ()) == "foreign"


def test_allow_origin_lets_exactly_the_listed_origins_in() -> None:
    allowed = ("https://app.example", "null")
    assert judge_origin("https://app.example", HOST, allowed) == "listed"
    assert judge_origin("null", HOST, allowed) == "listed"
    assert judge_origin("https://app.example:8443", HOST, allowed) == "foreign"
    assert judge_origin("http://app.example", HOST, allowed) == "foreign"


def test_allow_origin_star_lets_every_origin_in() -> None:
    for origin in ("https://evil.example", "null", "http://localhost"):
        assert judge_origin(origin, HOST, ("*",)) == "listed"
    assert judge_origin(None, HOST, ("*",)) == "absent"
