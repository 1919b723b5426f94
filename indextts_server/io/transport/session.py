"""One WebSocket connection's session: its id, its outbox, and the tasks it has in flight."""

from __future__ import annotations

import logging
from typing import Final, NamedTuple

import msgspec
import trio

from ...core.protocol import Reply

log = logging.getLogger("indextts_server")

OUTBOX_SIZE: Final = 1024
"""Messages a session may have waiting to be written before it counts as not reading."""

_encoder: Final = msgspec.json.Encoder()


class Close(NamedTuple):
    """Outbox sentinel: close the connection with this code once everything before it is sent."""

    code: int
    reason: str


Outgoing = str | bytes | Close


def encode(reply: Reply) -> str:
    return _encoder.encode(reply).decode()


class Session:
    """What the rest of the server knows of a connection.

    ``deliver`` never blocks: the inference task hands a message over and moves on. A client
    that lets ``OUTBOX_SIZE`` messages pile up is disconnected rather than allowed to hold
    memory or anyone else's work.
    """

    def __init__(self, session_id: str, outbox: trio.MemorySendChannel[Outgoing]):
        self.session_id = session_id
        self.open = True
        self.overflowed = False
        self.tasks: set[str] = set()
        self.last_activity = trio.current_time()
        self._outbox = outbox
        self._scope: trio.CancelScope | None = None

    def bind(self, scope: trio.CancelScope) -> None:
        """The scope to cancel when this session must be dropped."""
        self._scope = scope

    def send(self, reply: Reply) -> None:
        self.deliver(encode(reply))

    def deliver(self, message: Outgoing) -> None:
        if not self.open:
            return
        try:
            self._outbox.send_nowait(message)
        except trio.WouldBlock:
            log.warning("session %s is not reading; disconnecting it", self.session_id)
            self.overflowed = True
            self.drop()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.drop()

    def close(self, code: int, reason: str) -> None:
        """Close after the messages already handed over have been written."""
        self.deliver(Close(code, reason))
        self.open = False

    def drop(self) -> None:
        """Abandon the connection now, unsent messages and all."""
        self.open = False
        if self._scope is not None:
            self._scope.cancel()
