"""The HTTP port's ASGI application: routing, the shared token, CORS, operations and the demo page."""

from __future__ import annotations

import hmac
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Final

import msgspec
import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

from ...core import texts
from ...core.cues import SubtitleFormat
from ...core.openai import ApiError, model_ids, model_list
from ...core.origins import Verdict, judge_origin
from ..operations.metrics import CONTENT_TYPE, Metrics
from ..service.service import Service
from .agents import PATH as AGENTS_PATH
from .agents import Agents
from .asgi import TEXT, Request, refuse_websocket, respond, respond_error, respond_json, serve_lifespan
from .speech import MidStreamFailure, Speech
from .tasks import Tasks
from .voices import Voices

log = logging.getLogger("indextts_server")

WEB_ROOT: Final = Path(__file__).resolve().parent.parent.parent / "web"
"""The demo page's files (``indextts_server/web``), served at ``/`` and ``/web/<file>``."""

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
}
PUBLIC_LISTS: Final = (["models"], ["audio", "models"], ["audio", "voices"])
"""What ``--public-voice-list`` lets anyone read without the token (with GET)."""
CORS_METHODS: Final = "GET, POST, DELETE, OPTIONS"
CORS_HEADERS: Final = "Authorization, Content-Type"

Handler = Callable[[Request, ASGISendCallable], Awaitable[None]]


class WebConfig(msgspec.Struct, kw_only=True):
    """``GET /web/config.json``: the demo page's settings (public: the page reads it before any token)."""

    ws_port: int
    auth_required: bool


def not_found(path: str) -> ApiError:
    return ApiError(404, texts.unknown_path(path), code="not_found")


def method_not_allowed(method: str, allowed: str) -> ApiError:
    return ApiError(
        405,
        texts.method_not_allowed(method, allowed),
        code="method_not_allowed",
        headers=(("allow", allowed),),
    )


class HttpApi:
    """Everything on the HTTP port; ``ops_only`` keeps just ``/metrics``, ``/healthz`` and ``/readyz``.

    The API (``/v1/...``) asks for the server's token when it has one (``Authorization: Bearer``,
    as OpenAI's clients send it, or ``?token=``), except for the voice and model lists with
    ``--public-voice-list``. Browsers: same-origin and loopback pages always
    work; another origin must be listed with ``--allow-origin`` (``*``: any), and is refused (403)
    otherwise, so a foreign page cannot upload or delete voices behind a user's back
    (`judge_origin`, the WebSocket's rule too). Other origins let in get CORS headers.
    """

    def __init__(
        self, service: Service, metrics: Metrics | None = None, *, ops_only: bool = False, ws_port: int = 0
    ):
        self.service = service
        self.metrics = metrics
        self.ops_only = ops_only
        self.ws_port = ws_port  # the contract's WebSocket port, which the page connects to
        self.speech = Speech(service)
        self.tasks = Tasks(service)
        self.voices = Voices(service.voices)
        self.agents = Agents(service)
        self.web_root = WEB_ROOT

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            # The lifespan lasts as long as the server: responses are written from its nursery,
            # so a request whose client stopped reading can give up (see `speech.Wire`).
            async with trio.open_nursery() as writers:
                self.speech.writers = writers
                try:
                    await serve_lifespan(receive, send)
                finally:
                    self.speech.writers = None
            return
        if scope["type"] == "websocket":
            if scope["path"] == AGENTS_PATH and not self.ops_only:
                await self.agents.serve(scope, receive, send)  # voice agents: docs/voice-agents.md
            else:  # the contract's WebSocket is on its own port: 404, not hypercorn's 500
                await refuse_websocket(receive, send, not_found(scope["path"]))
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        cors = self._cors(request)
        try:
            await self._route(request, send, cors)
        except ApiError as error:
            await respond_error(send, error, cors)
        except MidStreamFailure:
            raise  # hypercorn cuts the connection: the client must not take half the audio for all of it
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            await respond_error(send, ApiError(500, texts.INTERNAL_ERROR, code="internal_error"), cors)

    def _origin(self, request: Request) -> Verdict:
        origin, host = request.headers.get("origin"), request.headers.get("host", "")
        return judge_origin(origin, host, self.service.config.allowed_origins)

    def _cors(self, request: Request) -> list[tuple[str, str]]:
        """CORS headers for a page from another origin that is let in (loopback, or listed)."""
        origin = request.headers.get("origin")
        if origin is None or self._origin(request) not in ("loopback", "listed"):
            return []
        return [
            ("access-control-allow-origin", origin),
            ("vary", "Origin"),
            ("access-control-expose-headers", "X-Task-Id, Retry-After"),
        ]

    async def _route(self, request: Request, send: ASGISendCallable, cors: list[tuple[str, str]]) -> None:
        segments = request.segments
        method = "GET" if request.method == "HEAD" else request.method
        ops = self._ops(request.path)
        if ops is not None:
            if method != "GET":
                raise method_not_allowed(request.method, "GET, HEAD")
            await ops(request, send)
            return
        if self.ops_only:
            raise not_found(request.path)
        if segments[1:2] != ["v1"]:
            if method != "GET":
                raise method_not_allowed(request.method, "GET, HEAD")
            if request.path == "/web/config.json":
                await self._web_config(request, send)
            else:
                await self._static(request, send)
            return
        if self._origin(request) == "foreign":
            raise ApiError(
                403, texts.origin_not_allowed(request.headers["origin"]), code="origin_not_allowed"
            )
        if method == "OPTIONS":
            headers = [
                *cors,
                ("access-control-allow-methods", CORS_METHODS),
                ("access-control-allow-headers", CORS_HEADERS),
            ]
            await respond(send, 204, b"", None, [*headers, ("access-control-max-age", "600")])
            return
        route = segments[2:]
        if not (self.service.config.public_voice_list and method == "GET" and route in PUBLIC_LISTS):
            self._authorize(request)
        handler: Handler | None = None
        allowed = "GET, HEAD"
        if route in (["models"], ["audio", "models"]):
            handler = self._models if method == "GET" else None
        elif route == ["audio", "voices"]:
            allowed = "GET, HEAD, POST"
            handler = {"GET": self.voices.list, "POST": self.voices.upload}.get(method)
        elif len(route) == 3 and route[:2] == ["audio", "voices"]:
            allowed = "DELETE"
            name = route[2]
            if method == "DELETE":
                await self.voices.delete(request, _with_cors(send, cors), name)
                return
        elif route == ["audio", "speech"]:
            allowed = "POST"
            handler = self.speech.handle if method == "POST" else None
        elif route[:1] == ["tasks"] and len(route) in (2, 3):
            task_id = route[1]
            if len(route) == 2:
                found: Handler = partial(self.tasks.status, task_id=task_id)
            elif route[2] in ("subtitles.srt", "subtitles.vtt"):
                kind: SubtitleFormat = "srt" if route[2].endswith(".srt") else "vtt"
                found = partial(self.tasks.subtitles, task_id=task_id, kind=kind)
            else:
                raise not_found(request.path)
            handler = found if method == "GET" else None
        else:
            raise not_found(request.path)
        if handler is None:
            raise method_not_allowed(request.method, allowed)
        await handler(request, _with_cors(send, cors))

    def _authorize(self, request: Request) -> None:
        token = self.service.config.auth_token
        if not token:
            return
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            offered: str | None = authorization[7:].strip()
        else:
            offered = request.query.get("token", [None])[0]
        if offered is None or not hmac.compare_digest(offered.encode(), token.encode()):
            raise ApiError(
                401,
                texts.TOKEN_REQUIRED,
                code="invalid_api_key",
                headers=(("www-authenticate", "Bearer"),),
            )

    def _ops(self, path: str) -> Handler | None:
        async def metrics(request: Request, send: ASGISendCallable) -> None:
            if self.metrics is None:
                raise not_found(path)
            body = await trio.to_thread.run_sync(self.metrics.render)  # off the event loop
            await respond(send, 200, body, CONTENT_TYPE, [("cache-control", "no-store")])

        async def healthz(request: Request, send: ASGISendCallable) -> None:
            await respond(send, 200, b"ok\n", TEXT, [("cache-control", "no-store")])

        async def readyz(request: Request, send: ASGISendCallable) -> None:
            ready = self.service.ready
            await respond(
                send,
                200 if ready else 503,
                b"ready\n" if ready else b"not ready\n",
                TEXT,
                [("cache-control", "no-store")],
            )

        routes: dict[str, Handler] = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}
        return routes.get(path)

    async def _models(self, request: Request, send: ASGISendCallable) -> None:
        await respond_json(send, 200, model_list(model_ids(self.service.scheduler.engine_name)))

    async def _web_config(self, request: Request, send: ASGISendCallable) -> None:
        """What the demo page cannot guess: the WebSocket port, and whether a token is needed."""
        config = WebConfig(ws_port=self.ws_port, auth_required=bool(self.service.config.auth_token))
        await respond_json(send, 200, config, [("cache-control", "no-store")])

    async def _static(self, request: Request, send: ASGISendCallable) -> None:
        """``/`` is ``web/index.html``; ``/web/<file>`` any file under ``web/``, never outside it."""
        segments = request.segments
        if segments == ["", ""]:
            parts = ["index.html"]
        elif len(segments) > 2 and segments[1] == "web":
            parts = segments[2:]
        else:
            raise not_found(request.path)
        if any(not part or part.startswith(".") or "\\" in part or "\x00" in part for part in parts):
            raise not_found(request.path)
        root = self.web_root.resolve()
        path = root.joinpath(*parts).resolve()
        if not path.is_relative_to(root):
            raise not_found(request.path)
        try:
            data = await trio.Path(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise not_found(request.path) from None
        content_type = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
        await respond(
            send, 200, data, content_type or "application/octet-stream", [("cache-control", "no-cache")]
        )


def _with_cors(send: ASGISendCallable, cors: list[tuple[str, str]]) -> ASGISendCallable:
    """``send`` with the CORS headers added to the response head."""
    if not cors:
        return send
    extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in cors]

    async def wrapped(message: object) -> None:
        if isinstance(message, dict) and message.get("type") == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)  # type: ignore[arg-type]  # the ASGI events are TypedDicts; this passes them on

    return wrapped
