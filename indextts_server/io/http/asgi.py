"""Just enough ASGI: a request read with a size limit, whole or streamed responses, a refused WebSocket."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qs, unquote

import msgspec
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
)

from ...core.openai import ApiError, error_body

JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"

Headers = Iterable[tuple[str, str]]

_encoder: Final = msgspec.json.Encoder()


async def serve_lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Answer the server's lifespan messages: nothing to set up, nothing to tear down."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class BodyTooLarge(Exception):
    """The request body is larger than the route accepts."""


class Request:
    """One HTTP request: its scope, and its body read on demand."""

    def __init__(self, scope: HTTPScope, receive: ASGIReceiveCallable):
        self.scope = scope
        self.receive = receive
        self.method = scope["method"]
        # The raw path, split before percent-decoding, so an encoded "/" stays inside its segment.
        raw = scope.get("raw_path") or scope["path"].encode()
        self.segments = [
            unquote(part.decode("latin-1"), errors="strict") for part in raw.split(b"?")[0].split(b"/")
        ]
        self.path = scope["path"]
        self.headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        self.query = parse_qs(scope["query_string"].decode("latin-1"))

    async def body(self, limit: int) -> bytes:
        """The whole body; `BodyTooLarge` as soon as it is known to exceed ``limit`` bytes."""
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            if message["type"] != "http.request":
                continue
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)


def encode_json(value: object) -> bytes:
    return _encoder.encode(value)


def head(status: int, content_type: str | None, headers: Headers = ()) -> HTTPResponseStartEvent:
    """A response's start: its status and headers."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if content_type is not None:
        raw.append((b"content-type", content_type.encode("latin-1")))
    return {"type": "http.response.start", "status": status, "headers": raw, "trailers": False}


def chunk(data: bytes, *, more: bool) -> HTTPResponseBodyEvent:
    """A piece of a response's body; the last has ``more`` false."""
    return {"type": "http.response.body", "body": data, "more_body": more}


async def start(send: ASGISendCallable, status: int, content_type: str | None, headers: Headers = ()) -> None:
    await send(head(status, content_type, headers))


async def body(send: ASGISendCallable, data: bytes, *, more: bool) -> None:
    await send(chunk(data, more=more))


async def respond(
    send: ASGISendCallable,
    status: int,
    data: bytes,
    content_type: str | None = TEXT,
    headers: Headers = (),
) -> None:
    """A whole response, with its length."""
    await start(send, status, content_type, [*headers, ("content-length", str(len(data)))])
    await body(send, data, more=False)


async def respond_json(send: ASGISendCallable, status: int, value: object, headers: Headers = ()) -> None:
    await respond(send, status, encode_json(value), JSON, headers)


async def respond_error(send: ASGISendCallable, error: ApiError, headers: Headers = ()) -> None:
    await respond_json(send, error.status, error_body(error), [*headers, *error.headers])


async def refuse_websocket(receive: ASGIReceiveCallable, send: ASGISendCallable, error: ApiError) -> None:
    """Answer a WebSocket handshake with ``error`` as an HTTP response (ASGI's denial response)."""
    await receive()  # websocket.connect
    data = encode_json(error_body(error))
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(data)).encode())]
    await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": data, "more_body": False})
