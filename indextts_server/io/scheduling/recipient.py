"""What scheduling delivers a task's replies and audio to: a session, whichever transport holds it."""

from __future__ import annotations

from typing import Protocol

from ...core.contract.protocol import Reply


class Recipient(Protocol):
    """The session a task belongs to, as scheduling sees it.

    A WebSocket connection and one HTTP request are both sessions (`service.session.Session`);
    scheduling needs no more of them than this: where replies and audio go, which tasks are the
    session's, and whether it still listens (a task whose session closed stops at its next
    segment, ending with ``close_reason``).
    """

    session_id: str
    tasks: set[str]
    open: bool
    close_reason: str | None

    def send(self, reply: Reply) -> None:
        """Queue a reply (JSON) for the session."""
        ...

    def deliver(self, message: str | bytes, size: int | None = None) -> None:
        """Queue audio (a file, or an encoded reply carrying it), counted as ``size`` bytes."""
        ...
