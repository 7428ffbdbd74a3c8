"""A server-wide budget on upload bytes in flight: beyond it, new uploads get 503 with ``Retry-After``.

Each route caps its own body (:mod:`serving.api.middleware`), but nothing else bounds what many uploads at once
hold: a request keeps its body (in memory, or spooled to a temporary file for big multipart parts) until it is
answered, so eight maximal ``/search/batch`` requests hold eight times the largest body. The budget counts the
bytes of every request body from the moment it is admitted until its answer is sent:

* a body whose declared ``Content-Length`` does not fit in what is left is answered ``503 uploads_busy`` with
  ``Retry-After`` before a byte of it is read;
* every body counts the bytes that have actually arrived, piece by piece, and is answered the same way the
  moment a piece does not fit (what it sent is released). Counting arrivals rather than declarations means a
  client that declares a large body and then sends it slowly holds only what it sent (and the minimum body
  rate ends it).

So the server's memory and temporary files grow with the uploads it holds by at most the budget. Requests
without a body (searches by GET, thumbnails, stats) are not counted.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import ApiError
from serving.api.middleware import content_length

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 1


class UploadBudget:
    """Bytes of request bodies admitted and not yet answered, under a ceiling.

    The event loop is the only caller, so the counts need no lock.

    Args:
        limit: the most bytes in flight at once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self.peak = 0
        self.refused = 0

    def reserve(self, size: int) -> bool:
        """Admit ``size`` more bytes if they fit under the limit (True), or count a refusal (False)."""
        if self.in_flight + size > self.limit:
            self.refused += 1
            return False
        self.in_flight += size
        self.peak = max(self.peak, self.in_flight)
        return True

    def release(self, size: int) -> None:
        """Return ``size`` bytes admitted earlier."""
        self.in_flight -= size


class UploadsBusy(ApiError):
    """Raised from ``receive`` when a streamed body's next piece does not fit in the budget."""

    def __init__(self, limit: int) -> None:
        super().__init__(503, "uploads_busy", f"the server already holds as many upload bytes as it accepts at once "
                                              f"({limit} bytes); retry in {RETRY_AFTER_S} s",
                         headers={"Retry-After": str(RETRY_AFTER_S)})


class UploadBudgetGate:
    """ASGI middleware: count every request body against an :class:`UploadBudget` (module docstring)."""

    def __init__(self, app: ASGIApp, *, budget: UploadBudget) -> None:
        self.app = app
        self.budget = budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        budget = self.budget
        declared = content_length(scope)
        if declared is not None and budget.in_flight + declared > budget.limit:
            budget.refused += 1
            logger.warning("upload refused with 503: %d bytes declared, %d of %d bytes in flight", declared,
                           budget.in_flight, budget.limit)
            raise UploadsBusy(budget.limit)  # answered by RequestContext, before a byte of the body is read
        held = 0

        async def counted() -> Message:
            nonlocal held
            message = await receive()
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if not budget.reserve(size):
                    raise UploadsBusy(budget.limit)
                held += size
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            budget.release(held)
