"""Turning multipart uploads into model-ready images, with the checks every upload route shares."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import UploadFile

from serving.api.errors import ApiError
from serving.core.imageio import ImageDecodeError
from serving.runtime.state import Runtime

#: Content types accepted for an image part. ``application/octet-stream`` (what clients send when they do
#: not know) and a missing type are accepted too: the decoder recognises the format from its bytes anyway.
IMAGE_CONTENT_TYPES: frozenset[str] = frozenset({
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/bmp", "image/x-bmp", "image/x-ms-bmp",
    "application/octet-stream", "",
})
#: Content types of a raw image body (``POST /search`` with the file as the whole body, which must name its
#: type): the same types, sorted (the OpenAPI document lists exactly these).
RAW_IMAGE_TYPES: tuple[str, ...] = tuple(sorted(t for t in IMAGE_CONTENT_TYPES if t))


def _label(index: int | None, upload: UploadFile) -> str:
    if index is None:
        return ""
    name = f" ({upload.filename})" if upload.filename else ""
    return f"image {index}{name}: "


async def read_upload(upload: UploadFile, max_bytes: int, index: int | None = None) -> bytes:
    """The bytes of one uploaded image part, after checking its content type and size.

    Args:
        upload: the multipart file.
        max_bytes: the per-file limit.
        index: position in a multi-file request, named in error messages.

    Returns:
        The file's bytes (at most ``max_bytes``).

    Raises:
        ApiError: 415 for a content type that is not an image, 413 for a file over ``max_bytes``.
    """
    content_type = (upload.content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_CONTENT_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       f"{_label(index, upload)}content type {content_type!r} is not accepted; send image/jpeg, "
                       f"image/png or image/bmp (application/octet-stream is also accepted)")
    if upload.size is not None and upload.size > max_bytes:
        raise ApiError(413, "file_too_large", f"{_label(index, upload)}the file is {upload.size} bytes; the "
                                              f"limit is {max_bytes} bytes")
    data = await upload.read(max_bytes + 1)  # never more than the limit, whatever size claimed
    if len(data) > max_bytes:
        raise ApiError(413, "file_too_large", f"{_label(index, upload)}the file is larger than the limit of "
                                              f"{max_bytes} bytes")
    return data


async def read_uploads(runtime: Runtime, uploads: list[UploadFile]) -> list[bytes]:
    """The bytes of every upload, in order, each checked as :func:`read_upload` does."""
    many = len(uploads) > 1
    return [await read_upload(u, runtime.settings.max_upload_bytes, i if many else None)
            for i, u in enumerate(uploads)]


async def decode_uploads(runtime: Runtime, uploads: list[UploadFile],
                         datas: list[bytes] | None = None) -> list[np.ndarray]:
    """Read and decode several uploads concurrently (in the decode pool), in order.

    Args:
        runtime: the server runtime (limits, decode pool).
        uploads: the multipart files.
        datas: their bytes when already read (:func:`read_uploads`).

    Raises:
        ApiError: as :func:`read_upload`.
        ImageDecodeError: the first image (in upload order) that cannot be decoded, its detail naming it.
    """
    if datas is None:
        datas = await read_uploads(runtime, uploads)
    results = await asyncio.gather(*(runtime.decode(d) for d in datas), return_exceptions=True)
    raise_first_failure(uploads, results)
    return list(results)  # type: ignore[arg-type]  # all arrays after the check above


def raise_first_failure(uploads: list[UploadFile], outcomes: list[Any]) -> None:
    """Raise the first exception among per-upload ``outcomes`` (upload order); a decoding error names its image
    when the request has several.

    Raises:
        ImageDecodeError: the first upload that could not be decoded (``image 1 (b.jpg): ...``).
        Exception: any other failure, as it was.
    """
    many = len(uploads) > 1
    for i, (upload, outcome) in enumerate(zip(uploads, outcomes)):
        if isinstance(outcome, ImageDecodeError):
            if many:
                raise outcome.prefixed(_label(i, upload))
            raise outcome
        if isinstance(outcome, BaseException):
            raise outcome
