"""A shortcut for the common ``POST /search``: one well-formed multipart image, plain query parameters.

Issue 19's profile of the event loop showed FastAPI's per-request dependency and parameter solving,
Starlette's request and form objects and python-multipart's callback parser costing more CPU than
everything else the server does for a search outside the model. For the request nearly every client
sends (``top_k`` and ``camera`` as plain integers, a ``multipart/form-data`` body holding exactly one
``image`` file part) that machinery decides nothing, so :class:`SearchFastPath` parses it directly and
answers through the same code as the route (:func:`serving.api.search.search_answer`).

A **raw image body** (``Content-Type: image/jpeg``, ``image/png``, ``image/bmp`` or
``application/octet-stream``, the file's bytes as the whole body: ``curl --data-binary @crop.jpg``) is
the other accepted form, for clients that need no multipart encoder (issue 19). It is answered here
in full, every error included, through the same checks and exception handlers as the route's: the
readiness dependency (503), :func:`check_query` (422/409), the upload size limit (413, checked while
the body arrives), unknown or malformed query parameters (422 ``validation_error``).

Everything else goes to the FastAPI route exactly as it arrived (the body already read is replayed
message by message): other parameters, another body shape, a part this parser does not fully
understand, a server that is not ready, and any query the route would refuse (``check_query``, the
upload's type and size). Errors therefore keep their one implementation. Errors found after that point
(an undecodable image, a full queue, a damaged gallery) are answered by the app's own exception
handlers, as the route's would be; anything unexpected propagates to ``RequestContext``'s 500.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.search import check_query, search_answer
from serving.api.uploads import IMAGE_CONTENT_TYPES
from serving.api.errors import ApiError
from serving.api.deps import get_runtime

logger = logging.getLogger(__name__)

_INT = re.compile(rb"[0-9]{1,9}")
_BOUNDARY = re.compile(rb"multipart/form-data;\s*boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})", re.IGNORECASE)
# The part's headers: a form-data disposition named "image" with a plain filename, optionally a content type.
_DISPOSITION = re.compile(rb'form-data;\s*name="image";\s*filename="([^"\\\r\n]*)"', re.IGNORECASE)
#: Content types of a raw image body (the whole body is the file); see the module docstring.
RAW_IMAGE_TYPES: frozenset[bytes] = frozenset(t.encode() for t in IMAGE_CONTENT_TYPES if t)


class _RouteTemplate:
    """What ``RequestContext`` reads of ``scope["route"]`` (its path template) for the metrics label."""

    path = "/search"


_SEARCH_ROUTE = _RouteTemplate()


class SearchFastPath:
    """ASGI middleware: answer plain ``POST /search`` requests directly (see the module docstring).

    Args:
        app: the wrapped application (the FastAPI app's inner stack).
        fastapi_app: the FastAPI app, for its runtime and its exception handlers.
    """

    def __init__(self, app: ASGIApp, *, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/search":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        content_type = _content_type(scope)
        if content_type is not None and content_type.split(b";")[0].strip().lower() in RAW_IMAGE_TYPES:
            await self._raw_image(scope, receive, send, started)
            return
        query = _parse_query(scope.get("query_string", b""))
        runtime = getattr(self.fastapi_app.state, "runtime", None)
        boundary = _boundary(content_type)
        if query is None or boundary is None or runtime is None or not runtime.ready:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = bytearray()
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                await self.app(scope, _replay(messages, receive), send)  # e.g. a disconnect: the route decides
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        part = _single_image_part(bytes(body), boundary)
        top_k, cameras = query
        try:
            camera_filter = check_query(runtime, top_k, cameras) if part is not None else None
        except ApiError:
            part = None  # the route answers it (422 / 409)
        if part is None or part[0] not in IMAGE_CONTENT_TYPES or len(part[1]) > runtime.settings.max_upload_bytes:
            await self.app(scope, _replay(messages, receive), send)  # incl. the route's own 415 / 413
            return
        scope["route"] = _SEARCH_ROUTE  # RequestContext counts it under the route template, as the route's
        try:
            payload = await search_answer(runtime, part[1], top_k, camera_filter, started)
        except Exception as exc:
            await self._answer_error(exc, Request(scope, receive), send)
            return
        await _send_json(send, payload)

    async def _raw_image(self, scope: Scope, receive: Receive, send: Send, started: float) -> None:
        """Answer a raw-image-body ``POST /search`` (module docstring), errors through the app's handlers."""
        scope["route"] = _SEARCH_ROUTE
        request = Request(scope, receive)
        try:
            query = _parse_query(scope.get("query_string", b""))
            if query is None:
                raise ApiError(422, "validation_error", "query parameters: only top_k and camera (repeatable), "
                                                        "each a non-negative integer, are accepted")
            runtime = await get_runtime(request)
            top_k, cameras = query
            limit = runtime.settings.max_upload_bytes
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away: nothing to answer
                body += message.get("body", b"")
                if len(body) > limit:
                    raise ApiError(413, "file_too_large", f"the image is larger than the limit of {limit} bytes")
                if not message.get("more_body", False):
                    break
            camera_filter = check_query(runtime, top_k, cameras)
            payload = await search_answer(runtime, bytes(body), top_k, camera_filter, started)
        except Exception as exc:
            await self._answer_error(exc, request, send)
            return
        await _send_json(send, payload)

    async def _answer_error(self, exc: Exception, request: Request, send: Send) -> None:
        """Answer ``exc`` with the app's own exception handler for it, as the route would; re-raise without one
        (``RequestContext`` turns it into the 500)."""
        handlers = self.fastapi_app.exception_handlers
        handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
        if handler is None:
            raise exc
        response = await handler(request, exc)
        await response(request.scope, request.receive, send)


def _parse_query(raw: bytes) -> tuple[int, list[int] | None] | None:
    """``(top_k, cameras)`` from a query string of plain integers only; None for anything else."""
    top_k: int | None = None
    cameras: list[int] = []
    if not raw:
        return 10, None
    for pair in raw.split(b"&"):
        key, sep, value = pair.partition(b"=")
        if not sep or not _INT.fullmatch(value):
            return None
        if key == b"top_k" and top_k is None:
            top_k = int(value)
        elif key == b"camera":
            cameras.append(int(value))
        else:
            return None
    return (10 if top_k is None else top_k), (cameras or None)


async def _send_json(send: Send, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _content_type(scope: Scope) -> bytes | None:
    """The request's Content-Type header as sent (None without one)."""
    for key, value in scope.get("headers", ()):
        if key == b"content-type":
            return value
    return None


def _boundary(content_type: bytes | None) -> bytes | None:
    """The multipart boundary of a ``multipart/form-data`` Content-Type; None for anything else."""
    match = _BOUNDARY.fullmatch(content_type.strip()) if content_type is not None else None
    return match.group(1) if match else None


def _single_image_part(body: bytes, boundary: bytes) -> tuple[str, bytes] | None:
    """``(content type, file bytes)`` when ``body`` is exactly one ``image`` file part; None otherwise.

    The shape (RFC 7578): ``--B CRLF headers CRLF CRLF content CRLF --B-- [CRLF]``. The content cannot hold
    the delimiter (``CRLF --B``), so the first delimiter after the headers must be the closing one.
    """
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    head_end = body.find(b"\r\n\r\n", len(opening))
    if head_end < 0:
        return None
    content_type = ""
    disposition = False
    for line in body[len(opening):head_end].split(b"\r\n"):
        name, sep, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if not sep:
            return None
        if name == b"content-disposition" and not disposition and _DISPOSITION.fullmatch(value):
            disposition = True
        elif name == b"content-type" and not content_type:
            try:
                content_type = value.decode("ascii").split(";")[0].strip().lower()
            except UnicodeDecodeError:
                return None
        else:
            return None
    if not disposition:
        return None
    start = head_end + 4
    delimiter = b"\r\n--" + boundary
    end = body.find(delimiter, start)
    if end < 0 or body[end + len(delimiter):] not in (b"--", b"--\r\n"):
        return None
    return content_type, body[start:end]


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back ``messages`` (already read), then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
