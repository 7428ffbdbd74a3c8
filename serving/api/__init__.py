"""The HTTP layer: one router per resource (FastAPI template layout), plus the error-to-status table
(:mod:`serving.api.errors`), middleware, connection limits, uploads, schemas and pages."""

from __future__ import annotations

from fastapi import APIRouter

from serving.api import gallery, health, search, track, tracks

api_router = APIRouter()
api_router.include_router(search.router)
api_router.include_router(track.router)
api_router.include_router(gallery.router)
api_router.include_router(tracks.router)
api_router.include_router(health.router)

__all__ = ["api_router"]
