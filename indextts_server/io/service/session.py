"""One WebSocket connection's session: its id, its outbox (bounded in messages and bytes), its tasks."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

import msgspec
import trio

from ...core import texts
from ...core.contract.protocol import Reply

log = logging.getLogger("indextts_server")

OUTBOX_SIZE: Final = 1024
"""Messages a session may have waiting to be written before it counts as not reading."""
POLICY_VIOLATION: Final = 1008
CLOSE_GRACE: Final = 10.0
"""Seconds a session closed for not reading has to take the message being written and the close
frame, and a WebSocket peer has to answer a close frame; after that the connection is cut."""

_encoder: Final = msgspec.json.Encoder()


class Close(NamedTuple):
    """Outbox sentinel: close the connection with this code once everything before it is sent."""

    code: int
    reason: str


Outgoing = str | bytes | Close | Reply
"""What an outbox holds: a WebSocket's text and files; an HTTP request's replies as objects."""


def encode(reply: Reply) -> str:
    return _encoder.encode(reply).decode()


class Cutoff(Protocol):
    """How a transport cuts a session's connection: a TCP reset, at once or at a deadline."""

    def at(self, deadline: float) -> None: ...

    def now(self) -> None: ...


class OutboxBudget:
    """The bytes every session's outbox may hold: ``per_session`` each and ``total`` together.

    A message counts from the moment the server hands it over until it has been written to the
    socket, and it counts twice its size: being written, it is held both as the file and as the
    WebSocket frame made of it. ``per_session`` bounds what waits behind the message being
    written and the next one (so a client that reads gets files of any length); ``total`` bounds
    everything, the messages being written included, and is never exceeded.
    """

    def __init__(self, per_session: int, total: int):
        if per_session < 1 or total < 1:
            raise ValueError("outbox bounds must be >= 1 byte")
        self.per_session = per_session
        self.total = total
        self.buffered = 0
        self._sessions: set[Session] = set()

    def join(self, session: Session) -> None:
        self._sessions.add(session)

    def leave(self, session: Session) -> None:
        self._sessions.discard(session)

    def admit(self, session: Session, size: int) -> bool:
        """Whether ``session`` may buffer ``size`` more bytes.

        Past the total, the session holding the most is closed (it may be this one) until the
        message fits: the clients that read are the ones kept.
        """
        if session.behind(size) > self.per_session:
            return False
        while self.buffered + size > self.total:
            holders = [s for s in self._sessions if s.open and s.buffered]
            largest = max(holders, key=lambda s: s.buffered, default=None)
            if largest is None or largest is session or largest.buffered < session.buffered + size:
                return False
            largest.overflow()
        return True


class Session:
    """What the rest of the server knows of a connection.

    ``deliver`` never blocks: the inference task hands a message over and moves on. A client
    that lets ``OUTBOX_SIZE`` messages or its share of the ``budget`` pile up unread is closed
    with 1008 rather than allowed to hold memory or anyone else's work.

    ``open`` is set here only: true from the handshake until the session is closed (``close``,
    ``overflow``, ``drop``) or its connection ends. The inference task reads it between segments
    and stops a task whose session is no longer open; ``close_reason`` is then the text its tasks
    end with.
    """

    def __init__(
        self,
        session_id: str,
        budget: OutboxBudget | None = None,
        *,
        max_messages: int = OUTBOX_SIZE,
        on_overflow: Callable[[Session], None] | None = None,
    ):
        self.session_id = session_id
        self.open = True
        self.overflowed = False
        self.close_reason: str | None = None
        self.tasks: set[str] = set()
        self.last_activity = trio.current_time()
        self.buffered = 0  # the cost of what waits and of what is being written
        self.queued = 0  # the cost of what waits
        self._budget = budget
        self._max_messages = max_messages
        self._outbox: deque[tuple[Outgoing, int]] = deque()
        self._ready = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._cutoff: Cutoff | None = None
        self.on_overflow = on_overflow
        if budget is not None:
            budget.join(self)

    def bind(self, scope: trio.CancelScope, cutoff: Cutoff | None = None) -> None:
        """The scope to cancel when this session must be dropped, and how its connection is cut
        (without one, cutting it is cancelling ``scope``)."""
        self._scope = scope
        self._cutoff = cutoff

    def send(self, reply: Reply) -> None:
        data = _encoder.encode(reply)
        self.deliver(data.decode(), len(data))

    def deliver(self, message: str | bytes, size: int | None = None) -> None:
        """Hand ``message`` (``size`` bytes on the wire) over to be written; never blocks."""
        if not self.open:
            return
        if size is None:
            size = len(message) if isinstance(message, bytes) else len(message.encode())
        cost = 2 * size  # the message, then the frame it is written as
        if len(self._outbox) >= self._max_messages or (
            self._budget is not None and not self._budget.admit(self, cost)
        ):
            self.overflow()
            return
        self._push(message, cost)

    def behind(self, cost: int) -> int:
        """The cost that would wait behind the next message to write, with ``cost`` more queued."""
        front = self._outbox[0][1] if self._outbox else cost
        return self.queued + cost - front

    def _push(self, message: Outgoing, size: int) -> None:
        self._outbox.append((message, size))
        self.queued += size
        self.buffered += size
        if self._budget is not None:
            self._budget.buffered += size
        self._ready.set()

    async def next_message(self) -> tuple[Outgoing, int]:
        """The next message to write and its cost; call ``written(cost)`` once it is out."""
        while not self._outbox:
            self._ready = trio.Event()
            await self._ready.wait()
        message, cost = self._outbox.popleft()
        self.queued -= cost
        return message, cost

    def written(self, cost: int) -> None:
        self.buffered -= cost
        if self._budget is not None:
            self._budget.buffered -= cost

    def close(self, code: int, reason: str) -> None:
        """Close after the messages already handed over have been written."""
        if self.open:
            self._push(Close(code, reason), 0)
        self.open = False

    def overflow(self) -> None:
        """The client is not reading: forget what waits for it, close with 1008, stop its tasks.

        The message being written (if any) may still finish within ``CLOSE_GRACE``, then the
        close frame follows; past that the connection is cut (reset: see `Cutoff`).
        """
        if not self.open:
            return
        log.warning("session %s is not reading (%d bytes unread); closing it", self.session_id, self.buffered)
        self.overflowed = True
        self.close_reason = texts.NOT_READING
        self._forget_queued()
        self.close(POLICY_VIOLATION, texts.CLOSE_NOT_READING)
        self._cut_at(trio.current_time() + CLOSE_GRACE)
        if self.on_overflow is not None:
            self.on_overflow(self)

    def drop(self) -> None:
        """Abandon the connection now, unsent messages and all."""
        self.open = False
        if self._scope is not None:
            self._scope.cancel()

    def abort(self) -> None:
        """Abandon the connection and cut it at once: its peer is gone or does not answer."""
        if self._cutoff is not None:
            self._cutoff.now()
        self.drop()

    def _cut_at(self, deadline: float) -> None:
        if self._cutoff is not None:
            self._cutoff.at(deadline)
        elif self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, deadline)

    def release(self) -> None:
        """The connection is gone: give every byte still buffered back to the budget."""
        self.open = False
        self._forget_queued()
        self.written(self.buffered)
        if self._budget is not None:
            self._budget.leave(self)

    def _forget_queued(self) -> None:
        self._outbox.clear()
        self.written(self.queued)
        self.queued = 0
