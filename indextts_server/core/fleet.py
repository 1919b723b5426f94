"""Cluster mode's pure parts: task records and reply events as the broker stores them, the give-up rule."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, NamedTuple, cast

import msgspec

from .contract.protocol import TaskState, TaskStatusReply
from .engine import Capabilities, SynthesisJob, common_capabilities
from .tasks import Delivery
from .texts import gave_up, worker_lost_after_audio


class TaskOrder(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker needs to run a task: the job, and how its audio goes out."""

    job: SynthesisJob
    delivery: Delivery


_order_encoder: Final = msgspec.msgpack.Encoder()
_order_decoder: Final = msgspec.msgpack.Decoder(TaskOrder)


def encode_order(order: TaskOrder) -> bytes:
    return _order_encoder.encode(order)


def decode_order(data: bytes) -> TaskOrder:
    return _order_decoder.decode(data)


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A task as the broker keeps it (one hash per task), seen by anyone in the fleet."""

    task_id: str
    state: TaskState
    session: str
    gateway: str
    created_at: str
    completed_at: str | None = None
    error: str | None = None
    attempt: int = 0
    worker: str | None = None
    audio: bool = False
    stop: str | None = None

    @classmethod
    def from_hash(cls, task_id: str, fields: dict[bytes, bytes]) -> TaskRecord:
        def text(name: str) -> str | None:
            value = fields.get(name.encode())
            return None if value is None or value == b"" else value.decode()

        state = text("state") or "failed"
        assert state in ("pending", "running", "completed", "failed", "cancelled")
        return cls(
            task_id=task_id,
            state=cast(TaskState, state),
            session=text("session") or "",
            gateway=text("gateway") or "",
            created_at=text("created_at") or "",
            completed_at=text("completed_at"),
            error=text("error"),
            attempt=int(text("attempt") or 0),
            worker=text("worker"),
            audio=text("audio") == "1",
            stop=text("stop"),
        )

    def status_reply(self, session_id: str) -> TaskStatusReply:
        return TaskStatusReply(
            session_id=session_id,
            task_id=self.task_id,
            status=self.state,
            created_at=self.created_at,
            completed_at=self.completed_at,
            error_message=self.error,
        )


Verdict = Literal["forget", "requeue", "end"]


def orphan_verdict(
    record: TaskRecord | None, *, max_deliveries: int
) -> tuple[Verdict, TaskState | None, str | None]:
    """What to do with a task whose worker stopped answering (its lease ran out).

    Run it again elsewhere if none of its audio can have reached the client and it has not yet
    been handed out ``max_deliveries`` times; otherwise end it (failed, saying why), or cancelled
    if it was being stopped anyway. A task already finished (or forgotten) only needs its queue
    entry dropped. Returns the verdict, and for ``end`` the final state and message.
    """
    if record is None or record.state not in ("pending", "running"):
        return "forget", None, None
    if record.state == "pending":
        return "requeue", None, None  # taken off the queue but never started
    if record.stop:
        return "end", "cancelled", record.stop
    if record.audio:
        return "end", "failed", worker_lost_after_audio(record.worker or "?")
    if record.attempt >= max_deliveries:
        return "end", "failed", gave_up(record.attempt)
    return "requeue", None, None


class WorkerActivity(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker reports with its heartbeat: for the fleet's metrics, and for the gateways
    its engine's name and what it can do (absent from a worker of an older version)."""

    task: str | None = None
    done: int = 0
    engine: str | None = None
    capabilities: Capabilities | None = None


class FleetEngine(NamedTuple):
    """What a gateway serves: its workers' engine and what every one of them can do."""

    name: str
    capabilities: Capabilities


MIXED: Final = "mixed"
"""The engine name of a fleet whose workers run different engines."""


def fleet_engine(workers: Iterable[WorkerActivity]) -> FleetEngine | None:
    """What the live workers run: their engine's name when they agree (else `MIXED`) and what
    every one of them can do (any may take a task); None when none has said."""
    known = [
        (worker.engine, worker.capabilities)
        for worker in workers
        if worker.engine is not None and worker.capabilities is not None
    ]
    capabilities = common_capabilities([declared for _, declared in known])
    if capabilities is None:
        return None
    names = {name for name, _ in known}
    return FleetEngine(names.pop() if len(names) == 1 else MIXED, capabilities)


_activity_encoder: Final = msgspec.json.Encoder()
_activity_decoder: Final = msgspec.json.Decoder(WorkerActivity)


def encode_activity(activity: WorkerActivity) -> bytes:
    return _activity_encoder.encode(activity)


def decode_activity(data: bytes | str) -> WorkerActivity:
    try:
        return _activity_decoder.decode(data)
    except msgspec.DecodeError:
        return WorkerActivity()


EventKind = Literal["start", "cue", "audio", "end", "error"]


class ReplyEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One reply a worker sends a gateway for a task; the gateway turns it into the client's message."""

    task: str
    kind: EventKind
    attempt: int = 0
    # Numbers one attempt's events, so a re-sent one (after a lost acknowledgement) is dropped.
    seq: int = 0
    data: bytes = b""
    samples: int = 0
    compute: float = 0.0
    state: TaskState | None = None
    message: str | None = None

    def fields(self) -> dict[str, bytes | str | int | float]:
        out: dict[str, bytes | str | int | float] = {
            "task": self.task,
            "kind": self.kind,
            "attempt": self.attempt,
            "seq": self.seq,
        }
        if self.data:
            out["data"] = self.data
        if self.kind == "end":
            out["samples"] = self.samples
            out["compute"] = repr(self.compute)
        if self.state is not None:
            out["state"] = self.state
        if self.message is not None:
            out["message"] = self.message
        return out

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> ReplyEvent:
        kind = fields[b"kind"].decode()
        assert kind in ("start", "cue", "audio", "end", "error")
        state = fields.get(b"state")
        state_text = None if state is None else state.decode()
        assert state_text in (None, "pending", "running", "completed", "failed", "cancelled")
        message = fields.get(b"message")
        return cls(
            task=fields[b"task"].decode(),
            kind=cast(EventKind, kind),
            attempt=int(fields.get(b"attempt", b"0")),
            seq=int(fields.get(b"seq", b"0")),
            data=fields.get(b"data", b""),
            samples=int(fields.get(b"samples", b"0")),
            compute=float(fields.get(b"compute", b"0")),
            state=cast(TaskState | None, state_text),
            message=None if message is None else message.decode(),
        )
