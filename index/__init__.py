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

from index.errors import (CorruptGalleryError, GalleryError, GalleryLockedError, ReadOnlyGalleryError,
                          StaleGalleryError, UnknownIdsError)
from index.gallery import Gallery
from index.registry import EXACT_KINDS, KINDS

__all__ = ["EXACT_KINDS", "KINDS", "CorruptGalleryError", "Gallery", "GalleryError", "GalleryLockedError",
           "ReadOnlyGalleryError", "StaleGalleryError", "UnknownIdsError"]
