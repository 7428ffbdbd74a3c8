"""``GET /gallery/{id}/thumbnail``: a small JPEG of a gallery item, read only from the configured image roots.

The item's ``source`` metadata names the file relative to the image root it was indexed from; it is never
opened as given (:mod:`serving.core.paths` refuses absolute paths, ``..`` and symlinks out of the roots), and
the file is opened beneath its root with no link allowed on the way (:mod:`serving.core.beneath`), so a
folder swapped for a link after the check cannot lead the read outside.

Status codes, all with the API's ``{error, detail}`` body:

* 403 ``source_outside_image_roots``: the stored source tries to leave the roots. 403 rather than 404
  because the item exists and the refusal is deliberate; an operator seeing it knows the gallery holds a
  hand-made source to clean up, not a file that went missing. The body never names a server path.
* 404 ``not_found`` (no such id), ``no_source`` (the item has none), ``no_image_roots`` (the server was
  started without ``--image-root`` and the gallery's manifest records no image folder that exists here),
  ``source_not_found`` (the file is gone), ``unreadable_image`` (the file is there but is not an image the
  decoder accepts, or any other file-system error while reading it).
* 422 ``invalid_size``: ``size`` outside ``16..thumbnail_max_side``.

Thumbnails are cached by the browser (``Cache-Control``) and revalidated with an ``ETag`` made from the
file's identity (resolved path, size, mtime, inode of the file actually opened) and the requested size, so a
changed file gets a new tag and an unchanged one answers 304 without being decoded again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, BinaryIO

# isort: off
from serving.core import opencv_limits  # noqa: F401  sets OpenCV's decoder limits before cv2 loads
import cv2
import numpy as np
# isort: on
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi import Path as PathParam

from serving.api.audit import auditor
from serving.api.deps import ApiKeyDep, RuntimeDep
from serving.api.errors import ApiError
from serving.api.schemas import ERROR_DESCRIPTIONS, ErrorBody
from serving.core.beneath import EscapeError, open_beneath
from serving.core.imageio import DecodeLimits, ImageDecodeError, TooManyPixels, inspect_image
from serving.core.paths import SourceNotFoundError, UnsafeSourceError, locate_source
from serving.runtime.state import Runtime

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/gallery", tags=["gallery"])

MIN_SIDE = 16
JPEG_QUALITY = 85
GALLERY_FILE_MAX_BYTES = 64 * 1024 * 1024
# Images of people: a shared proxy must not keep them ("private"); an hour is long enough to make paging
# through results cheap, and the ETag makes the revalidation after that a 304.
CACHE_CONTROL = "private, max-age=3600"
_VERSION = "1"  # part of the ETag: bump when the thumbnail code changes what it produces

# JPEG can be decoded at 1/2, 1/4 or 1/8 scale directly (libjpeg's DCT scaling), far cheaper than a full
# decode followed by a resize; used whenever the reduced image is still at least as big as the thumbnail.
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "a JPEG whose longer side is at most `size` pixels "
                                                         "(smaller images are not enlarged)"},
    304: {"description": "the client's cached copy (If-None-Match) is current"},
    401: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[401]},
    403: {"model": ErrorBody, "description": "the item's stored source leads outside the image roots, or the "
                                             "API key does not allow thumbnails"},
    404: {"model": ErrorBody, "description": "no such item, no image roots configured, or the item's file is "
                                             "missing or not an image"},
    422: {"model": ErrorBody, "description": "size out of range"},
    503: {"model": ErrorBody, "description": "the gallery is not loaded yet"},
    500: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[500]},
}


def file_limits(upload_limits: DecodeLimits) -> DecodeLimits:
    """Bounds for reading a gallery file: the upload pixel limits, but at least :data:`GALLERY_FILE_MAX_BYTES`.

    The byte limit on uploads protects the server from its clients; gallery files are the operator's own
    (full camera frames can be larger than any query crop), so a small upload limit must not hide them. The
    pixel limits still apply: a decompression bomb in an image folder is as costly as one in an upload.
    """
    return DecodeLimits(max_bytes=max(upload_limits.max_bytes, GALLERY_FILE_MAX_BYTES),
                        max_pixels=upload_limits.max_pixels, max_side=upload_limits.max_side)


@dataclass(frozen=True)
class Thumbnail:
    """A thumbnail answer: ``body`` is None when the client's copy is current (304)."""

    etag: str
    body: bytes | None


def open_source(root: Path, inside: PurePosixPath) -> BinaryIO:
    """Open a located gallery file beneath its root (no link on the way); the caller closes it.

    Raises:
        EscapeError: a component became a symbolic link after the source was located.
        OSError: the file cannot be opened (removed, replaced by a folder, no permission).
    """
    return os.fdopen(open_beneath(root, inside), "rb")


def make_thumbnail(handle: BinaryIO, size: int, limits: DecodeLimits, quality: int = JPEG_QUALITY) -> bytes:
    """Decode an open image file and re-encode it as a JPEG whose longer side is at most ``size``.

    Args:
        handle: the (already vetted and opened) image file.
        size: largest output side in pixels; smaller images keep their size.
        limits: byte and pixel bounds checked before decoding (a gallery folder can hold a bomb too).
        quality: JPEG quality, 0-100.

    Returns:
        The JPEG bytes.

    Raises:
        ImageDecodeError: the file is too large, not an image, or cannot be decoded.
        OSError: the file cannot be read.
    """
    data = handle.read(limits.max_bytes + 1)
    header = inspect_image(data, limits)
    flag = cv2.IMREAD_COLOR
    if header.format == "jpeg":
        longest = max(header.width, header.height)
        flag = next((reduced for factor, reduced in _REDUCED if longest // factor >= size), flag)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:  # OpenCV's own size backstop (serving.core.opencv_limits): the header under-stated it
        raise TooManyPixels("too_many_pixels", f"the {header.format.upper()} image is larger than the "
                                                f"{limits.max_pixels} pixels allowed") from None
    if image is None:
        raise ImageDecodeError("corrupt_image", f"the {header.format.upper()} data could not be decoded")
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if scale < 1.0:
        # INTER_AREA averages the source pixels under each output pixel: no aliasing when shrinking.
        out = (min(size, max(1, round(width * scale))), min(size, max(1, round(height * scale))))
        image = cv2.resize(image, out, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV's JPEG encoder does not fail on a valid 8-bit BGR image
        raise RuntimeError("OpenCV could not encode the thumbnail")
    return encoded.tobytes()


def etag_for(path: Path, st: os.stat_result, size: int) -> str:
    """A strong ETag for the thumbnail of the file opened at ``path`` (``st``: its ``fstat``) at ``size``."""
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{size}|{JPEG_QUALITY}|{_VERSION}"
    return '"' + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip() for t in if_none_match.split(",")]
    # If-None-Match compares weakly (RFC 9110 13.1.2): a W/ prefix on the client's tag still matches.
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def thumbnail_for(runtime: Runtime, item_id: int, size: int, if_none_match: str | None) -> Thumbnail:
    """Look the item up, vet its source, and build (or skip, on a current ETag) its thumbnail. Blocking.

    Raises:
        ApiError: 403/404 as listed in the module docstring.
    """
    (item,) = runtime.gallery.get([item_id], missing="none")
    if item is None:
        raise ApiError(404, "not_found", f"gallery id {item_id} does not exist")
    roots = runtime.image_roots
    if not roots:
        raise ApiError(404, "no_image_roots", "the server was started without image roots (--image-root or "
                                              "XMREID_IMAGE_ROOTS) and the gallery records no image folder that "
                                              "exists here, so it shows no gallery images")
    source = item.get("source")
    if not source:
        raise ApiError(404, "no_source", f"gallery item {item_id} has no source, so there is no image to show")
    try:
        root, inside = locate_source(str(source), roots)
    except UnsafeSourceError as exc:
        logger.warning("thumbnail of gallery item %d refused: %s", item_id, exc)
        raise ApiError(403, "source_outside_image_roots", f"gallery item {item_id}: {exc}") from None
    except SourceNotFoundError as exc:
        raise ApiError(404, "source_not_found", f"gallery item {item_id}: {exc}") from None
    try:
        with open_source(root, inside) as handle:
            etag = etag_for(root / inside, os.fstat(handle.fileno()), size)
            if _matches(if_none_match, etag):
                return Thumbnail(etag=etag, body=None)
            return Thumbnail(etag=etag, body=make_thumbnail(handle, size, file_limits(runtime.limits)))
    except ImageDecodeError as exc:
        raise ApiError(404, "unreadable_image", f"gallery item {item_id}'s file is not a usable image: "
                                                f"{exc.detail}") from None
    except FileNotFoundError:  # deleted between the check and the read
        raise ApiError(404, "source_not_found", f"gallery item {item_id}: its file was removed") from None
    except EscapeError:  # a component was swapped for a link after the source was located
        logger.warning("thumbnail of gallery item %d refused: its path changed to a symlink", item_id)
        raise ApiError(403, "source_outside_image_roots",
                       f"gallery item {item_id}: its path was replaced by a symlink") from None
    except OSError as exc:
        logger.warning("thumbnail of gallery item %d: cannot read its file: %s", item_id, exc.strerror)
        raise ApiError(404, "unreadable_image", f"gallery item {item_id}'s file cannot be read") from None


@router.get("/{item_id}/thumbnail", response_class=Response, responses=_RESPONSES, dependencies=[ApiKeyDep],
            summary="A small JPEG of one gallery item")
async def thumbnail(runtime: RuntimeDep, request: Request,
                    item_id: Annotated[int, PathParam(ge=0, le=2**63 - 1, description="the gallery id")],
                    size: Annotated[int | None, Query(description="largest side in pixels, 16..thumbnail_max_side "
                                                                  "(a server setting, 256 by default); the "
                                                                  "default is the maximum")] = None,
                    if_none_match: Annotated[str | None, Header(description="ETag(s) of a cached copy; "
                                                                            "answered 304 when current")] = None
                    ) -> Response:
    """The item's image from the configured image roots, shrunk to fit ``size`` and re-encoded as JPEG."""
    max_side = runtime.settings.thumbnail_max_side
    size = max_side if size is None else size
    if not MIN_SIDE <= size <= max_side:
        raise ApiError(422, "invalid_size", f"size must be between {MIN_SIDE} and {max_side}, got {size}")
    result = await asyncio.to_thread(thumbnail_for, runtime, item_id, size, if_none_match)
    await auditor(request).record(request, thumbnail=item_id, size=size, cached=result.body is None)
    headers = {"ETag": result.etag, "Cache-Control": CACHE_CONTROL}
    if result.body is None:
        return Response(status_code=304, headers=headers)
    return Response(content=result.body, media_type="image/jpeg", headers=headers)
