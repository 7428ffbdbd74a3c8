"""A GPU copy of a FAISS index, used for searching only, and the FAISS backend's GPU search with its CPU fall-back.

The CPU index stays the source of truth (it is what ``remove``, ``save`` and the id checks use, and
what a gallery always saves: a CPU index loads anywhere). The GPU copy follows adds incrementally
and is re-copied lazily after a removal. Anything that goes wrong on the GPU side (no faiss-gpu, an
index type the GPU lacks, "no kernel image is available" from a wheel built without the card's
architecture) logs one warning and the gallery stays on the CPU, with no change for the caller.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np

from index.backends import pad_results, search_wider
from index.errors import GalleryError

log = logging.getLogger(__name__)

# FAISS GPU kernels cap k and nprobe at 2048 (faiss/gpu/utils/DeviceDefs.cuh).
GPU_MAX_K = 2048
GPU_KINDS = {"flat", "flat_fp16", "ivf_flat", "ivf_pq"}  # FAISS has no GPU HNSW (CAGRA is a different index)
_warned = False


def gpu_count() -> int:
    """The number of GPUs FAISS can use (0 with faiss-cpu)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:
        return 0


def _warn_once(message: str, *args: object) -> None:
    global _warned
    if not _warned:
        log.warning(message, *args)
        _warned = True
    else:
        log.debug(message, *args)


class GpuMirror:
    """Search-only GPU replica of a CPU ``IndexIDMap2``.

    GPU indexes are not thread-safe even for searches (FAISS wiki, "Threads and asynchronous
    calls"), so every call holds a lock.

    Args:
        fp16: store vectors (flat) or IVF lists in float16 on the GPU: half the memory, and faster
            where search is memory-bound, at ~1e-3 score error.
    """

    def __init__(self, fp16: bool = False) -> None:
        self.fp16 = fp16
        self._res = faiss.StandardGpuResources()
        self._index: faiss.Index | None = None
        self._owner: faiss.Index | None = None  # the owning proxy behind _index (see _build)
        self._stale = True
        self._lock = threading.Lock()
        self.failed = False

    def build(self, source: Callable[[], faiss.Index]) -> bool:
        """(Re)copy ``source()`` (a CPU ``IndexIDMap2``) to the GPU; on failure warn once and return False."""
        with self._lock:
            return self._build(source)

    def _build(self, source: Callable[[], faiss.Index]) -> bool:
        try:
            cpu_index = source()
            options = faiss.GpuClonerOptions()
            options.useFloat16 = self.fp16
            # index_cpu_to_gpu returns the owning proxy; a downcast_index() of it is a second, non-owning
            # view. Keep the owner alive beside the view, or the GPU index is freed while still in use.
            owner = faiss.index_cpu_to_gpu(self._res, 0, cpu_index, options)
            gpu_index = faiss.downcast_index(owner)
            inner = type(faiss.downcast_index(gpu_index.index)).__name__ if hasattr(gpu_index, "index") else ""
            if not inner.startswith("Gpu"):
                # FAISS's cloner silently returns a CPU copy for types it cannot move.
                plain = type(faiss.downcast_index(cpu_index.index)).__name__
                raise RuntimeError(f"FAISS has no GPU version of {plain}")
            probe = np.full((1, cpu_index.d), 1.0 / np.sqrt(cpu_index.d), dtype=np.float32)
            gpu_index.search(probe, 1)  # kernel-image errors only show up at the first launch
        except Exception as exc:
            _warn_once("FAISS GPU unavailable for this index, searching on the CPU instead: %s", exc)
            self.failed = True
            self._index = self._owner = None
            return False
        self._index = gpu_index
        self._owner = owner  # SWIG proxies take no new attributes: the mirror holds the owner instead
        self._stale = False
        return True

    def mark_stale(self) -> None:
        """The CPU index lost vectors: re-copy before the next search."""
        self._stale = True

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Follow an add on the CPU index (cheaper than a re-copy)."""
        with self._lock:
            if self._index is not None and not self._stale:
                try:
                    self._index.add_with_ids(vectors, ids)
                except Exception as exc:
                    log.warning("GPU add failed (%s); the GPU copy will be rebuilt", exc)
                    self._stale = True

    def search(self, source: Callable[[], faiss.Index], queries: np.ndarray, k: int,
               nprobe: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Search the GPU copy (rebuilding it if stale); ``None`` means "use the CPU"."""
        if k > GPU_MAX_K:
            return None
        with self._lock:
            if self.failed:
                return None
            if (self._stale or self._index is None) and not self._build(source):
                return None
            if nprobe is not None:
                inner = faiss.downcast_index(self._index.index)
                faiss.GpuParameterSpace().set_index_parameter(inner, "nprobe", min(nprobe, GPU_MAX_K))
            return self._index.search(queries, k)


def place(kind: str, device: str, fp16: bool) -> GpuMirror | None:
    """The GPU copy an index of ``kind`` gets for ``device`` (``auto``/``cpu``/``gpu``), or None: search on the CPU.

    Raises:
        GalleryError: an unknown device, or ``device="gpu"`` where FAISS sees no GPU.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise GalleryError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
    if device == "cpu":
        return None
    if gpu_count() == 0:
        if device == "gpu":
            raise GalleryError("device='gpu' but FAISS sees no GPU (is faiss-cpu installed instead of faiss-gpu?)")
        return None
    if kind not in GPU_KINDS:
        log.info("kind %r has no FAISS GPU version; it searches on the CPU", kind)
        return None
    try:
        return GpuMirror(fp16=fp16)
    except Exception as exc:
        log.warning("could not initialise FAISS GPU resources, searching on the CPU: %s", exc)
        return None


class GpuSearch:
    """The GPU side of :class:`index.faiss_backend.FaissBackend`'s search (a mixin: the backend's state)."""

    kind: str
    dim: int
    _options: dict[str, Any]
    _index: faiss.IndexIDMap2 | None
    _gpu: GpuMirror | None
    _search_cpu: Callable[[np.ndarray, int, np.ndarray | None], tuple[np.ndarray, np.ndarray]]  # the backend's own

    def _verify_gpu(self) -> None:
        # Copy to the GPU now, so that a GPU that cannot run FAISS is found (and warned about)
        # when the gallery is opened, and ``device`` tells the truth from the start.
        if self._gpu is not None and self._index is not None and not self._gpu.build(self._gpu_source):
            self._gpu = None

    def _search_gpu(self, queries: np.ndarray, k: int,
                    allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        nprobe = self._options.get("nprobe")
        source = self._gpu_source
        if allowed_ids is None:
            answer = self._gpu.search(source, queries, min(k, len(self)), nprobe)
            if answer is None:
                return None
            scores, ids = pad_results(*answer, k)
            complete = (ids >= 0).sum(axis=1) >= min(k, len(self))
        else:
            # GPU indexes take no IDSelector: search wider on the GPU, finish short rows on the CPU.
            def gpu_search(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
                got = self._gpu.search(source, q, kk, nprobe)
                if got is None:
                    raise _GpuGaveUp
                return pad_results(*got, kk)
            try:
                scores, ids, complete = search_wider(gpu_search, queries, k, allowed_ids, len(self), GPU_MAX_K)
            except _GpuGaveUp:
                return None
        if not complete.all():
            rows = np.flatnonzero(~complete)
            scores[rows], ids[rows] = self._search_cpu(queries[rows], k, allowed_ids)
        return scores, ids

    def _gpu_source(self) -> faiss.Index:
        if self.kind != "flat_fp16":
            return self._index
        # FAISS has no GPU scalar-quantizer flat index; fp16 storage on the GPU is a GpuIndexFlat with
        # useFloat16, built from the decoded vectors.
        sq = faiss.downcast_index(self._index.index)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if len(ids):
            flat.add_with_ids(sq.sa_decode(faiss.vector_to_array(sq.codes).reshape(len(ids), -1)), ids)
        if self._gpu is not None:
            self._gpu.fp16 = True
        return flat


class _GpuGaveUp(Exception):
    """The GPU copy could not answer; fall back to the CPU."""
