"""The inference worker: takes tasks from the global FIFO and runs them, up to ``--batch-size``
together, on its engine (`runner.TaskRunner`), telling the board and each task's session.

Theory of operation: who may change what.

- ``Task.state`` moves only through ``TaskBoard.move`` (one log line, the metrics, the state
  table's check). Waiting tasks are moved by the board (cancel, disconnect, drain); a task a
  worker has taken is moved only by that worker: to ``running`` when it joins, then to its final
  state.
- A task joins when a slot is free and its session has no other task running, on this worker or
  another (several engines): binary frames carry no task id, so one connection's tasks run one
  after another, while other sessions' tasks fill the batch meanwhile. Tasks taken from the FIFO
  whose session is busy are held, in queue order, among the board's waiting tickets (``queued``
  positions count them); a worker holding tasks wakes on every board change, since the task
  their session waits on may end on another engine. ``start`` goes out in queue order among the
  tasks that may start.
- ``Task.stop_reason`` is set by the transport (a client's ``cancel``) and by the drain
  (``InferenceWorker.stop``); it is read only by the worker, between segments. Once set it is
  never cleared or replaced, and it becomes the task's final error message.
- ``Recipient.open`` is cleared only by the session itself (closed, overflowed, dropped, or its
  connection gone). The worker reads it between segments: a task whose session is closed stops
  there, ending ``cancelled`` with the session's ``close_reason`` (or "disconnected").
- ``--task-timeout`` and ``InferenceWorker.abort`` (the drain, once a stop did not take) end a
  task at once; `runner` says what becomes of the engine call in progress.
"""

from __future__ import annotations

import trio

from ...core import texts
from ...core.contract import replies
from ...core.contract.protocol import Cue
from ...core.engine import Engine
from .board import TaskBoard, Ticket
from .runner import Ending, Row, TaskRunner


class BoardSink:
    """A local task's events: its state on the board, its replies and audio to its session."""

    def __init__(self, board: TaskBoard, ticket: Ticket):
        self.board = board
        self.ticket = ticket
        task, session = ticket
        self.label = f"session={session.session_id} task={task.task_id}"

    def stopped(self) -> str | None:
        task, session = self.ticket
        if task.stop_reason is not None:
            return task.stop_reason
        if not session.open:
            return session.close_reason or texts.DISCONNECTED
        return None

    async def cue(self, cue: Cue) -> bool:
        task, session = self.ticket
        task.cues.append(cue)
        if task.delivery.timestamps:
            session.send(replies.cue(task.task_id, session.session_id, cue))
        return True

    async def audio(self, data: bytes, *, last: bool) -> bool:
        task, session = self.ticket
        if task.first_audio_at is None:
            task.first_audio_at = trio.current_time()
        session.deliver(data, len(data))
        return True

    async def end(self, samples: int, compute: float) -> None:
        task, session = self.ticket
        self.board.move(task, "completed", session, samples=samples, compute=compute)
        timing = task.timing(samples, compute)
        session.send(replies.end(task.task_id, session.session_id, task.delivery, timing, task.cues))

    async def fail(self, state: Ending, reason: str, *, engine_error: bool = False) -> None:
        task, session = self.ticket
        self.board.move(task, state, session, reason, engine_error=engine_error)
        session.send(replies.error(session.session_id, reason, task.task_id))


class InferenceWorker(TaskRunner[BoardSink]):
    """Runs up to ``batch_size`` tasks together (1: one at a time, the contract's way), joining
    them in queue order, one per session at a time."""

    def __init__(
        self,
        engine: Engine,
        board: TaskBoard,
        receive: trio.MemoryReceiveChannel[Ticket],
        *,
        batch_size: int = 1,
        task_timeout: float = 0.0,
        name: str = "worker-0",
    ):
        super().__init__(engine, batch_size=batch_size, task_timeout=task_timeout, name=name)
        self.board = board
        self.receive = receive
        self.held: list[Ticket] = []  # taken from the FIFO, waiting for their session's running task

    @property
    def tasks(self) -> list[Ticket]:
        """The running tasks (not yet in a final state)."""
        return [row.sink.ticket for row in self.live]

    def stop(self, reason: str) -> None:
        """Ask every running task to stop at its next segment boundary with ``reason``."""
        for task, _ in self.tasks:
            if task.stop_reason is None:
                task.stop_reason = reason

    async def _serve(self) -> None:
        async with self.receive:
            await super()._serve()

    async def _take(self, *, wait: bool, bulk: bool = True) -> Row[BoardSink] | None:
        while True:
            ticket = self._urgent() or (self._startable() if bulk else None)
            if ticket is None:
                if not bulk:
                    raise trio.WouldBlock  # only a realtime task may join now, and none waits
                if not wait:
                    ticket = self.receive.receive_nowait()  # WouldBlock, EndOfChannel: the caller's
                else:
                    ticket = await self._next_or_change()
                    if ticket is None:
                        continue  # a task ended somewhere: a held one may start now
                if ticket.task.state != "pending":
                    continue  # cancelled while it waited, or a realtime task started already
                if ticket.task.delivery.realtime:
                    continue  # it is in the realtime lane too: taken from there, when there is room
                if self._running(ticket) or any(held.session is ticket.session for held in self.held):
                    self.held.append(ticket)
                    continue
            task, session = ticket
            self.board.move(task, "running", session)
            session.send(replies.start(task.task_id, session.session_id, task.delivery))
            sink = BoardSink(self.board, ticket)
            return self._row(task.job, task.delivery, sink, urgent=task.delivery.realtime)

    def _urgent(self) -> Ticket | None:
        """The first waiting realtime task, while the realtime lane has room (see `runner`)."""
        if sum(row.urgent for row in self.rows) >= self.batch_size:
            return None
        return self.board.next_urgent()

    async def _next_or_change(self) -> Ticket | None:
        """The next ticket from the FIFO; with tickets held, ``None`` as soon as the board changes
        (the task their session was running may have ended, on this engine or another).

        Raises ``trio.EndOfChannel`` once the FIFO is closed and nothing is held.
        """
        changed = self.board.changed
        if not self.held:
            return await self.receive.receive()
        ended = False
        ticket: Ticket | None = None
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                await changed.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                ticket = await self.receive.receive()
            except trio.EndOfChannel:
                ended = True  # held tickets still start once their sessions' tasks end
            if not ended:
                nursery.cancel_scope.cancel()
        if ended:
            await changed.wait()
        return ticket

    def _running(self, ticket: Ticket) -> bool:
        """Whether the ticket's session has a task running, on this engine or another."""
        registry = self.board.registry
        for task_id in ticket.session.tasks:
            task = registry.get(task_id)
            if task is not None and task.state == "running":
                return True
        return False

    def _startable(self) -> Ticket | None:
        """The first held task that may start now (its session has none running or held before it)."""
        if not self.held:
            return None
        self.held = [ticket for ticket in self.held if ticket.task.state == "pending"]
        waiting: set[int] = set()  # sessions with a task held before
        for index, ticket in enumerate(self.held):
            session = ticket.session
            if id(session) not in waiting and not self._running(ticket):
                return self.held.pop(index)
            waiting.add(id(session))
        return None
