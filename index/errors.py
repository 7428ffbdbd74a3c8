"""Errors raised by the gallery store.

``GalleryError`` subclasses ``ValueError`` so that callers that only know "bad value" still catch
it; the serving layer maps it to a 4xx, and :class:`UnknownIdsError` (ids that are not in the
gallery) to a 404. The subclasses below name conditions a caller must react to differently:

* :class:`GalleryLockedError`: another process owns the directory for writing (retry later, or stop it);
* :class:`StaleGalleryError`: another writer saved the directory since this object read it (reload);
* :class:`ReadOnlyGalleryError`: the gallery was opened read-only;
* :class:`CorruptGalleryError`: a file on disk, or the gallery in memory, is damaged (never serve it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


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


class GalleryLockedError(GalleryError):
    """Another process holds the gallery directory's write lock.

    Attributes:
        directory: the gallery directory.
        holder: what the holder wrote into the lock file (``pid``, ``command``, ``since``, ``host``), or {}.
    """

    def __init__(self, directory: Path, holder: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.holder = dict(holder)
        super().__init__(f"gallery {directory} is already open for writing by {describe_holder(holder)}; "
                         f"one process writes a gallery at a time: stop that one, send the change to it, or "
                         f"open this gallery read-only")


class StaleGalleryError(GalleryError):
    """The directory holds a newer save than the one this gallery object was loaded from or last saved."""


class ReadOnlyGalleryError(GalleryError):
    """A change or a save was asked of a gallery opened with ``read_only=True``."""


class CorruptGalleryError(GalleryError):
    """A gallery file (or the loaded gallery) is damaged: one line naming the file and what is wrong.

    Attributes:
        path: the damaged file (or the gallery directory when no single file is to blame).
        problem: what is wrong, as a clause ("sha256 does not match the manifest").
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class UndoFailedError(RuntimeError):
    """A failed transaction could not be undone in memory: memory no longer matches the last save."""


def describe_holder(holder: dict[str, Any]) -> str:
    """``pid 4242 (python -m serving serve ...) since 2026-12-01T10:00:00+00:00`` from lock-file fields."""
    if not holder.get("pid"):
        return "another process (it has not written its details into the lock file yet)"
    text = f"pid {holder['pid']}"
    if holder.get("host"):
        text += f" on {holder['host']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    if holder.get("since"):
        text += f" since {holder['since']}"
    return text
