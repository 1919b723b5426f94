"""The broker's keys and operations on Redis (redis-py, blocking), run from Trio through worker threads."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, NamedTuple, ParamSpec, TypeVar, cast

import msgspec
import trio

from ....core.contract.protocol import Cue, TaskState
from ....core.fleet import ReplyEvent, TaskOrder, TaskRecord, encode_order
from ....core.tasks import iso
from ....core.texts import GATEWAY_GONE
from . import scripts

log = logging.getLogger("indextts_server")

P = ParamSpec("P")
T = TypeVar("T")

PREFIX: Final = "indextts:{fleet}"
"""Every key shares one hash tag, so the scripts also run on a Redis Cluster (one slot)."""
GROUP: Final = "workers"
BLOCK_MS: Final = 1000
"""Longest blocking read: a thread in XREAD(GROUP) cannot be cancelled until it returns."""
THREADS: Final = 8
"""Threads (and pooled connections) a process may have inside the client at once."""


class BrokerDown(Exception):
    """The broker could not be reached (or answered an error); the operation did not happen."""


def _redis_errors() -> tuple[type[Exception], ...]:
    import redis

    return (redis.RedisError, OSError)


class Started(NamedTuple):
    """What a worker learns when it starts a task."""

    attempt: int
    order: TaskOrder
    gateway: str
    session: str


class Taken(NamedTuple):
    """A queue entry a worker has taken."""

    stream: str
    entry: str
    task_id: str


Arg = bytes | str | int | float
"""What a script argument may be."""


def key(*parts: str) -> str:
    return ":".join((PREFIX, *parts))


QUEUE: Final = key("queue")
RETRY: Final = key("retry")
PENDING: Final = key("pending")
SEQ: Final = key("seq")
GATEWAYS: Final = key("gateways")
WORKERS: Final = key("workers")
RECLAIM_LOCK: Final = key("reclaim")


def task_key(task_id: str) -> str:
    return key("task", task_id)


def replies_key(gateway: str) -> str:
    return key("replies", gateway)


def gateway_key(gateway: str) -> str:
    return key("gw", gateway)


def gateway_tasks_key(gateway: str) -> str:
    return key("gwtasks", gateway)


def worker_key(worker: str) -> str:
    return key("wk", worker)


def now_iso() -> str:
    return iso(datetime.now())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Store:
    """One process's connection pool to the broker and the typed operations on it.

    The methods block: call them through :meth:`call`, which runs them in a worker thread under
    the store's own ``CapacityLimiter``. Connection errors become `BrokerDown`; nothing is
    retried inside (a retried script could run twice), the caller decides.
    """

    def __init__(self, url: str, *, lease: float, task_ttl: float, max_queue: int):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.lease = lease
        self.task_ttl = task_ttl
        self.max_queue = max_queue
        self.reply_ttl = max(60, int(20 * lease))
        self.maxlen = 4 * max_queue + 1000
        self.redis: Any = redis.Redis.from_url(
            url,
            socket_timeout=BLOCK_MS / 1000 + max(2.0, lease),
            socket_connect_timeout=min(2.0, max(0.5, lease / 2)),
            retry=Retry(NoBackoff(), 0),
            max_connections=THREADS + 2,
        )
        self.limiter = trio.CapacityLimiter(THREADS)
        self._scripts = {
            name: self.redis.register_script(getattr(scripts, name))
            for name in ("ADMIT", "START", "PROGRESS", "FINISH", "REQUEUE", "ABANDON")
        }
        self._groups_ready = False

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` in a worker thread; `BrokerDown` if the broker failed it."""
        errors = _redis_errors()

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            except errors as exc:
                self._groups_ready = False
                raise BrokerDown(f"{type(exc).__name__}: {exc}") from exc

        return await trio.to_thread.run_sync(run, limiter=self.limiter)

    def close(self) -> None:
        self.redis.close()

    def _script(self, name: str, keys: list[str], args: list[Arg]) -> object:
        return cast(object, self._scripts[name](keys=keys, args=args))

    # --- everyone ----------------------------------------------------------------------------

    def queue_depth(self) -> int:
        return int(self.redis.zcard(PENDING))

    def record(self, task_id: str) -> TaskRecord | None:
        fields = cast(dict[bytes, bytes], self.redis.hgetall(task_key(task_id)))
        return TaskRecord.from_hash(task_id, fields) if fields else None

    def cues(self, task_id: str) -> list[Cue] | None:
        """The cues a task's worker made so far (its last attempt's); ``None`` for an unknown task."""
        state, cues = cast(list[bytes | None], self.redis.hmget(task_key(task_id), "state", "cues"))
        if state is None:
            return None
        return [] if not cues else msgspec.json.decode(cues, type=list[Cue])

    def abandon(self, task_id: str, reason: str, *, session: str = "", running_too: bool = True) -> str:
        """Cancel a waiting task, or (``running_too``) ask a running one to stop; see ``ABANDON``."""
        gateway = self.redis.hget(task_key(task_id), "gateway")
        result = self._script(
            "ABANDON",
            [task_key(task_id), PENDING, gateway_tasks_key(_text(gateway or b"")), QUEUE, RETRY],
            [reason, now_iso(), int(self.task_ttl), task_id, "all" if running_too else "pending", session],
        )
        return _text(result)

    def workers(self) -> dict[str, tuple[bool, str]]:
        """Every known worker: (alive, what it is doing)."""
        activity = cast(dict[bytes, bytes], self.redis.hgetall(WORKERS))
        names = [_text(name) for name in activity]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(worker_key(name))
        alive = cast(list[int], pipe.execute())
        return {
            name: (bool(up), _text(activity[name.encode()])) for name, up in zip(names, alive, strict=True)
        }

    # --- gateways ----------------------------------------------------------------------------

    def gateway_beat(self, gateway: str) -> str:
        """Renew this gateway's lease; returns the broker's run id."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(gateway_key(gateway), "1", px=int(self.lease * 1000))
        pipe.hset(GATEWAYS, gateway, now_iso())
        pipe.info("server")
        results = cast(list[Any], pipe.execute())
        return str(results[2]["run_id"])

    def gateway_leave(self, gateway: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(gateway_key(gateway), replies_key(gateway))
        pipe.hdel(GATEWAYS, gateway)
        pipe.execute()

    def admit(self, task_id: str, session: str, gateway: str, order: TaskOrder, created_at: str) -> int:
        """Queue a task; its fleet-wide position (1: next), or 0 when the fleet's queue is full."""
        result = self._script(
            "ADMIT",
            [SEQ, PENDING, QUEUE, task_key(task_id), gateway_tasks_key(gateway)],
            [self.max_queue, task_id, session, gateway, created_at, encode_order(order), self.maxlen],
        )
        return int(cast(int, result))

    def read_replies(self, gateway: str) -> list[ReplyEvent]:
        """Wait (at most ``BLOCK_MS``) for this gateway's replies; they are deleted once read."""
        stream = replies_key(gateway)
        found = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
            self.redis.xread({stream: "0-0"}, count=64, block=BLOCK_MS),
        )
        if not found:
            return []
        entries = found[0][1]
        self.redis.xdel(stream, *[entry_id for entry_id, _ in entries])
        events = []
        for entry_id, fields in entries:
            try:
                events.append(ReplyEvent.from_fields(fields))
            except (KeyError, ValueError, AssertionError):
                log.error("dropping a malformed reply %s on %s: %r", _text(entry_id), stream, fields)
        return events

    # --- workers -----------------------------------------------------------------------------

    def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        import redis

        for stream in (QUEUE, RETRY):
            try:
                self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    def worker_beat(self, worker: str, activity: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(worker_key(worker), "1", px=int(self.lease * 1000))
        pipe.hset(WORKERS, worker, activity)
        pipe.execute()

    def worker_leave(self, worker: str) -> None:
        """A worker stops: it is forgotten, and its lease ends now. Were it still holding an entry
        (stopped mid-task), that entry stays pending for the recovery sweep to hand on."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(worker_key(worker))
        pipe.hdel(WORKERS, worker)
        pipe.execute()
        for stream in (QUEUE, RETRY):
            if not self.redis.xpending_range(stream, GROUP, "-", "+", 1, consumername=worker):
                self.redis.xgroup_delconsumer(stream, GROUP, worker)

    def take(self, worker: str) -> Taken | None:
        """The next entry for this worker: a handed-back task first, else wait on the queue."""
        self._ensure_groups()
        for stream, block in ((RETRY, None), (QUEUE, BLOCK_MS)):
            found = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]] | None,
                self.redis.xreadgroup(GROUP, worker, {stream: ">"}, count=1, block=block),
            )
            if found and found[0][1]:
                entry_id, fields = found[0][1][0]
                return Taken(stream, _text(entry_id), _text(fields[b"task"]))
        return None

    def start(self, worker: str, taken: Taken) -> Started | None:
        """Mark the task running on this worker; ``None`` (entry dropped) if it must not run."""
        from ....core.fleet import decode_order

        result = cast(
            list[Any] | None,
            self._script(
                "START",
                [task_key(taken.task_id), PENDING],
                [
                    worker,
                    PREFIX,
                    now_iso(),
                    int(self.task_ttl),
                    GATEWAY_GONE,
                    taken.task_id,
                    taken.entry,
                    self.reply_ttl,
                ],
            ),
        )
        if not result:
            self.redis.xack(taken.stream, GROUP, taken.entry)
            self.redis.xdel(taken.stream, taken.entry)
            return None
        attempt, order, gateway, session = result
        return Started(int(attempt), decode_order(order), _text(gateway), _text(session))

    def progress(
        self,
        task_id: str,
        attempt: int,
        gateway: str,
        event: ReplyEvent | None = None,
        *,
        audio: bool = False,
        cues: bytes = b"",
    ) -> str:
        """Publish ``event`` (if any) for this attempt, and keep ``cues`` (this attempt's so far, as
        JSON) with the task; 'ok', 'fenced', or the reason to stop."""
        args: list[Arg] = [
            attempt,
            gateway_key(gateway),
            GATEWAY_GONE,
            "1" if audio else "0",
            self.reply_ttl,
            cues,
        ]
        if event is not None:
            for name, value in event.fields().items():
                args += [name, value]
        return _text(self._script("PROGRESS", [task_key(task_id), replies_key(gateway)], args))

    def finish(
        self,
        task_id: str,
        attempt: int,
        gateway: str,
        state: TaskState,
        *events: ReplyEvent,
        error: str | None = None,
        taken: Taken | None = None,
    ) -> bool:
        """End this attempt of the task and send its gateway ``events`` (the last one ends it);
        ``False`` if the task was no longer this attempt's."""
        args: list[Arg] = [
            attempt,
            state,
            now_iso(),
            error or "",
            int(self.task_ttl),
            self.reply_ttl,
            "" if taken is None else taken.entry,
            GROUP,
            task_id,
        ]
        for event in events:
            fields = event.fields()
            args.append(2 * len(fields))
            for name, value in fields.items():
                args += [name, value]
        stream = QUEUE if taken is None else taken.stream
        keys = [task_key(task_id), replies_key(gateway), gateway_tasks_key(gateway), stream]
        return bool(self._script("FINISH", keys, args))

    def requeue(self, taken: Taken, *, attempt: int, worker: str) -> bool:
        """Hand a task back to the front of the queue (a draining or lost worker's)."""
        return bool(
            self._script(
                "REQUEUE",
                [task_key(taken.task_id), PENDING, RETRY, taken.stream],
                [attempt, worker, taken.entry, GROUP, taken.task_id, self.maxlen],
            )
        )

    # --- recovery ----------------------------------------------------------------------------

    def reclaim_turn(self, owner: str) -> bool:
        """Whether this process does the fleet's recovery sweep now (one process per period)."""
        return bool(self.redis.set(RECLAIM_LOCK, owner, nx=True, px=int(self.lease * 500)))

    def orphans(self) -> list[tuple[Taken, str]]:
        """Queue entries held by workers whose lease ran out: (entry, worker).

        Looks consumer by consumer (each live worker holds at most one entry), so a fleet of any
        size is swept whole.
        """
        self._ensure_groups()
        found: list[tuple[Taken, str]] = []
        for stream in (QUEUE, RETRY):
            consumers = cast(list[dict[str, Any]], self.redis.xinfo_consumers(stream, GROUP))
            holding = [_text(consumer["name"]) for consumer in consumers if int(consumer["pending"])]
            if not holding:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for consumer in holding:
                pipe.exists(worker_key(consumer))
            alive = cast(list[int], pipe.execute())
            for consumer in (name for name, up in zip(holding, alive, strict=True) if not up):
                pending = self.redis.xpending_range(stream, GROUP, "-", "+", 100, consumername=consumer)
                for item in cast(list[dict[str, Any]], pending):
                    entry = _text(item["message_id"])
                    rows = cast(
                        list[tuple[bytes, dict[bytes, bytes]]], self.redis.xrange(stream, entry, entry)
                    )
                    if not rows:
                        self.redis.xack(stream, GROUP, entry)  # its task was cancelled while it waited
                        continue
                    found.append((Taken(stream, entry, _text(rows[0][1][b"task"])), consumer))
        return found

    def forget_entry(self, taken: Taken) -> None:
        self.redis.xack(taken.stream, GROUP, taken.entry)
        self.redis.xdel(taken.stream, taken.entry)

    def dead_gateways(self, me: str) -> list[str]:
        names = [_text(name) for name in cast(dict[bytes, bytes], self.redis.hgetall(GATEWAYS))]
        names = [name for name in names if name != me]
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.exists(gateway_key(name))
        alive = cast(list[int], pipe.execute())
        return [name for name, up in zip(names, alive, strict=True) if not up]

    def gateway_tasks(self, gateway: str) -> list[str]:
        return [_text(task) for task in cast(set[bytes], self.redis.smembers(gateway_tasks_key(gateway)))]

    def forget_gateway_task(self, gateway: str, task_id: str) -> None:
        self.redis.srem(gateway_tasks_key(gateway), task_id)

    def dead_workers_without_entries(self) -> list[str]:
        """Workers whose lease ran out and who hold no queue entry: safe to forget."""
        self._ensure_groups()
        holding: set[str] = set()
        for stream in (QUEUE, RETRY):
            for consumer in cast(list[dict[str, Any]], self.redis.xinfo_consumers(stream, GROUP)):
                if int(consumer["pending"]):
                    holding.add(_text(consumer["name"]))
        return [name for name, (alive, _) in self.workers().items() if not alive and name not in holding]

    def forget_worker(self, worker: str) -> None:
        for stream in (QUEUE, RETRY):
            self.redis.xgroup_delconsumer(stream, GROUP, worker)
        self.redis.hdel(WORKERS, worker)
