"""``/docs`` (Swagger UI) and ``/redoc`` served with their scripts from this server, never from a CDN.

FastAPI's default pages load Swagger UI and ReDoc from jsDelivr, so on an air-gapped site (the normal case
for a surveillance network) ``/docs`` renders blank. This follows FastAPI's documented recipe for
self-hosting the docs' JavaScript and CSS ("Custom Docs UI Static Assets"): the app is created with
``docs_url=None, redoc_url=None``, the asset files are mounted at :data:`ASSETS_PATH`, and the two pages are
built with ``get_swagger_ui_html`` / ``get_redoc_html`` pointing at them.

The assets come from the ``fastapi-offline`` wheel (MIT; it bundles the Swagger UI and ReDoc release files
under ``fastapi_offline/static``); only its files are used, not its app class. Swagger UI's validator
badge (which calls validator.swagger.io) and ReDoc's Google Fonts are switched off, and both pages carry a
Content-Security-Policy that confines scripts, styles, images, fonts and fetches to this server: ReDoc's
sidebar credit ("API docs by Redocly") loads its logo from cdn.redoc.ly unconditionally, and with the policy
the browser does not even ask (the image's own error handler hides it). Nothing the pages load leaves this
server.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/docs-assets"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# FastAPI's pages start Swagger UI / ReDoc with an inline script and style; data: is Swagger UI's inline SVG
# icons, blob: ReDoc's search worker.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_dir() -> Path:
    """The folder holding :data:`ASSET_FILES` (``fastapi_offline/static``).

    Raises:
        RuntimeError: fastapi-offline is not installed or lacks a file (a broken install, not a user error:
            it is a pinned requirement of the server).
    """
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.origin:
        raise RuntimeError("the API docs need the fastapi-offline package for their assets: "
                           "pip install -r requirements-serve.txt")
    folder = Path(spec.origin).parent / "static"
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"fastapi-offline at {folder} lacks {', '.join(missing)}; reinstall it")
    return folder


def _confined(response: HTMLResponse) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = DOCS_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def install(app: FastAPI) -> None:
    """Serve ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` with local assets (the app must have been
    created with ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _confined(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{title} - Swagger UI", oauth2_redirect_url=OAUTH2_REDIRECT,
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            # validatorUrl None: no badge, so no request to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None}))

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _confined(get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc",
                                        redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                                        redoc_favicon_url=f"{ASSETS_PATH}/favicon.png", with_google_fonts=False))
