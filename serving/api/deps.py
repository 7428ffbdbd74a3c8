"""Dependencies routes declare with ``Annotated`` aliases (the FastAPI template's ``deps.py``).

``SettingsDep`` resolves to the settings of the app the request belongs to (``app.state.settings``, set by
``create_app(settings)``, which takes them from :func:`serving.core.config.get_settings` when given none).
Not through ``app.dependency_overrides[get_settings]``: while an app has any override, FastAPI rebuilds the
dependency tree of every route on every request, a large share of a search's own CPU.
"""

from __future__ import annotations

import hmac
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
    description="The server's API key; required for gallery changes when the server is started with one.")


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


def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(_api_key_header)] = None) -> None:
    """Let the request through when no key is configured or ``X-API-Key`` matches it.

    The comparison is ``hmac.compare_digest`` on bytes, whose time does not depend on where the first
    differing byte is, so the key cannot be guessed a byte at a time from response timings. Neither the
    configured nor the presented key is ever logged or echoed.

    Raises:
        ApiError: 401 when the header is missing, 403 when it does not match.
    """
    expected = settings.api_key
    if expected is None:
        return
    if not key:
        raise ApiError(401, "missing_api_key", "this endpoint needs the server's API key in the X-API-Key header",
                       headers={"WWW-Authenticate": "ApiKey"})
    if not hmac.compare_digest(key.encode("utf-8"), expected.get_secret_value().encode("utf-8")):
        raise ApiError(403, "invalid_api_key", "the X-API-Key header does not match the server's API key")


ApiKeyDep = Depends(require_api_key)
"""Use as ``dependencies=[ApiKeyDep]`` on mutating routes."""
