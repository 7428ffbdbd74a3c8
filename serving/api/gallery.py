"""``/gallery``: add crops, remove items, inspect the gallery. Changes need the API key when one is set."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, UploadFile
from pydantic import TypeAdapter, ValidationError

from serving.api.uploads import decode_uploads
from serving.core.errors import ApiError
from serving.deps import ApiKeyDep, RuntimeDep
from serving.schemas import (GalleryAddResponse, GalleryDeleteResponse, GalleryItemMetadata, GalleryStatsResponse,
                             error_responses)

router = APIRouter(prefix="/gallery", tags=["gallery"])

_METADATA = TypeAdapter(list[GalleryItemMetadata])


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
                                                f"source, timestamp, extra)") from None
    rows = [item.model_dump(exclude_none=True) for item in items]
    for i, row in enumerate(rows):  # SQLite stores 64-bit integers; a larger one was a 500 (OverflowError)
        for key in ("camera", "person_label"):
            if isinstance(row.get(key), int) and not -(2**63) <= row[key] < 2**63:
                raise ApiError(422, "invalid_metadata", f"metadata[{i}].{key}: {row[key]} does not fit in a "
                                                        f"64-bit integer")
    return rows


@router.post("", response_model=GalleryAddResponse, status_code=201, dependencies=[ApiKeyDep],
             summary="Add crops to the gallery", responses=error_responses(400, 401, 403, 413, 415, 422, 503))
async def add_items(runtime: RuntimeDep,
                    images: Annotated[list[UploadFile], File(description="the crops to add (repeat the `images` "
                                                                         "field), at most max_images_per_request")],
                    metadata: Annotated[str, Form(description="JSON list, one object per image in upload order: "
                                                              '`[{"camera": 1, "person_label": 7, "source": "cam1/'
                                                              '0007/0001.jpg", "timestamp": 1700000000, '
                                                              '"extra": {}}]`; camera is required')]
                    ) -> GalleryAddResponse:
    """Embed the crops with the server's model and add them with their metadata; saved before answering."""
    from index.errors import GalleryError

    limit = runtime.settings.max_images_per_request
    if len(images) > limit:
        raise ApiError(422, "too_many_images", f"{len(images)} images sent; at most {limit} per request")
    items = parse_metadata(metadata, len(images))
    decoded = await decode_uploads(runtime, images)
    vectors = await runtime.batcher.submit_many(decoded)
    try:
        ids, size = await runtime.add(vectors, items)
    except GalleryError as exc:  # metadata the gallery refuses (e.g. an unparseable timestamp)
        raise ApiError(422, "invalid_metadata", str(exc)) from None
    return GalleryAddResponse(ids=ids, size=size)


@router.delete("/{item_id}", response_model=GalleryDeleteResponse, dependencies=[ApiKeyDep],
               summary="Remove one gallery item", responses=error_responses(401, 403, 404, 422, 503))
async def delete_item(runtime: RuntimeDep,
                      item_id: Annotated[int, Path(ge=0, le=2**63 - 1,  # ids are int64 (an id past it was a 500)
                                                   description="the gallery id (as returned by search or add)")]
                      ) -> GalleryDeleteResponse:
    """Remove the item from the index and its metadata; saved before answering."""
    from index.errors import UnknownIdsError

    try:
        size = await runtime.remove(item_id)
    except UnknownIdsError:
        raise ApiError(404, "not_found", f"gallery id {item_id} does not exist") from None
    return GalleryDeleteResponse(deleted=item_id, size=size)


@router.get("/stats", response_model=GalleryStatsResponse, summary="Gallery size, cameras and index",
            responses=error_responses(503))
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
