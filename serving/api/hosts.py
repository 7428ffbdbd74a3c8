"""The ``Host`` header check: requests that name a host the server does not answer for are refused.

A web page on another site can make a visitor's browser send requests to this server by re-pointing its own
domain name at the server's address (DNS rebinding); the browser then treats the server's answers as the
page's own. Those requests carry the attacker's name in ``Host``. Answering only the names the operator
listed (``--allowed-hosts``), the loopback names and the address the server is bound to closes that door.

Starlette's ``TrustedHostMiddleware`` does the same check but answers in plain text; this one answers with the
server's JSON error body. Health checks (``/healthz``, ``/readyz``) are exempt: they reveal nothing, and
orchestrators probe them by the container's address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.middleware import send_json

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
_EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})


def host_name(header: str) -> str:
    """The host part of a ``Host`` header value, lower-cased: the port and IPv6 brackets removed."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8000
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:  # name:port or v4:port (a bare IPv6 address has several colons)
        return value.split(":", 1)[0]
    return value


class HostAllowList:
    """Which ``Host`` names the server answers.

    Args:
        allowed: names from ``--allowed-hosts``: exact names or addresses, ``*.example.com`` for a domain and
            its subdomains, or ``*`` for any host (no check).
        bind: the address the server listens on; a specific address is allowed too (a wildcard bind is not a
            name a client can use).
    """

    def __init__(self, allowed: Iterable[str], bind: str = "") -> None:
        names = {host_name(a) for a in allowed if a.strip()} | set(LOOPBACK_HOSTS)
        if bind.strip() not in _WILDCARD_BINDS:
            names.add(host_name(bind))
        self.any = "*" in names
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*.") and len(n) > 2)
        self.names = frozenset(_canonical(n) for n in names if not n.startswith("*"))

    def allows(self, header: str | None) -> bool:
        """True when a request with this ``Host`` header value is answered.

        A request without the header (HTTP/1.0) is answered: browsers always send one, so such a request
        cannot come from a rebinding page.
        """
        if self.any or header is None:
            return True
        if not header.strip():
            return False
        name = host_name(header)
        return _canonical(name) in self.names or any(name.endswith(s) for s in self.suffixes)

    def describe(self) -> str:
        """The allow-list for the start-up log."""
        if self.any:
            return "any host"
        return ", ".join(sorted(self.names) + [f"*{s}" for s in self.suffixes])


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))  # 0:0:0:0:0:0:0:1 and ::1 are one address
    except ValueError:
        return name.rstrip(".")  # example.com. is example.com


class HostCheck:
    """ASGI middleware: answer 400 ``host_not_allowed`` to a request whose ``Host`` is not allowed."""

    def __init__(self, app: ASGIApp, *, hosts: HostAllowList) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.hosts.any or scope["path"] in _EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if self.hosts.allows(header):
            await self.app(scope, receive, send)
            return
        logger.warning("refused a request for host %r (allowed: %s)", header, self.hosts.describe())
        await send_json(send, 400, {"error": "host_not_allowed",
                                    "detail": f"this server does not answer for the host {header!r}; its operator "
                                              f"can add the name with --allowed-hosts"})
