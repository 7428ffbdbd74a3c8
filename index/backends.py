"""The vector-store interface behind :class:`index.Gallery`, and the shared "search wider" filter.

The gallery owns ids, metadata, validation, normalisation, locking and persistence; a backend only
stores normalised float32 vectors under int64 ids and answers top-k inner-product searches. Keeping
that surface this small (``add_with_ids`` / ``remove_ids`` / ``search`` with an id filter) is what lets
another store slot in without touching the gallery's callers: FAISS in process
(:mod:`index.faiss_backend`, with the SQLite metadata of :mod:`index.metadata` beside it) and a Milvus
collection (:mod:`index.milvus_backend`, which keeps each item's metadata beside its vector and commits
every change itself). How a backend and its metadata store are kept in step and saved is its
:class:`~index.storage.Storage`'s job: :func:`index.registry.create_storage` builds it for a new gallery,
:func:`index.loading.read_gallery` for a saved one.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from index.errors import CorruptGalleryError, GalleryError

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
# Search-time parameters (IVF lists probed, HNSW candidate list), named alike for every backend so a
# configuration moves between them; ``Gallery.load(**options)`` and ``set_search_params`` take them.
SEARCH_PARAMS = frozenset({"nprobe", "ef_search"})


class VectorBackend(abc.ABC):
    """Stores L2-normalised float32 vectors under int64 ids; searches by inner product.

    Contract for every method: vectors and queries arrive L2-normalised, float32, C-contiguous,
    shaped ``[n, dim]``; ids arrive as int64 arrays, new ones on add and present ones on remove
    (the gallery checks). Concurrency: the gallery serialises mutations against everything else,
    but several ``search`` calls may run at once, so ``search`` must be safe to call concurrently.
    """

    kind: str
    dim: int
    # The ``backend=`` name of Gallery.create and of a saved manifest.
    name: str = "faiss"
    exact: bool = True
    # Removals leave the vector in place behind a tombstone (HNSW): an id removed by an undone add must
    # then never be handed out again, since the tombstone would hide the new item.
    tombstones: bool = False
    # Scores are estimates from compressed codes (PQ) that can stray a little past [-1, 1]; they are
    # clipped to it. For every other kind a score outside it means the vectors in memory are damaged.
    estimated_scores: bool = False

    @property
    @abc.abstractmethod
    def options(self) -> dict[str, Any]:
        """The resolved, persistent options (what the manifest records to rebuild this backend)."""

    @property
    def device(self) -> str:
        """Where searches run: ``"cpu"`` or ``"gpu"``."""
        return "cpu"

    @property
    def is_trained(self) -> bool:
        """False while an approximate index is still waiting for enough vectors to train on."""
        return True

    def train(self, vectors: np.ndarray, expected_size: int | None = None) -> None:
        """Train on a sample of (normalised) vectors, sized for ``expected_size`` items; exact backends need none."""

    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (e.g. ``nprobe``); exact backends have none."""
        if params:
            raise GalleryError(f"kind {self.kind!r} has no search-time parameters, got {sorted(params)}")

    def tune(self, target: float, k: int = 10, sample: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Set search parameters to reach a recall target (approximate kinds; see :mod:`index.tuning`)."""
        raise GalleryError(f"kind {self.kind!r} has no search parameters to tune")

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of vectors stored."""

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """Every stored id, sorted, int64 (used to check the index against the metadata)."""

    @abc.abstractmethod
    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Store ``vectors`` under ``ids``."""

    @abc.abstractmethod
    def remove_ids(self, ids: np.ndarray) -> None:
        """Forget the vectors stored under ``ids`` (all of which are present)."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None, *,
               use_selector: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product.

        Args:
            queries: ``[Q, dim]`` normalised float32.
            k: results per query, at least 1.
            allowed_ids: when given, only these ids (sorted, unique, all present) may be returned.
            use_selector: ``True`` filters inside the index (FAISS ``IDSelector``) when the backend can;
                ``False`` forces the search-wider-then-filter path; ``None`` (``filter_mode="auto"``)
                lets the backend choose the fastest exact-enough path (tests force each).

        Returns:
            ``(scores, ids)``, float32 and int64 ``[Q, k]``, best first; rows with fewer than
            ``k`` results end with score ``-inf`` and id ``-1``.
        """

    def close(self) -> None:
        """Release what the backend holds outside this process (a connection); in-process backends hold nothing."""

    def drop(self) -> None:
        """Delete the backend's external data for good (a Milvus collection)."""
        raise GalleryError(f"a {self.name} gallery keeps its data in its directory; there is no collection to drop")

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (all present), ``[n, dim]`` float32: what undoing a removal re-adds."""
        raise NotImplementedError(f"kind {self.kind!r} cannot give back stored vectors")

    def restore(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Put back items removed by :meth:`remove_ids` (from :meth:`reconstruct`), undoing the removal."""
        self.add_with_ids(vectors, ids)

    def check_vectors(self, path: Path) -> None:
        """Refuse stored vectors that are not finite or, where the kind keeps them whole, not unit length.

        Raises:
            CorruptGalleryError: naming ``path`` (the index file) and the first bad id.
        """

    def serialize(self, path: Path) -> dict[str, Any]:
        """Write the index to ``path`` (one file) and return extra state for the manifest.

        For backends whose data lives in the gallery directory (FAISS: a CPU index file).
        """
        raise NotImplementedError(f"the {self.name} backend keeps its data outside the gallery directory")

    def stats(self) -> dict[str, Any]:
        """Backend facts for ``Gallery.stats()``."""
        return {"device": self.device, "trained": self.is_trained}


class MetadataReader(Protocol):
    """What a gallery reads of its metadata store: :class:`index.metadata.MetadataStore` (SQLite, beside a
    FAISS index) or a backend that keeps each item's metadata beside its vector (Milvus). Ids are int64; rows
    as ``Gallery.get`` gives them."""

    def ids(self) -> np.ndarray: ...

    def present(self, ids: np.ndarray) -> np.ndarray: ...

    def get(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]: ...

    def find_sources(self, sources: Iterable[str]) -> dict[str, int]: ...

    def camera_counts(self) -> dict[int, int]: ...

    def labelled_count(self) -> int: ...

    def stamped_before(self, cutoff: float) -> np.ndarray: ...

    def unstamped_count(self) -> int: ...

    def track_spans(self, cameras: np.ndarray | None = None) -> list[dict[str, Any]]: ...


def checked_search_params(params: dict[str, Any], valid: set[str], what: str) -> dict[str, int]:
    """``params`` as ints, refusing names outside ``valid`` (those of ``what``, e.g. ``kind 'hnsw'``) and values < 1."""
    unknown = set(params) - valid
    if unknown:
        raise GalleryError(f"unknown search parameter(s) {sorted(unknown)} for {what}; "
                           f"valid: {', '.join(sorted(valid)) or 'none'}")
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise GalleryError(f"search parameter {name!r} must be a positive int, got {value!r}")
    return {name: int(value) for name, value in params.items()}


def auto_pq_m(dim: int) -> int:
    """Product-quantizer sub-vectors for ``dim``: ~16 dimensions each (96 bytes per 1536-d vector, a common
    memory/recall point), the largest such count that divides ``dim``."""
    return next(m for m in range(max(1, dim // 16), 0, -1) if dim % m == 0)


def pad_results(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a FAISS answer: ``[Q, k]`` float32/int64 with ``-inf`` scores wherever the id is ``-1``.

    FAISS pads with ``-FLT_MAX`` (inner product) or leaves garbage scores next to ``-1`` ids depending on
    the index type; callers should see one convention.
    """
    q = ids.shape[0]
    out_s = np.full((q, k), -np.inf, dtype=np.float32)
    out_i = np.full((q, k), -1, dtype=np.int64)
    width = min(k, ids.shape[1])
    out_s[:, :width] = scores[:, :width]
    out_i[:, :width] = ids[:, :width]
    out_s[out_i < 0] = -np.inf
    return out_s, out_i


def search_wider(search: SearchFn, queries: np.ndarray, k: int, allowed_ids: np.ndarray, ntotal: int,
                 max_k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Filtered top-k for indexes that cannot filter: search for more, drop what is not allowed.

    The first round asks for about twice the number of results that ``k`` allowed hits need at the
    filter's selectivity; rows still short of ``min(k, len(allowed_ids))`` are searched again with
    four times as many, until the unfiltered search returns the whole index (then an exact index has
    necessarily found every allowed item) or ``max_k`` (a GPU limit) is reached.

    Args:
        search: unfiltered search ``(queries, k) -> (scores, ids)``, best first, ``-1`` padded.
        queries: ``[Q, dim]``.
        k: results wanted per query.
        allowed_ids: sorted unique ids that may be returned.
        ntotal: the number of vectors in the index.
        max_k: the largest ``k`` the index accepts, if limited.

    Returns:
        ``(scores, ids, complete)``: ``[Q, k]`` results and a ``[Q]`` bool mask of rows that hold
        ``min(k, len(allowed_ids))`` results.
    """
    nq = queries.shape[0]
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    want = min(k, len(allowed_ids))
    complete = np.zeros(nq, dtype=bool)
    if want == 0 or ntotal == 0:
        complete[:] = True
        return out_s, out_i, complete
    limit = ntotal if max_k is None else min(ntotal, max_k)
    fetch = min(limit, max(k, math.ceil(2 * k * ntotal / len(allowed_ids))))
    todo = np.arange(nq)
    while todo.size:
        scores, ids = search(queries[todo], fetch)
        keep = np.isin(ids, allowed_ids)
        # A stable sort on "not kept" moves the kept hits to the front in their original score order.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        got_i = np.take_along_axis(ids, order, axis=1)
        got_s = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        kept = np.take_along_axis(keep, order, axis=1)
        got_i[~kept] = -1
        got_s[~kept] = -np.inf
        width = got_i.shape[1]
        out_i[todo, :width] = got_i
        out_s[todo, :width] = got_s
        done = kept.sum(axis=1) >= want
        complete[todo[done]] = True
        if fetch >= limit:
            break
        todo = todo[~done]
        fetch = min(limit, fetch * 4)
    return out_s, out_i, complete


# Stored vectors are L2-normalised float32 (or fp16): their norms are 1 within rounding. Anything further
# off is damage (a flipped exponent bit gives 1e36), and would break the cosine-score contract.
UNIT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-3}
_CHECK_FLOATS = 1 << 20  # floats per checked block (4 MiB of float32)


def check_unit_rows(path: Path, vectors: np.ndarray, ids: np.ndarray, tolerance: float) -> None:
    """Raise :class:`CorruptGalleryError` for the first row that is not finite or not of unit norm.

    One pass over the block: the squared norm of a row is non-finite exactly when a value in it is (or is so
    large that its square overflows), so only failing rows are looked at twice.

    Args:
        path: the index file (named in the error).
        vectors: ``[n, dim]`` rows (a block of the index).
        ids: the ``[n]`` gallery ids of those rows.
        tolerance: the allowed ``|norm - 1|``.
    """
    block = np.asarray(vectors, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > tolerance)
    if not bad.any():
        return
    row = int(np.flatnonzero(bad)[0])
    if not np.isfinite(block[row]).all():
        raise CorruptGalleryError(path, f"the vector of id {int(ids[row])} holds NaN or infinite values: the "
                                        f"index data is damaged")
    norm = float(np.linalg.norm(block[row].astype(np.float64)))
    raise CorruptGalleryError(path, f"the vector of id {int(ids[row])} has norm {norm:.6g}, not 1: the index data "
                                    f"is damaged (stored vectors are L2-normalised)")


def check_in_blocks(path: Path, n: int, read: Callable[[int, int], np.ndarray], ids: np.ndarray,
                    tolerance: float, dim: int | None = None) -> None:
    """:func:`check_unit_rows` over ``read(start, count)`` blocks of about 4 MiB, so memory stays flat."""
    rows = max(1, _CHECK_FLOATS // max(1, dim or 1))
    for start in range(0, n, rows):
        count = min(rows, n - start)
        check_unit_rows(path, read(start, count), ids[start:start + count], tolerance)
