"""The client's WebSocket side: speak one request, or ask for a task's status, on the contract."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from .output import AudioOutput
from .progress import Progress

MAX_MESSAGE: Final = 256 << 20
"""Largest reply accepted: a long text's whole WAV can be tens of megabytes."""

Json = dict[str, Any]


class ClientError(Exception):
    """A failure to report as it is (the server's own message where there is one); exit 1."""


class Interrupted(ClientError):
    """The user stopped the task (Ctrl-C); exit 130."""


@asynccontextmanager
async def connect(url: str, token: str | None) -> AsyncIterator[WebSocketConnection]:
    """A connection past the welcome message, or a ``ClientError`` saying why not."""
    headers = [(b"Authorization", f"Bearer {token}".encode())] if token else None
    try:
        async with open_websocket_url(url, extra_headers=headers, max_message_size=MAX_MESSAGE) as ws:
            welcome = _json(await ws.get_message())
            if welcome.get("status") != "success":
                raise ClientError(str(welcome.get("message") or welcome))
            yield ws
    except ConnectionRejected as refused:
        body = (refused.body or b"").decode("utf-8", "replace").strip()
        raise ClientError(f"{url} refused the connection (HTTP {refused.status_code}): {body}") from None
    except HandshakeError as failed:
        cause = failed.__cause__ or failed.__context__
        if isinstance(cause, OSError | trio.TooSlowError):
            raise ClientError(f"cannot connect to {url}: {cause}") from None
        raise ClientError(f"{url}: the WebSocket handshake failed ({cause or failed!r})") from None
    except ConnectionClosed as closed:
        raise ClientError(closed_message(closed)) from None
    except (OSError, trio.TooSlowError) as error:
        raise ClientError(f"cannot connect to {url}: {error}") from None


def closed_message(closed: ConnectionClosed) -> str:
    reason = closed.reason
    if reason is None:
        return "the server closed the connection"
    detail = f": {reason.reason}" if reason.reason else ""
    return f"the server closed the connection ({reason.code} {reason.name}{detail})"


def _json(message: str | bytes) -> Json:
    if isinstance(message, bytes):
        raise ClientError(f"unexpected binary message ({len(message)} bytes) where JSON was due")
    try:
        value = json.loads(message)
    except json.JSONDecodeError:
        raise ClientError(f"the server sent something that is not JSON: {message[:200]!r}") from None
    if not isinstance(value, dict):
        raise ClientError(f"the server sent JSON that is not an object: {message[:200]!r}")
    return value


async def say(
    url: str, token: str | None, request: Json, output: AudioOutput, progress: Progress
) -> list[Json]:
    """Send ``request``, write its audio to ``output`` and report progress until it ends.

    Returns the cues ``end`` listed (with ``timestamps`` in the request; else none). The first
    Ctrl-C asks the server to cancel the task (it stops at its next segment boundary, and its
    final error is reported as ``Interrupted``); a second one gives up at once.
    """
    async with connect(url, token) as ws:
        await ws.send_message(json.dumps(request, ensure_ascii=False))
        speaking = _Speaking(ws, request, output, progress)
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(speaking.cancel_on_interrupt, signals, nursery.cancel_scope)
                try:
                    await speaking.receive()
                except ClientError as error:
                    output.abandon()
                    speaking.failure = error
                nursery.cancel_scope.cancel()
        if speaking.failure is not None:
            raise speaking.failure
        return speaking.cues


class _Speaking:
    """One ``say`` in flight: its replies in order, and the user's Ctrl-C."""

    def __init__(self, ws: WebSocketConnection, request: Json, output: AudioOutput, progress: Progress):
        self.ws = ws
        self.output = output
        self.progress = progress
        self.streamed = bool(request.get("stream"))
        self.raw_pcm = request.get("format") == "pcm"
        self.task_id: str | None = None
        self.cues: list[Json] = []
        self.interrupted = False
        self.failure: ClientError | None = None

    async def cancel_on_interrupt(self, signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for _ in signals:
            if self.interrupted or self.task_id is None:
                self.output.abandon()
                self.failure = Interrupted("interrupted")
                scope.cancel()
                return
            self.interrupted = True
            self.progress.note("cancelling… (Ctrl-C again to quit at once)")
            await self.ws.send_message(json.dumps({"type": "cancel", "task_id": self.task_id}))

    async def receive(self) -> None:
        try:
            while not await self._one(await self.ws.get_message()):
                pass
        except ConnectionClosed as closed:
            raise ClientError(closed_message(closed)) from None

    async def _one(self, message: str | bytes) -> bool:
        """Handle one message; ``True`` once the task has ended well."""
        if isinstance(message, bytes):
            self.output.segment(message)
            if self.streamed:
                rate = self.output.sample_rate
                self.progress.segment(len(message) / 2 / rate if self.raw_pcm else None)
            return False
        reply = _json(message)
        if reply.get("status") == "error":
            if reply.get("task_id") not in (None, self.task_id):
                return False
            text = str(reply.get("message"))
            raise Interrupted(text) if self.interrupted else ClientError(text)
        kind = reply.get("type")
        if kind == "queued" and self.task_id is None:
            self.task_id = str(reply["task_id"])
            self.progress.queued(self.task_id, reply.get("position"))
        elif kind == "start":
            self.output.begin(reply.get("sample_rate"))
            self.progress.started()
        elif kind == "end":
            self.cues = list(reply.get("cues") or [])
            self.output.finish()
            self.progress.finished(
                reply.get("timing"), "stdout" if self.output.to_stdout else self.output.path
            )
            return True
        return False


async def task_status(url: str, token: str | None, task_id: str) -> Json:
    """The server's ``task_status`` reply for ``task_id`` (an error reply raises ``ClientError``)."""
    async with connect(url, token) as ws:
        await ws.send_message(json.dumps({"type": "task_status", "task_id": task_id}))
        reply = _json(await ws.get_message())
    if reply.get("status") == "error":
        raise ClientError(str(reply.get("message")))
    return reply
