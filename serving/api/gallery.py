"""``/gallery``: add crops, remove items, reload, inspect the gallery. Changes need the API key when one is set.

Every change is on disk when it is acknowledged, or it did not happen (:mod:`serving.runtime.durable`): the answers
that refuse one (409, 507, 500) all say that nothing was changed. ``POST /gallery`` takes an
``Idempotency-Key`` header: a retry with the same key (after a timeout, say) gets the first answer's ids
back with status 200 and ``Idempotent-Replayed: true``, and adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Path, Request, Response, UploadFile
from pydantic import TypeAdapter, ValidationError

from serving.api.audit import auditor
from serving.api.deps import ApiKeyDep, RuntimeDep
from serving.api.errors import ApiError
from serving.api.schemas import (
    GalleryAddResponse,
    GalleryDeleteResponse,
    GalleryItemMetadata,
    GalleryReloadResponse,
    GalleryStatsResponse,
    error_responses,
)
from serving.api.uploads import decode_uploads, read_uploads

router = APIRouter(prefix="/gallery", tags=["gallery"])

_METADATA = TypeAdapter(list[GalleryItemMetadata])
# The ``metadata`` form field is a JSON string, so OpenAPI would show it as a bare string; ``contentSchema``
# (OpenAPI 3.1 / JSON Schema 2020-12) publishes what that string must decode to, from the same model that
# validates it, so a client reading the schema sees exactly the types the metadata store accepts.
_METADATA_SCHEMA: dict[str, Any] = {"contentMediaType": "application/json",
                                    "contentSchema": {"type": "array",
                                                      "items": GalleryItemMetadata.model_json_schema()}}
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:~+/=-]{1,128}$")
_CHANGE_ERRORS = (409, 507)


def request_digest(datas: list[bytes], metadata: str) -> str:
    """What identifies an add request behind its idempotency key: a hash of its files and metadata, in order."""
    digest = hashlib.sha256()
    for data in datas:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    digest.update(metadata.encode("utf-8"))
    return "sha256:" + digest.hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    """The ``Idempotency-Key`` header, checked (1-128 URL-safe characters), or None when absent."""
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(422, "invalid_idempotency_key", "the Idempotency-Key header must be 1 to 128 characters "
                                                       "from A-Z a-z 0-9 . _ : ~ + / = - (a UUID works)")
    return key


def parse_metadata(text: str, count: int) -> list[dict[str, Any]]:
    """The ``metadata`` form field: a JSON list with one object per uploaded image.

    Raises:
        ApiError: 422 naming what is wrong (not JSON, not a list, wrong length, a bad entry).
    """
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, "invalid_metadata",
                       f"metadata is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:  # thousands of nested brackets: was a 500
        raise ApiError(422, "invalid_metadata", "metadata is nested too deeply to be parsed") from None
    if not isinstance(raw, list):
        raise ApiError(422, "invalid_metadata", f"metadata must be a JSON list of {count} objects "
                                                f"(one per image), got {type(raw).__name__}")
    if len(raw) != count:
        raise ApiError(422, "invalid_metadata", f"metadata has {len(raw)} entries but {count} images were sent; "
                                                f"they must match")
    try:
        items = _METADATA.validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(f"metadata[{'.'.join(map(str, e['loc']))}]: {e['msg']}" for e in exc.errors())
        raise ApiError(422, "invalid_metadata", f"{problems} (valid keys: camera (int, required), person_label, "
                                                f"source, timestamp, extra, track_id)") from None
    rows = [item.model_dump(exclude_none=True) for item in items]
    for i, row in enumerate(rows):  # SQLite stores 64-bit integers; a larger one was a 500 (OverflowError)
        for key in ("camera", "person_label", "track_id"):
            if isinstance(row.get(key), int) and not -(2**63) <= row[key] < 2**63:
                raise ApiError(422, "invalid_metadata", f"metadata[{i}].{key}: {row[key]} does not fit in a "
                                                        f"64-bit integer")
    return rows


@router.post("", response_model=GalleryAddResponse, status_code=201, dependencies=[ApiKeyDep],
             summary="Add crops to the gallery",
             responses={200: {"model": GalleryAddResponse, "description": "a retry of an add already made with this "
                                                                          "Idempotency-Key: its ids, nothing added"},
                        **error_responses(400, 401, 403, 408, 409, 413, 415, 422, 503, 507)})
async def add_items(runtime: RuntimeDep, request: Request, response: Response,
                    images: Annotated[list[UploadFile], File(description="the crops to add (repeat the `images` "
                                                                         "field), at most max_images_per_request")],
                    metadata: Annotated[str, Form(description="JSON list, one object per image in upload order: "
                                                              '`[{"camera": 1, "person_label": 7, "source": "cam1/'
                                                              '0007/0001.jpg", "timestamp": 1700000000, '
                                                              '"extra": {}, "track_id": 3}]`; camera is required',
                                                  json_schema_extra=_METADATA_SCHEMA)],
                    idempotency_key: Annotated[str | None, Header(
                        alias="Idempotency-Key", description="makes a retry safe: an add already made with this key "
                                                             "is answered again (200), never repeated")] = None,
                    ) -> GalleryAddResponse:
    """Embed the crops with the server's model and add them with their metadata; saved before answering."""
    from index.errors import GalleryError

    key = check_idempotency_key(idempotency_key)
    limit = runtime.settings.max_images_per_request
    if len(images) > limit:
        raise ApiError(422, "too_many_images", f"{len(images)} images sent; at most {limit} per request")
    items = parse_metadata(metadata, len(images))
    datas = await read_uploads(runtime, images)
    digest = request_digest(datas, metadata) if key else ""
    if key is not None:
        found = await runtime.find_request(key)
        if found is not None and found[0] == digest:  # answered before: skip the model (the add re-checks)
            response.status_code = 200
            response.headers["Idempotent-Replayed"] = "true"
            return GalleryAddResponse(ids=found[1], size=runtime.size)
    decoded = await decode_uploads(runtime, images, datas)
    vectors = await runtime.batcher.submit_many(decoded)
    try:
        result = await runtime.add(vectors, items, key, digest)
    except GalleryError as exc:  # metadata the gallery refuses (e.g. an unparseable timestamp)
        raise ApiError(422, "invalid_metadata", f"{exc}; nothing was changed") from None
    if result.replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    else:
        await auditor(request).record(request, images=datas, committed=True, added=list(result.ids))
    return GalleryAddResponse(ids=result.ids, size=result.size)


@router.delete("/{item_id}", response_model=GalleryDeleteResponse, dependencies=[ApiKeyDep],
               summary="Remove one gallery item", responses=error_responses(401, 403, 404, 409, 422, 503, 507))
async def delete_item(runtime: RuntimeDep, request: Request,
                      item_id: Annotated[int, Path(ge=0, le=2**63 - 1,  # ids are int64 (an id past it was a 500)
                                                   description="the gallery id (as returned by search or add)")]
                      ) -> GalleryDeleteResponse:
    """Remove the item from the index and its metadata; saved before answering."""
    from index.errors import UnknownIdsError

    try:
        size = await runtime.remove(item_id)
    except UnknownIdsError:
        raise ApiError(404, "not_found", f"gallery id {item_id} does not exist") from None
    await auditor(request).record(request, committed=True, removed=[item_id])
    return GalleryDeleteResponse(deleted=item_id, size=size)


@router.post("/reload", response_model=GalleryReloadResponse, dependencies=[ApiKeyDep],
             summary="Reload the gallery from disk, or install the staging copy",
             responses=error_responses(401, 403, 409, 422, 503, 507))
async def reload_gallery(runtime: RuntimeDep, request: Request) -> GalleryReloadResponse:
    """With a staging gallery configured (``--staging-gallery``) that holds a copy of this gallery at its
    current save with crops indexed into it, install it: it is checked like any load, saved into the
    served directory as its next version, and swapped in for searches at once. Otherwise re-read the
    served directory (a read-only replica, or a server whose directory an indexer extended)."""
    answer = await runtime.reload()
    await auditor(request).record(request, committed=True, reloaded=answer)
    return GalleryReloadResponse(**answer)


@router.get("/stats", response_model=GalleryStatsResponse, summary="Gallery size, cameras and index",
            dependencies=[ApiKeyDep],
            responses=error_responses(401, 403, 503))
async def stats(runtime: RuntimeDep) -> GalleryStatsResponse:
    """Counts per camera, descriptor size, the model fingerprint and what the index is."""
    raw = await runtime.stats()
    index_facts = {key: value for key, value in raw.items()
                   if key not in {"count", "dim", "kind", "fingerprint", "cameras", "labelled", "next_id",
                                  "created", "saved", "directory"}}  # the server's paths are not the client's business
    return GalleryStatsResponse(
        size=int(raw["count"]), dim=int(raw["dim"]), kind=str(raw["kind"]), fingerprint=raw.get("fingerprint"),
        model_fingerprint=runtime.embedder.fingerprint,
        cameras={str(k): int(v) for k, v in dict(raw.get("cameras", {})).items()},
        labelled=int(raw.get("labelled", 0)), next_id=int(raw.get("next_id", 0)), created=raw.get("created") or None,
        saved=raw.get("saved"), index=index_facts)
