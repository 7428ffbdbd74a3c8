"""Who may do what: the API-key check of every request, from its headers alone, before its body is read.

Each route needs one permission (:func:`required_permission`): ``search`` for the searches, thumbnails,
gallery stats and tracks, ``admin`` for gallery changes and reloads; health, metrics, the API documents and the operator
pages' static shells are open (the pages send the operator's key with every data request they make).

- With keys configured (``--api-keys-file``, or the single admin ``XMREID_API_KEY``) every ``search`` and
  ``admin`` request needs a key whose role grants it: 401 without ``X-API-Key``, 403 with an unknown key or a
  key whose role is too small. ``--open-search`` lets searches through without a key (a kiosk), with a
  warning at start.
- With no key configured, searches are open (the server binds to loopback by default) and gallery changes
  are refused with 403 unless the server was started with ``--allow-unauthenticated-changes``.

The decision is made in a plain ASGI middleware that answers without calling ``receive``, so a refused
upload costs the server its headers only. The key's *name* is stored in ``request.state.api_key_name`` for
the log and the audit trail; the key itself is never logged or echoed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.keys import KeyRing
from serving.api.middleware import send_json

logger = logging.getLogger(__name__)

#: (method, path pattern) -> the permission the route needs; everything else is open.
_RULES: tuple[tuple[str, re.Pattern[str], str], ...] = tuple(
    (method, re.compile(pattern), permission) for method, pattern, permission in (
        ("POST", r"/search(/batch|/track)?", "search"),
        ("GET", r"/gallery/\d+/thumbnail", "search"),
        ("GET", r"/gallery/stats", "search"),
        ("GET", r"/gallery/tracks", "search"),
        ("POST", r"/gallery(/reload)?", "admin"),
        ("DELETE", r"/gallery/[^/]+", "admin"),
    ))


def required_permission(method: str, path: str) -> str | None:
    """The permission ``method path`` needs (``search`` or ``admin``), or None for an open route."""
    path = path.rstrip("/") or "/"
    for rule_method, pattern, permission in _RULES:
        if method == rule_method and pattern.fullmatch(path):
            return permission
    return None


@dataclass(frozen=True)
class AccessPolicy:
    """The server's keys and what it allows without one."""

    keys: KeyRing
    open_search: bool = False
    unauthenticated_changes: bool = False

    def describe(self) -> str:
        """One line for the start-up log: who may search and who may change the gallery."""
        search = "anyone who reaches the port" if self.search_is_open else "a search or admin key"
        changes = ("anyone who reaches the port" if not self.keys and self.unauthenticated_changes
                   else "an admin key" if self.keys else "nobody (no key configured)")
        return f"searches: {search}; gallery changes: {changes}"

    @property
    def search_is_open(self) -> bool:
        """True when searches need no key (no keys configured, or ``--open-search``)."""
        return self.open_search or not self.keys


class AccessControl:
    """ASGI middleware: refuse requests whose ``X-API-Key`` does not grant their route's permission.

    Args:
        app: the wrapped application.
        policy: the keys and the open routes.
    """

    def __init__(self, app: ASGIApp, *, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        permission = required_permission(scope["method"], scope["path"])
        if permission is not None:
            refusal = self._refusal(scope, permission)
            if refusal is not None:
                status, error, detail = refusal
                headers = [(b"www-authenticate", b"ApiKey")] if status == 401 else []
                await send_json(send, status, {"error": error, "detail": detail}, headers)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, permission: str) -> tuple[int, str, str] | None:
        policy = self.policy
        presented = _api_key(scope)
        key = policy.keys.identify(presented) if presented else None
        if key is not None:
            scope.setdefault("state", {})["api_key_name"] = key.name
        if not policy.keys:
            if permission == "admin" and not policy.unauthenticated_changes:
                return (403, "changes_need_a_key", ("this server has no API key, so it accepts no gallery changes; "
                                                   "start it with --api-keys-file (or XMREID_API_KEY), or with "
                                                   "--allow-unauthenticated-changes on a trusted network"))
            return None
        if permission == "search" and policy.open_search and (presented is None or key is not None):
            return None
        if presented is None:
            what = "an admin key" if permission == "admin" else "a search or admin key"
            return (401, "missing_api_key", f"this endpoint needs {what} in the X-API-Key header")
        if key is None:
            return (403, "invalid_api_key", "the X-API-Key header matches none of the server's API keys")
        if not key.allows(permission):
            logger.warning("key %r (role %s) refused for %s %s", key.name, key.role, scope["method"], scope["path"])
            return (403, "insufficient_role", (f"the key {key.name!r} has the role {key.role!r}; this endpoint "
                                              f"needs the role {permission!r}"))
        return None


def _api_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return value.decode("latin-1") or None
    return None
