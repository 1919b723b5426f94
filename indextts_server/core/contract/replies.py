"""Every reply the server sends, built here: the contract's fields, plus what an extended request asked for.

Pure functions from what is known about a task to the message its client reads. A request without
extensions gets exactly the contract's replies; an extended one (see `Delivery.extended`) also gets
the queue position, the audio format and the timing.
"""

from __future__ import annotations

from collections.abc import Sequence

from .. import texts
from ..tasks import Delivery, Task, iso
from .protocol import CancelReply, Cue, CueReply, End, Error, Queued, Start, TaskStatusReply, Timing, Welcome


def welcome(session_id: str) -> Welcome:
    return Welcome(session_id=session_id)


def queued(task_id: str, session_id: str, delivery: Delivery, position: int) -> Queued:
    """``position`` 1 means next to run; only an extended request is told it."""
    reply = Queued(task_id=task_id, session_id=session_id)
    if delivery.extended:
        reply.position = position
    return reply


def start(task_id: str, session_id: str, delivery: Delivery) -> Start:
    reply = Start(task_id=task_id, session_id=session_id)
    if delivery.extended:
        reply.format = delivery.format
        reply.sample_rate = delivery.sample_rate
        reply.stream = delivery.stream
    return reply


def cue(task_id: str, session_id: str, cue: Cue) -> CueReply:
    """A segment's cue, announced before its audio (``timestamps`` only)."""
    return CueReply(
        task_id=task_id,
        session_id=session_id,
        index=cue.index,
        text=cue.text,
        start=cue.start,
        duration=cue.duration,
    )


def end(task_id: str, session_id: str, delivery: Delivery, timing: Timing, cues: Sequence[Cue] = ()) -> End:
    """``cues``: the task's, listed when the request asked for ``timestamps``."""
    reply = End(task_id=task_id, session_id=session_id)
    if delivery.extended:
        reply.timing = timing
    if delivery.timestamps:
        reply.cues = list(cues)
    return reply


def error(session_id: str, message: str, task_id: str | None = None) -> Error:
    """Any error: ``task_id`` is the task's when the error is about one, else ``None``."""
    return Error(task_id=task_id, session_id=session_id, message=message)


def task_status(task: Task, session_id: str) -> TaskStatusReply:
    """A task's state, answered to ``session_id`` (any session may ask about any task)."""
    return TaskStatusReply(
        session_id=session_id,
        task_id=task.task_id,
        status=task.state,
        created_at=iso(task.created_at),
        completed_at=None if task.completed_at is None else iso(task.completed_at),
        error_message=task.error_message,
    )


def cancelled(task_id: str, session_id: str) -> CancelReply:
    """A waiting task was cancelled at once (its final error follows)."""
    return CancelReply(task_id=task_id, session_id=session_id, status="cancelled", message=texts.CANCELLED)


def cancelling(task_id: str, session_id: str) -> CancelReply:
    """A running task will stop at its next segment boundary (its final error follows then)."""
    return CancelReply(task_id=task_id, session_id=session_id, status="cancelling", message=texts.CANCELLING)
