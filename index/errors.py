"""Errors raised by the gallery store.

``GalleryError`` subclasses ``ValueError`` so that callers that only know "bad value" still catch
it; the serving layer maps it to a 4xx, and :class:`UnknownIdsError` (ids that are not in the
gallery) to a 404.
"""

from __future__ import annotations

from collections.abc import Sequence


class GalleryError(ValueError):
    """A gallery operation was given bad input, or a gallery on disk is unusable."""


class UnknownIdsError(GalleryError):
    """Some of the ids passed to ``remove`` / ``get`` are not in the gallery.

    Attributes:
        ids: the unknown ids (all of them, sorted).
    """

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = sorted(int(i) for i in ids)
        shown = ", ".join(str(i) for i in self.ids[:10]) + (" …" if len(self.ids) > 10 else "")
        super().__init__(f"{len(self.ids)} id(s) not in the gallery: {shown}")
