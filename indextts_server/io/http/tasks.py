"""``GET /v1/tasks/{id}`` (the contract's ``task_status``) and a task's cues as SRT or WebVTT."""

from __future__ import annotations

import uuid

from hypercorn.typing import ASGISendCallable

from ...core import texts
from ...core.contract.protocol import Reply, TaskStatusReply
from ...core.cues import SUBTITLE_TYPES, SubtitleFormat, subtitles
from ...core.openai import ApiError
from ..service.service import Service
from ..service.session import Session
from .asgi import Request, respond, respond_json

NO_STORE = ("cache-control", "no-store")


class _Answer(Session):
    """An HTTP request asking the scheduler about a task, as a WebSocket session would: one reply."""

    def __init__(self) -> None:
        super().__init__(str(uuid.uuid4()))
        self.reply: Reply | None = None

    def send(self, reply: Reply) -> None:
        self.reply = reply


def unknown(task_id: str) -> ApiError:
    return ApiError(404, texts.unknown_task(task_id), param="task_id", code="task_not_found")


class Tasks:
    """Any task, by id, whichever port made it (``/v1/audio/speech`` names it in ``X-Task-Id``)."""

    def __init__(self, service: Service):
        self.service = service

    async def status(self, request: Request, send: ASGISendCallable, task_id: str) -> None:
        """The WebSocket's ``task_status`` reply, field for field (``session_id``: this request's)."""
        answer = _Answer()
        await self.service.scheduler.status(task_id, answer)
        reply = answer.reply
        if isinstance(reply, TaskStatusReply):
            await respond_json(send, 200, reply, [NO_STORE])
            return
        if reply is not None and getattr(reply, "message", None) == texts.BROKER_UNAVAILABLE:
            raise ApiError(503, texts.BROKER_UNAVAILABLE, code="broker_unavailable")
        raise unknown(task_id)

    async def subtitles(
        self, request: Request, send: ASGISendCallable, task_id: str, kind: SubtitleFormat
    ) -> None:
        """The task's cues so far: one per segment, timed in the audio its client received."""
        cues = await self.service.scheduler.cues(task_id)
        if cues is None:
            raise unknown(task_id)
        await respond(send, 200, subtitles(cues, kind).encode(), SUBTITLE_TYPES[kind], [NO_STORE])
