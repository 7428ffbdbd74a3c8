"""Probes and metrics: ``/healthz`` (alive), ``/readyz`` (can serve), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serving.api.errors import ApiError
from serving.api.schemas import HealthResponse, ReadyResponse, error_responses
from serving.runtime.state import Runtime

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthResponse, summary="Liveness: the process answers HTTP",
            responses=error_responses())
async def healthz() -> HealthResponse:
    """Always ``ok`` while the event loop runs; an orchestrator restarts the process when this fails."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, summary="Readiness: model and gallery loaded",
            responses=error_responses(503))
async def readyz(request: Request) -> ReadyResponse:
    """``ready`` once the model and gallery are loaded and the micro-batcher runs; 503 otherwise, so a load
    balancer sends no searches to a server that cannot answer them."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        failed = getattr(request.app.state, "startup_error", None)
        if failed:  # a damaged gallery found at start: never served, and said why
            raise ApiError(503, "gallery_damaged", failed, headers={"Retry-After": "30"})
        raise ApiError(503, "not_ready", "the model and gallery are not loaded", headers={"Retry-After": "1"})
    reason = runtime.not_ready_reason
    if reason is not None:
        error = "gallery_damaged" if runtime.durable.damaged else "not_ready"
        raise ApiError(503, error, reason, headers={"Retry-After": "1"})
    durable = runtime.durable
    return ReadyResponse(status="ready", model=runtime.model_info(), gallery_size=runtime.size,
                         unsaved_changes=durable.unsaved_changes, writable=durable.writable,
                         last_save_error=durable.last_save_error)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"},
                       **error_responses()})
async def metrics(request: Request) -> Response:
    """Request counts and latencies by endpoint and status, micro-batch sizes, model calls, gallery size."""
    body, content_type = request.app.state.metrics.render()
    return Response(content=body, media_type=content_type)
