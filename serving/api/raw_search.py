"""``POST /search`` with the image as the whole body: ``curl --data-binary @crop.jpg -H 'Content-Type: image/jpeg'``.

For clients that have no multipart encoder. The route's form parsing cannot take such a body, so this ASGI
middleware answers it before the route, with the route's own pieces: the readiness dependency
(:func:`serving.api.deps.get_runtime`), :func:`serving.api.search.check_options`, and the one answer path
(:func:`serving.api.search.search_answer`, encoded by :func:`serving.api.search.encode_answer`). Only
``top_k`` and ``camera`` (plain integers) are accepted as query parameters; anything else is a 422.

The body is held once, in one ``bytearray`` that each piece extends, and refused with 413 as soon as it
passes the upload limit: a body sent in a million one-byte pieces costs its own size, not a million
messages. Errors are answered by the app's own exception handlers, as the route's would be.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.api.deps import get_runtime
from serving.api.errors import ApiError
from serving.api.search import DEFAULT_TOP_K, check_options, search_answer
from serving.api.uploads import RAW_IMAGE_TYPES

_INT = re.compile(rb"[0-9]{1,9}")
_RAW_IMAGE_TYPES: frozenset[bytes] = frozenset(t.encode() for t in RAW_IMAGE_TYPES)


class _RouteTemplate:
    """What ``RequestContext`` reads of ``scope["route"]`` (its path template) for the metrics label."""

    path = "/search"


SEARCH_ROUTE = _RouteTemplate()


class RawImageSearch:
    """ASGI middleware: answer ``POST /search`` whose body is the image itself (module docstring).

    Args:
        app: the wrapped application (the FastAPI app's inner stack).
        fastapi_app: the FastAPI app, for its runtime and its exception handlers.
    """

    def __init__(self, app: ASGIApp, *, fastapi_app: Any) -> None:
        self.app = app
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/search"
                or not is_raw_image(header(scope, b"content-type"))):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        scope["route"] = SEARCH_ROUTE  # RequestContext counts it under the route template, as the route's
        request = Request(scope, receive)
        try:
            query = parse_query(scope.get("query_string", b""))
            if query is None:
                raise ApiError(422, "validation_error", "query parameters: only top_k and camera (repeatable), "
                                                        "each a non-negative integer, are accepted")
            runtime = await get_runtime(request)
            top_k, cameras = query
            body = await read_body(receive, runtime.settings.max_upload_bytes)
            if body is None:
                return  # the client went away: nothing to answer
            options = check_options(runtime, top_k, cameras)
            payload = await search_answer(runtime, body, options, started, request)
        except Exception as exc:
            await answer_error(self.fastapi_app, exc, request, send)
            return
        await send_json(send, payload)


async def read_body(receive: Receive, limit: int) -> bytearray | None:
    """The request body, held once (one ``bytearray`` each piece extends); None when the client disconnects.

    Raises:
        ApiError: 413 ``file_too_large`` as soon as more than ``limit`` bytes have arrived.
    """
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            raise ApiError(413, "file_too_large", f"the image is larger than the limit of {limit} bytes")
        if not message.get("more_body", False):
            return body


async def answer_error(fastapi_app: Any, exc: Exception, request: Request, send: Send) -> None:
    """Answer ``exc`` with the app's own exception handler for it, as the route would; re-raise without one
    (``RequestContext`` turns it into the 500)."""
    handlers = fastapi_app.exception_handlers
    handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers), None)
    if handler is None:
        raise exc
    response = await handler(request, exc)
    await response(request.scope, request.receive, send)


def parse_query(raw: bytes) -> tuple[int, list[int] | None] | None:
    """``(top_k, cameras)`` from a query string of plain integers only; None for anything else."""
    top_k: int | None = None
    cameras: list[int] = []
    if not raw:
        return DEFAULT_TOP_K, None
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
    return (DEFAULT_TOP_K if top_k is None else top_k), (cameras or None)


def is_raw_image(content_type: bytes | None) -> bool:
    """Whether a request's ``Content-Type`` names an image (or octet-stream) body, parameters aside."""
    return content_type is not None and content_type.split(b";")[0].strip().lower() in _RAW_IMAGE_TYPES


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) as sent, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


async def send_json(send: Send, payload: bytes) -> None:
    """Send a 200 ``application/json`` answer of ``payload``."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
