"""The read side of :class:`index.Gallery`: searches and metadata look-ups under the gallery's read lock (a mixin).

Scores are cosine similarities of L2-normalised vectors (normalised here and nowhere else in the serving
path), best first, always finite and within [-1, 1] (up to 1e-3 of float rounding): a search that would
break this raises :class:`~index.errors.CorruptGalleryError` instead of answering
(:func:`index.validate.check_scores`). Where fewer than ``k`` results exist, rows end with id ``-1`` and
score ``-inf``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import GalleryError, UnknownIdsError
from index.locking import ReadWriteLock
from index.metadata import GROUP_BY
from index.validate import as_cameras, as_ids, as_k, as_time_range, check_scores, normalized


def check_group_by(group_by: str) -> str:
    """``group_by`` if it is one :meth:`Gallery.group_counts` knows, else a :class:`GalleryError` listing them."""
    if group_by not in GROUP_BY:
        raise GalleryError(f"unknown group_by {group_by!r}; valid values: {', '.join(GROUP_BY)}")
    return group_by



class Queries:
    """Search and look-up methods of :class:`index.Gallery` (the gallery's state; see the module docstring)."""

    _lock: ReadWriteLock
    _directory: Path | None
    _storage: Any  # index.storage.Storage
    _backend: Any  # index.backends.VectorBackend
    _store: Any  # index.backends.MetadataReader
    dim: int

    def search(self, queries: Any, k: int, cameras: Any = None, *,
               time_range: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery items for each query by cosine similarity.

        Args:
            queries: ``[Q, dim]`` (or one ``[dim]`` vector) raw descriptors; normalised here.
            k: results per query.
            cameras: only items from this camera or these cameras (``None``: all).
            time_range: ``(start, end)``, inclusive, either end ``None`` for open; items without
                a timestamp never match.

        Returns:
            ``(scores, ids)``: float32 and int64 ``[Q, k]``, best first; ``-inf`` / ``-1`` pad
            rows with fewer than ``k`` matches. A filter still yields ``k`` results when at least
            ``k`` items match (exactly so for exact kinds).

        Raises:
            CorruptGalleryError: a score came out non-finite or outside [-1, 1] (damaged vectors in memory).
        """
        q, k, cams, window = self._query(queries, k, cameras, time_range)
        with self._lock.read():
            scores, ids = self._ranked(q, k, cams, window)
        return self._checked(scores, ids)

    def search_hits(self, queries: Any, k: int, cameras: Any = None, *,
                    time_range: Any = None) -> list[list[dict[str, Any]]]:
        """:meth:`search`, with each hit's metadata read under the same hold of the gallery's lock.

        A concurrent ``remove`` therefore waits for both steps, and every hit has its row: what a server
        answering with metadata needs, without a lock of its own around ``search`` and ``get``.

        Args:
            queries, k, cameras, time_range: as :meth:`search`.

        Returns:
            Per query, best first and without the ``-1`` padding, dicts as :meth:`get` gives (``id``,
            ``camera``, ``person_label``, ``source``, ``timestamp``, ``extra``) plus ``score`` (float).

        Raises:
            CorruptGalleryError: as :meth:`search`.
        """
        q, k, cams, window = self._query(queries, k, cameras, time_range)
        with self._lock.read():
            scores, ids = self._checked(*self._ranked(q, k, cams, window))
            found = np.unique(ids[ids >= 0])
            rows = self._store.get(found.tolist()) if found.size else {}
        return [[{**rows[int(i)], "extra": dict(rows[int(i)]["extra"]), "score": float(score)}
                 for score, i in zip(row_scores, row_ids) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]

    def _query(self, queries: Any, k: int, cameras: Any,
               time_range: Any) -> tuple[np.ndarray, int, np.ndarray | None, tuple[float | None, float | None] | None]:
        return (normalized(queries, self.dim, "queries", allow_1d=True), as_k(k), as_cameras(cameras),
                as_time_range(time_range))

    def _ranked(self, q: np.ndarray, k: int, cams: np.ndarray | None,
                window: tuple[float | None, float | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """The storage's top-``k`` (called under the read lock)."""
        return self._storage.search(q, k, cams, window)

    def _checked(self, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return check_scores(scores, ids, clip=self._backend.estimated_scores, where=self._directory or "gallery")

    def get(self, ids: Any, *, missing: str = "error") -> list[dict[str, Any] | None]:
        """Metadata for ``ids``, in order: dicts with ``id``, ``camera``, ``person_label``,
        ``source``, ``timestamp`` (Unix seconds or None), ``extra`` (dict), ``track_id`` (or None).

        Args:
            ids: ids (e.g. a row of :meth:`search` ids).
            missing: ``"error"`` raises :class:`UnknownIdsError` for unknown ids (including the
                ``-1`` padding); ``"none"`` puts ``None`` in their place.
        """
        if missing not in ("error", "none"):
            raise GalleryError(f"missing must be 'error' or 'none', got {missing!r}")
        wanted = as_ids(ids).tolist()
        with self._lock.read():
            rows = self._store.get(wanted)
        unknown = sorted({i for i in wanted if i not in rows})
        if unknown and missing == "error":
            raise UnknownIdsError(unknown)
        return [dict(rows[i], extra=dict(rows[i]["extra"])) if i in rows else None for i in wanted]

    def vectors(self, ids: Any) -> np.ndarray:
        """The stored (L2-normalised) descriptors of ``ids``, ``[n, dim]`` float32, in the order given.

        What re-ranking a neighbourhood needs (``index.reranking``): the gallery-gallery distances of the
        items a search returned. Exact for ``flat``; ``flat_fp16`` gives them back rounded to fp16; the
        approximate kinds give what their codes keep (IVF-PQ: an approximation), which is why the server
        refuses ``rerank`` on them.

        Raises:
            UnknownIdsError: an id is not in the gallery.
            GalleryError: the kind cannot give vectors back.
        """
        wanted = as_ids(ids)
        with self._lock.read():
            present = np.isin(wanted, self._store.ids())
            if not present.all():
                raise UnknownIdsError(sorted(set(wanted[~present].tolist())))
            if wanted.size == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            try:
                return np.asarray(self._backend.reconstruct(wanted), dtype=np.float32)
            except NotImplementedError as exc:
                raise GalleryError(str(exc)) from None

    def group_totals(self, group_by: str, cameras: Any = None) -> tuple[int, int]:
        """``(groups, items)`` among the items of ``cameras`` (see :meth:`MetadataStore.group_totals`)."""
        with self._lock.read():
            return self._store.group_totals(check_group_by(group_by), as_cameras(cameras))

    def group_counts(self, group_by: str, keys: Any, cameras: Any = None) -> dict[Any, int]:
        """Items per group key among the items of ``cameras``: ``person_label`` keys for ``person``,
        ``(camera, track_id)`` tuples for ``camera_track``."""
        with self._lock.read():
            return self._store.group_counts(check_group_by(group_by), list(keys), as_cameras(cameras))

    def ids(self) -> np.ndarray:
        """Every id in the gallery, sorted (int64)."""
        with self._lock.read():
            return self._store.ids().copy()

    def stamped_before(self, cutoff: float) -> np.ndarray:
        """Ids of the items stamped strictly before ``cutoff`` (Unix seconds), sorted int64.

        What retention removes (``python -m serving gallery expire``): an item stamped exactly at the cut-off
        is kept, and items without a timestamp are never selected (:meth:`unstamped_count` counts them).

        Raises:
            GalleryError: ``cutoff`` is not a finite number.
        """
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not math.isfinite(cutoff):
            raise GalleryError(f"cutoff must be a finite number of Unix seconds, got {cutoff!r}")
        with self._lock.read():
            return self._store.stamped_before(float(cutoff)).copy()

    def unstamped_count(self) -> int:
        """How many items have no timestamp (retention keeps them)."""
        with self._lock.read():
            return int(self._store.unstamped_count())

    def track_spans(self, cameras: Any = None) -> list[dict[str, Any]]:
        """The gallery's tracks, earliest first: per ``(camera, track_id)`` its ``first_seen`` / ``last_seen``
        (Unix seconds, None without times), ``items`` and ``first_id`` (a time line of who was seen where)."""
        selected = None if cameras is None else np.asarray(list(cameras), dtype=np.int64)
        with self._lock.read():
            return self._store.track_spans(selected)

    def find_sources(self, sources: Any) -> dict[str, int]:
        """``{source: id}`` for those of ``sources`` already in the gallery.

        Lets a batch indexing job resume: skip every path this returns.
        """
        if isinstance(sources, str):
            raise GalleryError("sources must be a list of strings, not one string")
        with self._lock.read():
            return self._store.find_sources(sources)

    def __contains__(self, item_id: object) -> bool:
        if isinstance(item_id, bool) or not isinstance(item_id, numbers.Integral):
            return False
        with self._lock.read():
            return bool(self._store.get([int(item_id)]))
