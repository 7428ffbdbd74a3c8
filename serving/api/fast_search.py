"""A shortcut for the common ``POST /search``: one well-formed multipart image, plain query parameters.

FastAPI's per-request dependency and parameter solving, Starlette's request and form objects and
python-multipart's callback parser cost more event-loop CPU than everything else the server does for a
search outside the model. For the request nearly every client sends (``top_k`` and ``camera`` as plain
integers, a ``multipart/form-data`` body holding exactly one ``image`` file part) that machinery decides
nothing, so :class:`SearchFastPath` parses it directly and answers through the route's own answer path
(:func:`serving.api.search.search_answer`).

Everything else goes to the FastAPI route exactly as it arrived (the body already read is replayed as one
message): other parameters, another body shape, a part this parser does not fully understand, a server
that is not ready, and any query the route would refuse (``check_options``, the upload's type and size).
Errors therefore keep their one implementation; those found while answering (an undecodable image, a full
queue, a damaged gallery) are answered by the app's own exception handlers. The body is held once.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import ApiError
from serving.api.raw_search import SEARCH_ROUTE, answer_error, header, parse_query, send_json
from serving.api.search import check_options, search_answer
from serving.api.uploads import IMAGE_CONTENT_TYPES

logger = logging.getLogger(__name__)

_BOUNDARY = re.compile(rb"multipart/form-data;\s*boundary=([0-9A-Za-z'()+_,./:=?-]{1,70})", re.IGNORECASE)
# The part's headers: a form-data disposition named "image" with a plain filename, optionally a content type.
_DISPOSITION = re.compile(rb'form-data;\s*name="image";\s*filename="([^"\\\r\n]*)"', re.IGNORECASE)


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
        query = parse_query(scope.get("query_string", b""))
        runtime = getattr(self.fastapi_app.state, "runtime", None)
        boundary = _boundary(header(scope, b"content-type"))
        if query is None or boundary is None or runtime is None or not runtime.ready:
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay(body, message, receive), send)  # e.g. a disconnect: the route decides
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        part = _single_image_part(body, boundary)
        top_k, cameras = query
        try:
            options = check_options(runtime, top_k, cameras) if part is not None else None
        except ApiError:
            part = None  # the route answers it (422 / 409)
        if (part is None or options is None or part[0] not in IMAGE_CONTENT_TYPES
                or len(part[1]) > runtime.settings.max_upload_bytes):
            await self.app(scope, _replay(body, None, receive), send)  # incl. the route's own 415 / 413
            return
        scope["route"] = SEARCH_ROUTE  # RequestContext counts it under the route template, as the route's
        try:
            payload = await search_answer(runtime, part[1], options, started)
        except Exception as exc:
            await answer_error(self.fastapi_app, exc, Request(scope, receive), send)
            return
        await send_json(send, payload)


def _boundary(content_type: bytes | None) -> bytes | None:
    """The multipart boundary of a ``multipart/form-data`` Content-Type; None for anything else."""
    match = _BOUNDARY.fullmatch(content_type.strip()) if content_type is not None else None
    return match.group(1) if match else None


def _single_image_part(body: bytearray | bytes, boundary: bytes) -> tuple[str, memoryview] | None:
    """``(content type, file bytes)`` when ``body`` is exactly one ``image`` file part; None otherwise.

    The shape (RFC 7578): ``--B CRLF headers CRLF CRLF content CRLF --B-- [CRLF]``. The content cannot hold
    the delimiter (``CRLF --B``), so the first delimiter after the headers must be the closing one. The file
    is a view into ``body``, not a copy.
    """
    opening = b"--" + boundary + b"\r\n"
    if not body.startswith(opening):
        return None
    head_end = body.find(b"\r\n\r\n", len(opening))
    if head_end < 0:
        return None
    content_type = ""
    disposition = False
    for line in bytes(body[len(opening):head_end]).split(b"\r\n"):
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
    return content_type, memoryview(body)[start:end]


def _replay(body: bytearray, pending: Message | None, receive: Receive) -> Receive:
    """``receive`` that first gives back the body already read (one message, not a copy), then ``pending``
    (the message that ended the reading, if it was not the body's last), then reads on."""
    queue: list[Message] = [{"type": "http.request", "body": body, "more_body": pending is not None}]
    if pending is not None:
        queue.append(pending)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed
