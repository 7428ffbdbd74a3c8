"""The operator's web pages: search at ``/``, the gallery overview at ``/gallery``, assets under ``/static``.

Plain HTML, CSS and JavaScript shipped in ``serving/static`` (package data), with no build step: the pages
call the same JSON API as any client (``POST /search``, ``GET /gallery/stats``, the thumbnails), so there
is one source of truth for ranking and errors. Pages are sent with a strict Content-Security-Policy: scripts
and styles only from this server and no inline script, so a gallery ``source`` or ``person_label`` holding
markup can never run in an operator's browser (the scripts also only ever set ``textContent``).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"

# blob: is the preview of the operator's own query file (URL.createObjectURL); nothing else leaves 'self'.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate, so a server upgrade never pairs old HTML with new scripts
}

router = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/")
async def search_page() -> FileResponse:
    """The search page: drop an infrared crop, see the ranked RGB gallery matches."""
    return _page("index.html")


@router.get("/gallery")
async def gallery_page() -> FileResponse:
    """The gallery overview (the same facts as ``GET /gallery/stats``, for people)."""
    return _page("gallery.html")


def install(app: FastAPI) -> None:
    """Add the pages and mount their assets at ``/static`` (``StaticFiles`` answers ETag/Last-Modified)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
