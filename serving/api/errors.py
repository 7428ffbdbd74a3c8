"""One error shape for every answer that is not a success: ``{"error": code, "detail": sentence}``.

Routes raise :class:`ApiError` (an ``HTTPException``, as the FastAPI template does); the layers below raise
their own domain exceptions (``ImageDecodeError``, ``BatcherOverloaded``, ...), and the handlers here turn
each into its status and body. FastAPI's own validation errors and Starlette's 404/405 are reshaped too, so
a client never has to parse two error formats.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.runtime.batching import BatcherClosed, BatcherOverloaded
from serving.runtime.durable import ChangeNotSaved, ChangeRefused, GalleryDamaged
from serving.embedders.base import ModelUnavailable
from serving.core.imageio import ImageDecodeError

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


async def _decode_error(request: Request, exc: ImageDecodeError) -> JSONResponse:
    return error_response(exc.status_code, exc.error, exc.detail)


async def _overloaded(request: Request, exc: BatcherOverloaded) -> JSONResponse:
    return error_response(503, "overloaded", str(exc), headers={"Retry-After": "1"})


async def _closed(request: Request, exc: BatcherClosed) -> JSONResponse:
    return error_response(503, "not_ready", str(exc), headers={"Retry-After": "1"})


async def _change_refused(request: Request, exc: ChangeRefused) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (503, 507) else None
    extra = {"request_id": _request_id(request)} if exc.status >= 500 else {}
    return error_response(exc.status, exc.error, exc.detail, headers=headers, **extra)


async def _change_not_saved(request: Request, exc: ChangeNotSaved) -> JSONResponse:
    # A 500 that is not a crash: the change was undone. The cause goes to the log under the request id.
    request_id = _request_id(request)
    logger.error("%s %s: %s (request_id=%s)", request.method, request.url.path, exc, request_id,
                 exc_info=exc.__cause__ or exc)
    return error_response(500, "internal_error", f"{exc}; quote request id {request_id} when reporting it",
                          request_id=request_id)


async def _model_unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
    return error_response(503, "model_unavailable", str(exc), headers={"Retry-After": "1"})


async def _damaged(request: Request, exc: GalleryDamaged) -> JSONResponse:
    return error_response(503, "gallery_damaged", str(exc), headers={"Retry-After": "30"})


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app``.

    Unexpected exceptions are not handled here but by :class:`serving.api.middleware.RequestContext`,
    which knows the request id and can log it with the traceback.
    """
    app.add_exception_handler(StarletteHTTPException, _http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ImageDecodeError, _decode_error)  # type: ignore[arg-type]
    app.add_exception_handler(BatcherOverloaded, _overloaded)  # type: ignore[arg-type]
    app.add_exception_handler(BatcherClosed, _closed)  # type: ignore[arg-type]
    app.add_exception_handler(ChangeRefused, _change_refused)  # type: ignore[arg-type]
    app.add_exception_handler(ChangeNotSaved, _change_not_saved)  # type: ignore[arg-type]
    app.add_exception_handler(GalleryDamaged, _damaged)  # type: ignore[arg-type]
    app.add_exception_handler(ModelUnavailable, _model_unavailable)  # type: ignore[arg-type]
