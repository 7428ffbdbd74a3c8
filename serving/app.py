"""The FastAPI application: wiring only (settings, lifespan, middleware, error handlers, routers).

``create_app`` is a factory, not a module-level ``app``, so importing this module loads nothing and every
test builds an app with its own settings. Run it with ``python -m serving serve`` or, from the
environment alone, ``uvicorn --factory serving.app:create_app``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from serving.api import api_router, docs, pages, thumbnails
from serving.api.access import AccessControl, AccessPolicy
from serving.api.audit import Auditor
from serving.api.budget import UploadBudget, UploadBudgetGate
from serving.api.errors import install_error_handlers
from serving.api.hosts import HostAllowList, HostCheck
from serving.api.keys import KeyRing
from serving.api.middleware import RequestContext
from serving.api.raw_search import RawImageSearch
from serving.core.audit_log import AuditError
from serving.core.config import KIB, Settings, get_settings
from serving.runtime.expiry import ScheduledExpiry
from serving.runtime.metrics import Metrics
from serving.runtime.state import Runtime
from xmreid.cli import package_version
from xmreid.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)

DESCRIPTION = """Cross-modality person re-identification: post an infrared crop, get the most similar RGB
gallery crops, ranked by cosine similarity of DFE descriptors (Hao et al., ACM MM 2019).

Every error is a JSON object `{"error": code, "detail": sentence}`; 500s add the `request_id` that is in the
server log. Concurrent searches are micro-batched into shared model calls."""

# Routes that accept uploads, and how many files each may carry; everything else gets a small body cap.
_UPLOAD_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/search"): "single", ("POST", "/search/batch"): "many", ("POST", "/gallery"): "many",
    ("POST", "/search/track"): "track",
}
_SMALL_BODY = 64 * KIB


def create_app(settings: Settings | None = None, *, embedder: Any = None, gallery: Any = None) -> FastAPI:
    """Build the retrieval server.

    Args:
        settings: server settings; from the environment (:func:`get_settings`) when None.
        embedder: an already loaded embedder to serve instead of loading ``settings.model``.
        gallery: an already loaded gallery to serve instead of loading ``settings.gallery``.

    Returns:
        The app. The model and gallery are loaded when its lifespan starts, not here.
    """
    settings = settings if settings is not None else get_settings()
    metrics = Metrics()
    policy = access_policy(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            runtime = await Runtime.start(settings, metrics, embedder=embedder, gallery=gallery)
        except UserError as exc:
            if exc.exit_code != EXIT_DAMAGED:
                raise
            # A damaged gallery is never served: stay up, say why on /readyz (503), and let the operator see it.
            logger.error("%s", exc)
            app.state.startup_error = str(exc)
            yield
            return
        app.state.runtime = runtime
        try:
            app.state.auditor = Auditor.open(settings)
        except AuditError as exc:
            await runtime.close()
            raise UserError(str(exc)) from None
        retention = ScheduledExpiry.from_settings(settings, runtime, app.state.auditor.writer)  # None when off
        try:
            yield
        finally:
            if retention is not None:
                await retention.stop()
            app.state.auditor.close()
            app.state.runtime = None
            app.state.shutdown_report = {"unsaved_changes": runtime.durable.unsaved_changes,
                                         "diverged": runtime.durable.diverged}
            await runtime.close()

    # docs_url/redoc_url None: serving.api.docs serves both pages with local assets (no CDN; air-gapped sites).
    app = FastAPI(title="xmreid retrieval server", version=package_version(), description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    app.state.auditor = None
    app.state.access = policy
    app.state.startup_error = None
    app.state.shutdown_report = {}
    app.state.counters = {"cancelled": 0}
    app.state.upload_budget = budget = UploadBudget(settings.upload_budget_bytes)
    app.state.hosts = hosts = HostAllowList(settings.allowed_hosts, settings.host)
    # Routes read these through serving.api.deps.app_settings; no dependency_overrides (see serving/api/deps.py).

    def body_limit(method: str, path: str) -> int:
        kind = _UPLOAD_ROUTES.get((method, path.rstrip("/") or "/"))
        if kind is None:
            return _SMALL_BODY
        files = {"single": 1, "track": settings.max_track_crops}.get(kind, settings.max_images_per_request)
        return settings.body_limit(files)

    # Added innermost first; RequestContext (added last) is outermost, so request ids, body caps, the minimum
    # body rate and metrics apply to everything inside. The Host check and the key check answer from the
    # headers alone, before the upload budget counts a byte of the body.
    app.add_middleware(RawImageSearch, fastapi_app=app)
    app.add_middleware(UploadBudgetGate, budget=budget)
    app.add_middleware(AccessControl, policy=policy)
    app.add_middleware(HostCheck, hosts=hosts)
    app.add_middleware(RequestContext, metrics=metrics, body_limit=body_limit, body_timeout_s=settings.body_timeout_s,
                       min_body_rate=settings.min_body_rate or None, counters=app.state.counters)
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(thumbnails.router)
    pages.install(app)  # HTML pages at / and /gallery, their assets under /static
    docs.install(app)  # /docs and /redoc, their assets under /docs-assets
    return app


def access_policy(settings: Settings) -> AccessPolicy:
    """The keys and open routes the settings ask for (:class:`UserError` for a bad keys file or a contradiction)."""
    legacy = settings.api_key.get_secret_value() if settings.api_key is not None else None
    keys = KeyRing.load(settings.api_keys_file, legacy)
    return AccessPolicy(keys, open_search=settings.open_search,
                        unauthenticated_changes=settings.allow_unauthenticated_changes)
