"""The floor: the server's frames on the same transport, with no validation, no queue and no engine."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import uuid
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer, serve_websocket

from ...core.contract.protocol import End, Error, Queued, Start, Welcome
from ...io.audio.encoding import wav_bytes
from ...io.service.session import encode
from ...io.transport.websocket import endpoint_url

log = logging.getLogger("indextts_server.bench.drive.floor")

WAV_HEADER_BYTES = 44
UNKNOWN_REQUEST = "floor: no prepared reply for this request"


def replies_from_sizes(sizes: Mapping[str, int]) -> dict[str, bytes]:
    """One WAV per distinct size (silence: the transport does not look inside), shared by frames."""
    wavs = {
        size: wav_bytes(np.zeros(max(0, size - WAV_HEADER_BYTES) // 2, np.int16))
        for size in set(sizes.values())
    }
    return {frame: wavs[size] for frame, size in sizes.items()}


class Floor:
    """Answers each text frame at once with queued, start, its prepared binary, and end.

    ``replies`` maps a request frame, exactly as the load generator sends it, to the audio the
    server would send for it; lookups are the only work done per request. The server's own
    encoder builds the JSON, so every frame is byte-for-byte the shape a client gets.
    """

    def __init__(self, replies: Mapping[str, bytes], *, max_message_bytes: int = 1 << 20):
        self.replies = replies
        self.max_message_bytes = max_message_bytes

    async def run(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            server: WebSocketServer = await nursery.start(
                partial(
                    serve_websocket,
                    self._serve_connection,
                    host,
                    port,
                    None,
                    max_message_size=self.max_message_bytes,
                )
            )
            for endpoint in server.listeners:
                log.info("listening on %s (floor)", endpoint_url(endpoint))
            task_status.started(server)

    async def _serve_connection(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        session_id = str(uuid.uuid4())
        try:
            await ws.send_message(encode(Welcome(session_id=session_id)))
            while True:
                frame = await ws.get_message()
                task_id = str(uuid.uuid4())
                audio = self.replies.get(frame) if isinstance(frame, str) else None
                if audio is None:
                    reply = Error(task_id=None, session_id=session_id, message=UNKNOWN_REQUEST)
                    await ws.send_message(encode(reply))
                    continue
                await ws.send_message(encode(Queued(task_id=task_id, session_id=session_id)))
                await ws.send_message(encode(Start(task_id=task_id, session_id=session_id)))
                await ws.send_message(audio)
                await ws.send_message(encode(End(task_id=task_id, session_id=session_id)))
        except ConnectionClosed:
            return


async def _serve_until_signal(floor: Floor, host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(floor.run, host, port)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m indextts_server.bench.drive.floor",
        description="the benchmark's floor server: protocol frames with no validation, queue or engine",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--sizes", type=Path, required=True, help="JSON object: request frame -> reply bytes")
    p.add_argument("--max-message-bytes", type=int, default=1 << 20)
    args = p.parse_args(argv)
    logging.basicConfig(
        level="INFO", stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sizes = json.loads(args.sizes.read_text(encoding="utf-8"))
    floor = Floor(replies_from_sizes(sizes), max_message_bytes=args.max_message_bytes)
    trio.run(_serve_until_signal, floor, args.host, args.port)


if __name__ == "__main__":
    main()
