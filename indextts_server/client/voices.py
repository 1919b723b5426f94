"""The client's HTTP side: the voice library (``/v1/audio/voices``), with the standard library only."""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit

from .session import ClientError

TIMEOUT: Final = 60.0
Json = dict[str, Any]


def http_base(ws_url: str, http_port: int = 8771) -> str:
    """The HTTP API beside a WebSocket URL: same host, ``http(s)``, the default HTTP port."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((scheme, f"{host}:{http_port}", "", "", ""))


class VoiceLibrary:
    """``GET``/``POST``/``DELETE`` on the server's voice library; errors carry the server's message."""

    def __init__(self, base_url: str, token: str | None):
        self.base = base_url.rstrip("/")
        self.token = token

    def voices(self) -> list[Json]:
        voices = self._call("GET", "/v1/audio/voices").get("voices")
        if not isinstance(voices, list):
            raise ClientError(f"{self.base}/v1/audio/voices did not answer with a list of voices")
        return voices

    def add(self, name: str, audio: Path, *, ref_text: str | None = None, replace: bool = False) -> Json:
        try:
            content = audio.read_bytes()
        except OSError as error:
            raise ClientError(f"cannot read {audio}: {error.strerror}") from None
        fields = {"name": name}
        if ref_text is not None:
            fields["ref_text"] = ref_text
        if replace:
            fields["replace"] = "true"
        body, content_type = multipart(fields, "audio_sample", audio.name, content)
        return self._call("POST", "/v1/audio/voices", body, content_type)

    def remove(self, name: str) -> Json:
        return self._call("DELETE", f"/v1/audio/voices/{quote(name, safe='')}")

    def _call(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Json:
        request = urllib.request.Request(f"{self.base}{path}", data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raise ClientError(server_message(error.code, error.read())) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ClientError(f"cannot reach {self.base}: {reason}") from None
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ClientError(f"{method} {path}: the answer is not JSON: {raw[:200]!r}") from None
        return value if isinstance(value, dict) else {"value": value}


def server_message(status: int, body: bytes) -> str:
    """The message an HTTP error carries: OpenAI's ``{"error": {"message"}}``, else the body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if isinstance(value, dict):
        error = value.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(value.get("message"), str):
            return str(value["message"])
    return f"HTTP {status}: {text}"


def multipart(fields: dict[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with ``fields`` and one file; returns it and its content type."""
    boundary = f"indextts-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    mime = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{safe_name}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        ).encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
