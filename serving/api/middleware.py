"""The one ASGI middleware every request goes through: request id, body-size cap, metrics, last-resort 500.

It is a plain ASGI class rather than Starlette's ``BaseHTTPMiddleware`` because it has to wrap ``receive``
(to stop reading an over-long body part-way) and must not buffer responses.

* **Request id.** Taken from a well-formed incoming ``X-Request-ID`` (so a proxy's id carries through) or
  made up, stored in ``request.state.request_id`` and echoed in the ``X-Request-ID`` response header.
* **Body cap, before reading.** A ``Content-Length`` over the route's limit is refused with 413 before a
  single body byte is read; a body without one (chunked) is counted as it streams and cut off with 413 the
  moment it passes the limit, so a client cannot make the server spool an unbounded upload to disk.
* **Metrics.** Every answer is counted by route *template* (``/gallery/{item_id}``, not the id) so label
  cardinality stays bounded; unmatched paths share one ``unmatched`` label.
* **Body read timeout and minimum rate.** Each piece of a request body must arrive within ``body_timeout_s``
  of the last one, and the whole body within ``body_timeout_s + bytes received / min_body_rate`` seconds of
  its start (Apache's ``mod_reqtimeout`` rule), or the request is answered 408: a client that stops sending
  mid-upload, or drip-feeds a byte every few seconds, cannot hold a request, its memory and its connection
  for ever. The request *head* has its own timeout
  in the protocol (:mod:`serving.api.connections`), since no ASGI app runs before the head is complete.
* **Cancelled requests.** uvicorn cancels requests still running when the graceful-shutdown period ends;
  they are counted (``counters["cancelled"]``) so that the shutdown can say so and exit non-zero.
* **500.** An exception nothing else handled is logged with its traceback and the request id, and answered
  ``{"error": "internal_error", "detail": ..., "request_id": ...}``: the client can quote the id, the operator
  can find it in the log, and no internals leak into the body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import ApiError
from serving.core.logs import request_id_var
from serving.runtime.metrics import Metrics

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # anything else could smuggle text into log lines

_HAS_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+

BodyLimit = Callable[[str, str], int]
"""(method, path) -> largest body in bytes accepted for that route."""


class BodyTooLarge(ApiError):
    """Raised from ``receive`` when a streamed body passes its route's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "request_too_large", f"the request body is larger than the {limit} bytes this "
                                                   f"endpoint accepts")


class BodyTimeout(ApiError):
    """Raised from ``receive`` when the next piece of the body does not arrive in time."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, "request_timeout", f"the request body stopped arriving: nothing came for "
                                                 f"{timeout_s:g} s")


class BodyTooSlow(ApiError):
    """Raised from ``receive`` when the body arrives more slowly than the minimum rate allows."""

    def __init__(self, received: int, seconds: float, min_rate: float) -> None:
        super().__init__(408, "request_timeout", f"the request body arrived too slowly: {received} bytes in "
                                                 f"{seconds:.0f} s; the server needs at least {min_rate:g} bytes/s")


class RequestContext:
    """ASGI middleware: see the module docstring.

    Args:
        app: the wrapped application.
        metrics: where request counts and latencies go.
        body_limit: the byte limit for a (method, path).
        body_timeout_s: the longest wait for the next piece of a body (None: no limit).
        min_body_rate: bytes per second a body must average beyond its first ``body_timeout_s`` (None: no limit).
        counters: where to count cancelled requests (``"cancelled"``); a fresh dict when None.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, body_limit: BodyLimit, body_timeout_s: float | None = None,
                 min_body_rate: float | None = None, counters: dict[str, int] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit
        self.body_timeout_s = body_timeout_s
        self.min_body_rate = min_body_rate
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("cancelled", 0)
        # Requests inside the app right now; read by the in-flight gauge at scrape time (a plain int: the
        # event loop is the only writer, so no lock per request).
        self.inflight = 0
        metrics.inflight.set_function(lambda: self.inflight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        context_token = request_id_var.set(request_id)  # log records of this request carry its id
        self.inflight += 1
        response_started = False
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        limit = self.body_limit(scope["method"], scope["path"])
        try:
            declared = content_length(scope)
            if declared is not None and declared > limit:
                # Refuse before reading: the body may be gigabytes and is not ours to spool.
                await send_json(send_with_id, 413, {
                    "error": "request_too_large",
                    "detail": f"the request body is {declared} bytes; this endpoint accepts at most {limit} bytes"})
                return
            await self.app(scope, _capped(receive, limit, self.body_timeout_s, self.min_body_rate), send_with_id)
        except asyncio.CancelledError:
            self.counters["cancelled"] += 1
            logger.warning("request %s %s (request_id=%s) was cancelled before it finished", scope["method"],
                           scope["path"], request_id)
            raise
        except Exception as exc:
            if response_started:
                logger.exception("request %s failed after its response started", request_id)
                raise
            if isinstance(exc, ApiError):  # ours, raised outside FastAPI's handlers (bad Content-Length)
                headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (exc.headers or {}).items()]
                await send_json(send_with_id, exc.status_code, exc.detail, headers)  # type: ignore[arg-type]
                return
            logger.exception("internal error in %s %s (request_id=%s)", scope["method"], scope["path"],
                             request_id)
            await send_json(send_with_id, 500, {
                "error": "internal_error", "request_id": request_id,
                "detail": f"the server failed to handle this request; quote request id {request_id} "
                          f"when reporting it"})
        finally:
            self.inflight -= 1
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - started_at)
            request_id_var.reset(context_token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def content_length(scope: Scope) -> int | None:
    """The request's declared ``Content-Length`` (None when absent; 400 :class:`ApiError` when not a number)."""
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise ApiError(400, "bad_request", f"Content-Length {value!r} is not a number") from None
    return length if length >= 0 else None


def _capped(receive: Receive, limit: int, timeout_s: float | None = None, min_rate: float | None = None) -> Receive:
    """``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` body bytes arrived,
    :class:`BodyTimeout` when the body's next piece takes longer than ``timeout_s``, and :class:`BodyTooSlow`
    when the body is still incomplete ``timeout_s + received / min_rate`` seconds after its first read.

    The timeouts apply only while body is still expected: afterwards the app may wait on ``receive`` for a
    disconnect for as long as its response takes.
    """
    total = 0
    complete = False
    started: float | None = None

    async def wrapped() -> Message:
        nonlocal total, complete, started
        if timeout_s is None or complete:
            message = await receive()
        else:
            now = time.monotonic()
            if started is None:
                started = now
            wait = timeout_s
            slow = False
            if min_rate:
                allowed = started + timeout_s + total / min_rate - now
                if allowed <= 0:
                    raise BodyTooSlow(total, now - started, min_rate)
                slow = allowed < wait
                wait = min(wait, allowed)
            try:
                if _HAS_TIMEOUT:
                    # asyncio.timeout (3.11+) arms a timer on the running task; wait_for (before 3.12) wraps
                    # every receive in a task of its own, a measurable cost per request.
                    async with asyncio.timeout(wait):
                        message = await receive()
                else:
                    message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                if slow:
                    raise BodyTooSlow(total, time.monotonic() - started, min_rate or 0.0) from None
                raise BodyTimeout(timeout_s) from None
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise BodyTooLarge(limit)
            complete = not message.get("more_body", False)
        else:
            complete = True
        return message

    return wrapped


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``status`` with the JSON ``body`` (and extra ``headers``) straight through ASGI."""
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})
