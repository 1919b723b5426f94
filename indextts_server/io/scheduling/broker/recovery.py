"""The fleet's recovery sweep: tasks of lost workers re-run or failed, tasks of lost gateways cancelled."""

from __future__ import annotations

import logging

import trio

from ....core.fleet import ReplyEvent, orphan_verdict
from ....core.texts import GATEWAY_GONE
from .store import BrokerDown, Store

log = logging.getLogger("indextts_server")


async def sweep(store: Store, me: str, *, max_deliveries: int) -> None:
    """One pass; every process runs it, at most one per half lease does the work."""
    if not await store.call(store.reclaim_turn, me):
        return
    for taken, worker in await store.call(store.orphans):
        record = await store.call(store.record, taken.task_id)
        verdict, state, message = orphan_verdict(record, max_deliveries=max_deliveries)
        if verdict == "forget" or record is None:
            await store.call(store.forget_entry, taken)
        elif verdict == "requeue":
            handed = await store.call(store.requeue, taken, attempt=record.attempt, worker=worker)
            if handed:
                log.warning(
                    "worker %s lost; task=%s queued again (delivery %d)",
                    worker,
                    taken.task_id,
                    record.attempt,
                )
        else:
            assert state is not None and message is not None
            event = ReplyEvent(
                task=taken.task_id,
                kind="error",
                attempt=record.attempt,
                seq=1 << 30,
                state=state,
                message=message,
            )
            ended = await store.call(
                store.finish,
                taken.task_id,
                record.attempt,
                record.gateway,
                state,
                event,
                error=message,
                taken=taken,
            )
            if ended:
                log.warning("worker %s lost; task=%s %s: %s", worker, taken.task_id, state, message)
    for gateway in await store.call(store.dead_gateways, me):
        remaining = 0
        for task_id in await store.call(store.gateway_tasks, gateway):
            outcome = await store.call(store.abandon, task_id, GATEWAY_GONE)
            if outcome == "unknown" or outcome.startswith("finished:"):
                await store.call(store.forget_gateway_task, gateway, task_id)
            else:
                remaining += outcome != "cancelled"
                if outcome in ("cancelled", "cancelling"):
                    log.warning("gateway %s lost; task=%s %s", gateway, task_id, outcome)
        if not remaining and not await store.call(store.gateway_tasks, gateway):
            await store.call(store.gateway_leave, gateway)
            log.info("gateway %s lost; forgotten", gateway)
    for worker in await store.call(store.dead_workers_without_entries):
        await store.call(store.forget_worker, worker)
        log.info("worker %s lost; forgotten", worker)


async def run_recovery(
    store: Store,
    me: str,
    *,
    max_deliveries: int,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        try:
            await sweep(store, me, max_deliveries=max_deliveries)
        except BrokerDown:
            pass
        await trio.sleep(store.lease / 2)
