"""The HTTP port end to end: the official openai SDK against the tone engine, the page, auth and CORS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import Running, StartServer, upgrade


async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    def run() -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.request(method, url, **kwargs)

    return await trio.to_thread.run_sync(run)


@pytest.fixture
async def api(start_http: StartServer) -> Running:
    return await start_http()


# --- the demo page --------------------------------------------------------------------------------


@pytest.fixture
def web(api: Running, tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>IndexTTS</title>")
    (root / "app.js").write_text("console.log(1)")
    (root / "style.css").write_text("body{}")
    (root / "sub" / "x.svg").write_text("<svg/>")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    assert api.app is not None
    api.app.web_root = root
    return root


@pytest.mark.parametrize(
    ("path", "content_type", "body"),
    [
        ("/", "text/html; charset=utf-8", "<!doctype html><title>IndexTTS</title>"),
        ("/web/index.html", "text/html; charset=utf-8", "<!doctype html><title>IndexTTS</title>"),
        ("/web/app.js", "text/javascript; charset=utf-8", "console.log(1)"),
        ("/web/style.css", "text/css; charset=utf-8", "body{}"),
        ("/web/sub/x.svg", "image/svg+xml", "<svg/>"),
    ],
)
async def test_the_page_and_its_files_are_served_with_their_types(
    api: Running, web: Path, path: str, content_type: str, body: str
) -> None:
    reply = await call("GET", api.http + path)
    assert (reply.status_code, reply.headers["content-type"], reply.text) == (200, content_type, body)


@pytest.mark.parametrize(
    "path",
    [
        # httpx sends these as written; a literal ``..`` it would resolve first is sent raw below.
        "/web/%2e%2e/secret.txt",
        "/web/..%2fsecret.txt",
        "/web/",
        "/web/sub",
        "/web/nope.js",
        "/secret.txt",
        "/web/.hidden",
    ],
)
async def test_nothing_outside_the_web_folder_is_served(api: Running, web: Path, path: str) -> None:
    reply = await call("GET", api.http + path)
    assert reply.status_code == 404
    assert "TOP-SECRET-CONTENT" not in reply.text


async def test_without_a_page_the_root_is_404(api: Running, tmp_path: Path) -> None:
    assert api.app is not None
    api.app.web_root = tmp_path / "nothing"
    assert (await call("GET", api.http + "/")).status_code == 404


# --- auth and CORS --------------------------------------------------------------------------------


async def test_the_api_asks_for_the_servers_token(start_http: StartServer) -> None:
    api = await start_http(auth_token="s3cret")
    reply = await call("GET", f"{api.http}/v1/audio/voices")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"] == "Bearer"
    assert reply.json() == {
        "error": {
            "message": "缺少或错误的令牌：请发送 Authorization: Bearer <token>",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    wrong = await call("GET", f"{api.http}/v1/audio/voices", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    right = await call("GET", f"{api.http}/v1/audio/voices", headers={"Authorization": "Bearer s3cret"})
    assert right.status_code == 200
    assert (await call("GET", f"{api.http}/v1/models?token=s3cret")).status_code == 200
    assert (await call("GET", f"{api.http}/healthz")).status_code == 200  # operations stay open


LISTS = ("/v1/audio/voices", "/v1/audio/models", "/v1/models")
"""What Open WebUI reads without a token."""


async def test_the_voice_and_model_lists_need_the_token_by_default(start_http: StartServer) -> None:
    api = await start_http(auth_token="s3cret")
    for path in LISTS:
        assert (await call("GET", f"{api.http}{path}")).status_code == 401, path


async def test_public_voice_list_opens_the_lists_and_nothing_else(start_http: StartServer) -> None:
    api = await start_http(auth_token="s3cret", public_voice_list=True)
    voices = await call("GET", f"{api.http}/v1/audio/voices")
    assert voices.status_code == 200
    assert [voice["id"] for voice in voices.json()["voices"]] == ["default"]
    models = await call("GET", f"{api.http}/v1/audio/models")
    assert models.status_code == 200 and "indextts2" in [model["id"] for model in models.json()["models"]]
    assert (await call("GET", f"{api.http}/v1/models")).status_code == 200
    assert (await call("HEAD", f"{api.http}/v1/audio/voices")).status_code == 200
    # Changing the library, speaking and the tasks still need it.
    for method, path in (
        ("POST", "/v1/audio/voices"),
        ("DELETE", "/v1/audio/voices/default"),
        ("POST", "/v1/audio/speech"),
        ("GET", "/v1/tasks/x"),
    ):
        assert (await call(method, f"{api.http}{path}", json={"input": "你好"})).status_code == 401, path


async def test_a_websocket_handshake_on_the_http_port_gets_404(api: Running) -> None:
    for path in ("/", "/v1/audio/speech", "/no/such/path"):
        stream = await trio.open_tcp_stream("127.0.0.1", api.http_port)
        with trio.fail_after(10):
            response = await upgrade(stream, api.http_port, path)
            while not response.endswith(b"}"):
                response += await stream.receive_some(4096)
        await stream.aclose()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404 "), head
        assert json.loads(body)["error"]["code"] == "not_found"
        assert json.loads(body)["error"]["message"] == f"接口不存在: {path}"


async def test_a_foreign_origin_is_refused_and_a_same_origin_page_is_not(api: Running) -> None:
    foreign = await call("GET", f"{api.http}/v1/audio/voices", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in foreign.headers
    same = await call("GET", f"{api.http}/v1/audio/voices", headers={"Origin": api.http})
    assert same.status_code == 200


async def test_a_loopback_page_is_let_in_with_cors_headers(api: Running) -> None:
    for origin in ("http://localhost:3000", "http://[::1]:5173"):
        reply = await call("GET", f"{api.http}/v1/audio/voices", headers={"Origin": origin})
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == origin
    same = await call("GET", f"{api.http}/v1/audio/voices", headers={"Origin": api.http})
    assert "access-control-allow-origin" not in same.headers  # its own page needs none


async def test_a_listed_origin_gets_cors_headers_and_its_preflight(start_http: StartServer) -> None:
    api = await start_http(allowed_origins=("http://app.example",))
    headers = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    preflight = await call("OPTIONS", f"{api.http}/v1/audio/speech", headers=headers)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Authorization" in preflight.headers["access-control-allow-headers"]
    reply = await call("GET", f"{api.http}/v1/models", headers={"Origin": "http://app.example"})
    assert reply.headers["access-control-allow-origin"] == "http://app.example"
    assert "X-Task-Id" in reply.headers["access-control-expose-headers"]


async def test_allow_origin_star_lets_any_origin_in_with_cors_headers(start_http: StartServer) -> None:
    api = await start_http(allowed_origins=("*",))
    for origin in ("http://app.example", "https://elsewhere.example:8443"):
        reply = await call("GET", f"{api.http}/v1/audio/voices", headers={"Origin": origin})
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == origin


# --- models and unknown paths ---------------------------------------------------------------------


async def test_models_list_indextts2_and_the_openai_aliases(api: Running) -> None:
    for path in ("/v1/models", "/v1/audio/models"):
        body = (await call("GET", api.http + path)).json()
        ids = ["indextts2", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
        assert [m["id"] for m in body["data"]] == ids
        assert [m["id"] for m in body["models"]] == ids


async def test_an_unknown_api_path_and_a_wrong_method_are_openai_errors(api: Running) -> None:
    reply = await call("GET", f"{api.http}/v1/nope")
    assert (reply.status_code, reply.json()["error"]["code"]) == (404, "not_found")
    reply = await call("GET", f"{api.http}/v1/audio/speech")
    assert (reply.status_code, reply.headers["allow"]) == (405, "POST")


@pytest.mark.parametrize(
    "target",
    [
        "/web/../secret.txt",
        "/web/sub/../../secret.txt",
        "/web/%2e%2e/secret.txt",
        "/web/..%2fsecret.txt",
        "/web/..%5csecret.txt",
        "/web/%2e%2e%2fsecret.txt",
    ],
)
async def test_a_raw_traversal_is_404_too(api: Running, web: Path, target: str) -> None:
    from .test_http_ops import exchange

    raw = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    reply = await exchange(api.http_port, raw)
    assert reply.status == 404
    assert b"TOP-SECRET-CONTENT" not in reply.body
