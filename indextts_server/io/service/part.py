"""One sentence of a longer utterance as its own task: its replies and samples held in order."""

from __future__ import annotations

import math

import trio

from ...core.contract.protocol import End, Error, Reply


class Part:
    """One committed sentence's task, as scheduling sees its session (a `Recipient`).

    Transports that speak text as it is written (voice agents, Wyoming's streaming) submit each
    sentence as a task of its own and play the tasks in the order they were committed, whatever
    order the engine finishes them in: a task's replies and samples wait in ``events`` until its
    player takes them. ``open`` is the subclass's: a task whose part closes stops at its next
    segment boundary. ``finished`` is called once its task has ended (``end`` or ``error``).
    """

    def __init__(self, session_id: str, text: str):
        self.session_id = session_id
        self.text = text
        self.tasks: set[str] = set()
        self.close_reason: str | None = None
        self.task_id: str | None = None
        self._send, self.events = trio.open_memory_channel[Reply | bytes](math.inf)

    open: bool

    def send(self, reply: Reply) -> None:
        self._send.send_nowait(reply)
        if isinstance(reply, (End, Error)):
            self.finished()

    def deliver(self, message: str | bytes, size: int | None = None) -> None:
        if isinstance(message, bytes):
            self._send.send_nowait(message)

    def finished(self) -> None:
        """Its task has ended: room for another (``--max-pending-per-session``)."""
