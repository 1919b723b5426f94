"""Which browser pages may use the server: one decision on a request's ``Origin``, for every port.

A browser sends ``Origin`` with every WebSocket handshake and every cross-origin request, and lets
any page open a WebSocket anywhere, so the server is the one to refuse a page from another site
(cross-site WebSocket hijacking: a page elsewhere driving a server on the user's machine or LAN).
Clients that are not browsers send no ``Origin``. Let in by default: no ``Origin``, the server's
own page (the request's own origin, or the HTTP port's on the same host), and pages served from
loopback (``localhost``, ``127.0.0.0/8``, ``[::1]``), which only the machine itself can serve.
``--allow-origin`` lets the listed origins in too (``*``: any).
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

Verdict = Literal["absent", "own", "loopback", "listed", "foreign"]
"""``foreign`` is refused; ``loopback`` and ``listed`` are other origins let in (CORS applies)."""

_DEFAULT_PORTS = {"http": 80, "https": 443}


def judge_origin(
    origin: str | None,
    host: str,
    allowed: tuple[str, ...],
    *,
    page_ports: tuple[int, ...] = (),
) -> Verdict:
    """The verdict on a request carrying ``origin`` (``None``: no such header) made to ``host``
    (its ``Host`` header). ``allowed`` is ``--allow-origin``'s list; ``page_ports`` the ports the
    server's own page is served on besides the request's own (the HTTP port, for the WebSocket).
    """
    if origin is None:
        return "absent"
    if "*" in allowed or origin in allowed:
        return "listed"
    page = _endpoint(origin)
    if page is None:
        return "foreign"  # "null" (a file, a sandboxed frame) or not an http(s) origin at all
    scheme, page_host, page_port = page
    served = _endpoint(f"{scheme}://{host}")
    if served is not None and served[1] == page_host and page_port in (served[2], *page_ports):
        return "own"
    if page_host == "localhost" or _is_loopback(page_host):
        return "loopback"
    return "foreign"


def _endpoint(origin: str) -> tuple[str, str, int] | None:
    """An origin's scheme, host (lower case, IPv6 without brackets) and port; ``None`` if it is not
    an http(s) origin."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
