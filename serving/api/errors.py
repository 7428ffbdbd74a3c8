"""One error shape for every answer that is not a success: ``{"error": code, "detail": sentence}``.

Routes raise :class:`ApiError` (an ``HTTPException``, as the FastAPI template does); the layers below raise
their own domain exceptions (``ImageDecodeError``, ``BatcherOverloaded``, ``ChangeConflict``, ...), and
:data:`DOMAIN_ANSWERS` is the one table that says which status each becomes. FastAPI's own validation
errors and Starlette's 404/405 are reshaped too, so a client never has to parse two error formats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.core.imageio import ImageDecodeError, ImageTooLarge, TooManyPixels, UnsupportedImageFormat
from serving.embedders.base import ModelUnavailable
from serving.runtime.batching import BatcherClosed, BatcherOverloaded
from serving.runtime.durable import (
    ChangeConflict,
    ChangeInvalid,
    ChangeNotSaved,
    GalleryDamaged,
    GalleryDiverged,
    GalleryNotReady,
    StorageFull,
)

logger = logging.getLogger(__name__)

# Codes for HTTPExceptions raised without one (Starlette's 404/405, FastAPI's own 4xx).
_DEFAULT_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 409: "conflict", 413: "request_too_large", 415: "unsupported_media_type",
    422: "validation_error", 500: "internal_error", 503: "unavailable", 507: "insufficient_storage",
}


class ApiError(HTTPException):
    """An HTTP error with a machine-readable code, raised by routes and dependencies.

    Args:
        status_code: the HTTP status.
        error: short code, e.g. ``unknown_camera``.
        detail: one sentence for a human; name the valid values when there are some.
        headers: extra response headers (``WWW-Authenticate``, ``Retry-After``).
    """

    def __init__(self, status_code: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail={"error": error, "detail": detail}, headers=headers)


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    """A JSON error answer in the API's one shape."""
    return JSONResponse({"error": error, "detail": detail, **extra}, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    # ("query", "top_k") -> "query parameter 'top_k'"; ("body", "image") -> "form field 'image'".
    where = {"query": "query parameter", "body": "form field", "path": "path parameter", "header": "header"}
    if not loc:
        return "request"
    head, *rest = loc
    name = ".".join(str(part) for part in rest) or str(head)
    return f"{where.get(str(head), str(head))} '{name}'" if rest else str(head)


def validation_detail(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one readable sentence."""
    parts = []
    for err in exc.errors():
        where = _loc(err.get("loc", ()))
        if err.get("type") == "missing":
            parts.append(f"{where} is required")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if isinstance(exc.detail, dict) and "error" in exc.detail:
        body = exc.detail
    else:
        body = {"error": _DEFAULT_CODES.get(exc.status_code, f"http_{exc.status_code}"), "detail": str(exc.detail)}
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "validation_error", validation_detail(exc))


@dataclass(frozen=True)
class Answer:
    """How a domain exception is answered.

    Attributes:
        status: the HTTP status.
        error: the code, for exceptions that carry none (those that do, ``exc.error``, keep theirs).
        retry_after: the ``Retry-After`` header, for refusals that pass.
        request_id: add the request id to the body (server faults, which the log explains).
    """

    status: int
    error: str | None = None
    retry_after: str | None = None
    request_id: bool = False


#: Every domain exception the layers below raise, and its answer; a subclass not listed takes its
#: nearest listed base's. The one place where domain errors become HTTP status codes.
DOMAIN_ANSWERS: dict[type[Exception], Answer] = {
    ImageDecodeError: Answer(400),
    ImageTooLarge: Answer(413),
    UnsupportedImageFormat: Answer(415),
    TooManyPixels: Answer(422),
    BatcherOverloaded: Answer(503, "overloaded", retry_after="1"),
    BatcherClosed: Answer(503, "not_ready", retry_after="1"),
    ModelUnavailable: Answer(503, "model_unavailable", retry_after="1"),
    GalleryDamaged: Answer(503, "gallery_damaged", retry_after="30"),
    ChangeConflict: Answer(409),
    ChangeInvalid: Answer(422),
    GalleryNotReady: Answer(503, retry_after="1", request_id=True),
    StorageFull: Answer(507, retry_after="1", request_id=True),
    GalleryDiverged: Answer(500, request_id=True),
    ChangeNotSaved: Answer(500, "internal_error", request_id=True),
}


def answer_for(exc: BaseException) -> Answer | None:
    """The :data:`DOMAIN_ANSWERS` entry of ``exc``'s class or its nearest listed base; None for others."""
    for cls in type(exc).__mro__:
        found = DOMAIN_ANSWERS.get(cls)  # type: ignore[call-overload]
        if found is not None:
            return found
    return None


def status_for(exc: BaseException) -> int:
    """The HTTP status a domain exception is answered with (500 for anything not in the table)."""
    answer = answer_for(exc)
    return 500 if answer is None else answer.status


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    answer = answer_for(exc)
    if answer is None:  # registered only for the table's classes; kept total for safety
        raise exc
    error = answer.error or str(getattr(exc, "error", "")) or "internal_error"
    detail = str(getattr(exc, "detail", "") or exc)
    extra: dict[str, Any] = {}
    if answer.request_id:
        extra["request_id"] = request_id = _request_id(request)
        if isinstance(exc, ChangeNotSaved):
            # A 500 that is not a crash: the change was undone. The cause goes to the log under the request id.
            logger.error("%s %s: %s (request_id=%s)", request.method, request.url.path, exc, request_id,
                         exc_info=exc.__cause__ or exc)
            detail = f"{exc}; quote request id {request_id} when reporting it"
    headers = {"Retry-After": answer.retry_after} if answer.retry_after else None
    return error_response(answer.status, error, detail, headers=headers, **extra)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``.

    Unexpected exceptions are not handled here but by :class:`serving.api.middleware.RequestContext`,
    which knows the request id and can log it with the traceback.
    """
    app.add_exception_handler(StarletteHTTPException, _http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    for cls in DOMAIN_ANSWERS:
        app.add_exception_handler(cls, _domain_error)
