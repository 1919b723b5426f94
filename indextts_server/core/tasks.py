"""The task registry: every task's state, its legal transitions, and how long it is kept.

Theory of operation: the state table, and who moves a task along it.

    pending ──▶ running ──▶ completed   the last segment's audio went out, then ``end``
       │           ├──────▶ failed      engine error, ``--task-timeout``, the drain's abort,
       │           │                    (cluster) a lost worker past its deliveries, a lost broker
       │           └──────▶ cancelled   stopped between segments: cancel, session closed, drain
       ├──────────────────▶ cancelled   never ran: cancel, session closed, drain
       └──────────────────▶ failed      (cluster) never ran: the broker lost it, the gateway's drain

- Every change of ``Task.state`` goes through `transition`, which checks the edge against
  ``TRANSITIONS`` (a missing edge is a bug: `InvalidTransition`) and sets the times that go with it
  (``started_at`` on ``running``; ``finished_at``, ``completed_at`` and ``error_message`` on a
  final state). Nothing else writes ``state``.
- The embedded board moves its tasks with `TaskRegistry.move` (`transition`, then the finished
  task is kept ``ttl`` seconds): waiting tasks by the board (cancel, disconnect, drain), a task a
  worker has taken only by that worker (`io.scheduling.worker`).
- A cluster gateway moves the tasks it admitted with `transition` as its workers' replies arrive
  (`io.scheduling.broker.gateway`); the broker keeps the fleet's record of each task. A
  ``completed`` whose ``start`` never reached the gateway passes through ``running`` first.
- A final state is final: its task is never moved again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Final

import msgspec

from .contract.protocol import AudioFormat, Cue, TaskState, Timing
from .engine import SAMPLE_RATE, SynthesisJob

TRANSITIONS: Final[dict[TaskState, frozenset[TaskState]]] = {
    "pending": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}
FINISHED: Final[frozenset[TaskState]] = frozenset({"completed", "failed", "cancelled"})


class InvalidTransition(Exception):
    """A task was moved along an edge the state table does not have (a bug, never client input)."""


def transition(task: Task, state: TaskState, *, wall: datetime, now: float, error: str | None = None) -> None:
    """Move ``task`` to ``state`` along the table, with its times: ``wall`` for the timestamps
    clients see, ``now`` (monotonic seconds) for the timings and retention."""
    if state not in TRANSITIONS[task.state]:
        raise InvalidTransition(f"{task.task_id}: {task.state} -> {state}")
    task.state = state
    if state == "running":
        task.started_at = now
    if state in FINISHED:
        task.completed_at = wall
        task.error_message = error
        task.finished_at = now


def iso(moment: datetime) -> str:
    """The contract's timestamp format: ISO 8601, always with microseconds."""
    return moment.isoformat(timespec="microseconds")


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """How a task's audio and replies go out: the opt-in extensions of its request.

    ``sample_rate`` is the rate of the audio the worker hands over (resampled from the engine's);
    ``speed`` is a tempo change the transport applies after that (the HTTP API's ``speed``): the
    worker only divides its cue times by it. ``timestamps`` sends a cue before each segment.
    """

    stream: bool = False
    format: AudioFormat = "wav"
    extended: bool = False
    sample_rate: int = SAMPLE_RATE
    timestamps: bool = False
    speed: float = 1.0
    realtime: bool = False
    """Someone waits on this audio as it is spoken (a voice agent's sentence): the task goes ahead of
    bulk work at the next segment boundary (see `io.scheduling.runner`). In cluster mode it queues
    in the fleet's FIFO like any other."""


CONTRACT_DELIVERY: Final = Delivery()
"""A request without extensions: one WAV, the contract's replies."""


class Task:
    """One accepted ``tts_stream`` request and where it stands.

    The ``*_at`` floats are monotonic seconds; ``created_at``/``completed_at`` are the wall-clock
    timestamps clients see.
    """

    __slots__ = (
        "accepted_at",
        "completed_at",
        "created_at",
        "cues",
        "delivery",
        "error_message",
        "finished_at",
        "first_audio_at",
        "job",
        "session_id",
        "started_at",
        "state",
        "stop_reason",
        "task_id",
    )

    def __init__(
        self,
        task_id: str,
        session_id: str,
        job: SynthesisJob,
        created_at: datetime,
        *,
        delivery: Delivery = CONTRACT_DELIVERY,
        accepted_at: float = 0.0,
    ):
        self.task_id = task_id
        self.session_id = session_id
        self.job = job
        self.delivery = delivery
        self.state: TaskState = "pending"
        self.created_at = created_at
        self.completed_at: datetime | None = None
        self.error_message: str | None = None
        # Set to stop a running task at its next segment boundary; the text its client is sent.
        self.stop_reason: str | None = None
        self.accepted_at = accepted_at
        self.started_at: float | None = None
        self.first_audio_at: float | None = None
        # Reaching a final state; retention counts from here.
        self.finished_at: float | None = None
        # One per segment made so far, kept with the task for its subtitles.
        self.cues: list[Cue] = []

    def timing(self, samples: int, compute_seconds: float) -> Timing:
        """The breakdown an extended ``end`` carries, once the task has completed."""
        assert self.started_at is not None and self.finished_at is not None
        audio = samples / SAMPLE_RATE
        first = self.first_audio_at if self.first_audio_at is not None else self.finished_at
        return Timing(
            queue_wait=round(self.started_at - self.accepted_at, 6),
            first_audio=round(first - self.accepted_at, 6),
            total=round(self.finished_at - self.accepted_at, 6),
            audio_seconds=round(audio, 6),
            rtf=round(compute_seconds / audio, 6) if audio > 0 else 0.0,
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class TaskRegistry:
    """All known tasks by id. Finished tasks are kept for ``ttl`` seconds, then forgotten.

    Times are passed in: ``wall`` for the timestamps clients see, ``now`` (monotonic seconds)
    for retention. Finishing happens in time order, so the finished tasks form a queue whose
    head is always the next to expire.
    """

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._tasks: dict[str, Task] = {}
        self._finished: deque[Task] = deque()

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def add(self, task: Task) -> None:
        self._tasks[task.task_id] = task

    def discard(self, task: Task) -> None:
        """Forget a task that was never accepted (the queue refused it)."""
        if task.state != "pending":
            raise InvalidTransition(f"only a pending task can be discarded, not {task.state}")
        self._tasks.pop(task.task_id, None)

    def move(
        self,
        task: Task,
        state: TaskState,
        *,
        wall: datetime,
        now: float,
        error: str | None = None,
    ) -> None:
        transition(task, state, wall=wall, now=now, error=error)
        if state in FINISHED:
            self._finished.append(task)

    def next_expiry(self) -> float | None:
        if not self._finished:
            return None
        head = self._finished[0].finished_at
        assert head is not None
        return head + self.ttl

    def expire(self, now: float) -> list[Task]:
        """Forget every finished task older than the ttl; return them."""
        gone: list[Task] = []
        while self._finished:
            head = self._finished[0]
            assert head.finished_at is not None
            if head.finished_at + self.ttl > now:
                break
            self._finished.popleft()
            self._tasks.pop(head.task_id, None)
            gone.append(head)
        return gone
