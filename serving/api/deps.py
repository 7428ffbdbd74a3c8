"""Dependencies routes declare with ``Annotated`` aliases (the FastAPI template's ``deps.py``).

``SettingsDep`` resolves to the settings of the app the request belongs to (``app.state.settings``, set by
``create_app(settings)``, which takes them from :func:`serving.core.config.get_settings` when given none).
Not through ``app.dependency_overrides[get_settings]``: while an app has any override, FastAPI rebuilds the
dependency tree of every route on every request, a large share of a search's own CPU.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from serving.api.errors import ApiError
from serving.core.config import Settings
from serving.runtime.state import Runtime


async def app_settings(request: Request) -> Settings:
    """The settings of the app serving ``request`` (``async``: no thread-pool hop to read an attribute)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="ApiKey",
    description="An API key: a `search` key (searches, thumbnails, stats) or an `admin` key (everything, "
                "including gallery changes). Keys are configured with --api-keys-file or XMREID_API_KEY.")


async def get_runtime(request: Request) -> Runtime:
    """The app's loaded :class:`Runtime`; 503 while it is not (yet) loaded or its batcher has stopped.

    ``async`` so FastAPI runs it on the event loop instead of handing it to its thread pool on every request.
    """
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        failed = getattr(request.app.state, "startup_error", None)
        if failed:
            raise ApiError(503, "gallery_damaged", failed, headers={"Retry-After": "30"})
        raise ApiError(503, "not_ready", "the model and gallery are not loaded yet; retry shortly",
                       headers={"Retry-After": "1"})
    if not runtime.ready:
        error = "gallery_damaged" if runtime.durable.damaged else "not_ready"
        raise ApiError(503, error, f"{runtime.not_ready_reason}; retry later", headers={"Retry-After": "1"})
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def api_key_header(key: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    """Documents ``X-API-Key`` on the routes that need a key; the check itself is
    :class:`serving.api.access.AccessControl`'s, made from the headers before the body is read."""


ApiKeyDep = Depends(api_key_header)
"""Use as ``dependencies=[ApiKeyDep]`` on the routes that need a key (OpenAPI shows the header there)."""
