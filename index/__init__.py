"""The gallery vector store: FAISS index + SQLite metadata + atomic on-disk format.

Knows nothing of images or models: it stores and searches float32 descriptors.

    from index import Gallery
    gallery = Gallery.create(1536, kind="flat", fingerprint=model_sha256)
    ids = gallery.add(descriptors, [{"camera": 1, "source": "cam1/0001/0001.jpg"}, ...])
    scores, ids = gallery.search(query_descriptors, k=10, cameras=[1, 2])
    gallery.save("artifacts/gallery"); Gallery.load("artifacts/gallery", fingerprint=model_sha256)

One process writes a gallery directory at a time (``GalleryLockedError`` names the holder); damaged files
are refused at load (``CorruptGalleryError``, one line naming the file); see ``docs/contracts.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from index.errors import (
    CorruptGalleryError,
    GalleryError,
    GalleryLockedError,
    ReadOnlyGalleryError,
    StaleGalleryError,
    UnknownIdsError,
)

if TYPE_CHECKING:
    from index.gallery import Gallery
    from index.registry import EXACT_KINDS, KINDS

# Imported on first use (PEP 562), not here: ``import index.errors`` runs this file, and a caller that only
# needs the exception types (serving's error handlers, a CLI reporting a bad gallery) should not pay for
# loading FAISS and numpy's BLAS, nor need them installed.
_LAZY = {"Gallery": "index.gallery", "EXACT_KINDS": "index.registry", "KINDS": "index.registry"}

__all__ = ["EXACT_KINDS", "KINDS", "CorruptGalleryError", "Gallery", "GalleryError", "GalleryLockedError",
           "ReadOnlyGalleryError", "StaleGalleryError", "UnknownIdsError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'index' has no attribute {name!r}")
