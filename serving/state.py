"""What a running server holds: the embedder, the gallery, the micro-batcher and the thread pools.

Built once in the FastAPI lifespan (LitServe's "setup once, then serve" lifecycle), torn down on
shutdown, and reached by routes through ``deps.RuntimeDep``. All blocking work (decoding, model calls,
FAISS search, SQLite, saving) runs in threads so the event loop only ever shuffles requests.

Concurrency rules for the gallery, kept here so routes need not think about them:

* searches run in parallel threads (the gallery's own readers-writer lock lets them);
* a search and the metadata lookup of its hits happen under one *read* hold of :attr:`Runtime._rw`, so a
  concurrent delete can never leave a hit without its metadata;
* mutations are serialised by :attr:`Runtime._mutation` and take the *write* side only while they change
  the gallery; the save that follows holds the read side, so searches continue while it writes to disk.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from serving.batching import MicroBatcher
from serving.core.config import Settings
from serving.errors import UserError
from serving.imageio import DecodeLimits, decode_image
from serving.metrics import Metrics

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # Gallery.save writes it; its presence means "a gallery lives here"


def load_components(settings: Settings) -> tuple[Any, Any]:
    """Load the embedder and the gallery named by ``settings`` (blocking; seconds for a big model).

    Args:
        settings: the server settings (``model``, ``backend``, ``gallery``, ``create_gallery``).

    Returns:
        ``(embedder, gallery)``.

    Raises:
        UserError: the model cannot be loaded, the gallery is missing (and ``create_gallery`` is off), or
            the gallery was built with a different model.
    """
    from serving.embedders import load_embedder

    embedder = load_embedder(settings.model, backend=settings.backend)
    return embedder, load_gallery(settings, embedder)


def load_gallery(settings: Settings, embedder: Any) -> Any:
    """Open ``settings.gallery`` for ``embedder`` (or start an empty one when ``create_gallery`` is set).

    Raises:
        UserError: no gallery there, or one built with another model or descriptor size.
    """
    from index import Gallery
    from index.errors import GalleryError

    directory = Path(settings.gallery)
    try:
        if (directory / MANIFEST).is_file():
            gallery = Gallery.load(directory, fingerprint=embedder.fingerprint, dim=int(embedder.dim))
        elif settings.create_gallery:
            logger.info("no gallery in %s; starting an empty one (it is written on the first change)", directory)
            gallery = Gallery.create(int(embedder.dim), fingerprint=embedder.fingerprint)
        else:
            raise UserError(f"no gallery in {directory} (no {MANIFEST}); build one with `python -m serving index`, "
                            f"or start with --create-gallery to begin empty")
    except GalleryError as exc:
        raise UserError(f"cannot use gallery {directory}: {exc}") from exc
    return gallery


class Runtime:
    """The loaded server state. Create with :meth:`start`, release with :meth:`close`.

    Attributes:
        settings: the server settings.
        embedder: the model (``serving.embedders.Embedder`` or anything with the same attributes).
        gallery: the ``index.Gallery``.
        batcher: the micro-batcher in front of ``embedder.embed``.
        metrics: the app's metrics.
        limits: upload limits given to the decoder.
    """

    def __init__(self, settings: Settings, embedder: Any, gallery: Any, metrics: Metrics, *,
                 owns_embedder: bool = False) -> None:
        from index.locking import ReadWriteLock

        self.settings = settings
        self.embedder = embedder
        self.gallery = gallery
        self.metrics = metrics
        self.limits = DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                                   max_side=settings.max_side)
        self.batcher = MicroBatcher(
            embedder.embed, max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_s,
            max_queue=settings.max_queue, thread_safe=bool(getattr(embedder, "thread_safe", False)),
            concurrency=settings.model_concurrency, observer=metrics.observe_batch)
        self._decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self._rw = ReadWriteLock()
        # A thread lock, taken inside the worker thread: an asyncio lock would be released when a client
        # disconnects mid-request while the thread it started is still changing the gallery.
        self._mutation = threading.Lock()
        self._cameras: dict[int, int] = {}
        self._size = 0
        self._owns_embedder = owns_embedder  # close only what we loaded; a caller's embedder is theirs

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics, embedder: Any = None, gallery: Any = None) -> "Runtime":
        """Load what is not given, start the batcher, and return the ready runtime.

        Args:
            settings: server settings.
            metrics: the app's metrics.
            embedder: an already loaded embedder (tests, or the CLI that loaded it to report errors early).
            gallery: an already loaded gallery.

        Returns:
            The runtime, ready to serve.
        """
        owns_embedder = embedder is None
        if embedder is None:
            from serving.embedders import load_embedder

            embedder = await asyncio.to_thread(load_embedder, settings.model, settings.backend)
        if gallery is None:
            gallery = await asyncio.to_thread(load_gallery, settings, embedder)
        runtime = cls(settings, embedder, gallery, metrics, owns_embedder=owns_embedder)
        await asyncio.to_thread(runtime._refresh_cameras)
        await runtime.batcher.start()
        logger.info("serving model %s (%s, %dx%d -> %d-d) over a gallery of %d items",
                    str(embedder.fingerprint)[:12], embedder.name, embedder.height, embedder.width,
                    embedder.dim, runtime.size)
        return runtime

    async def close(self) -> None:
        """Stop the batcher and the decode threads, and release the model if this runtime loaded it."""
        await self.batcher.stop()
        self._decode_pool.shutdown(wait=True)
        close = getattr(self.embedder, "close", None)
        if self._owns_embedder and callable(close):
            close()

    @property
    def ready(self) -> bool:
        """Whether requests can be served (the batcher's worker is alive)."""
        return self.batcher.running

    def model_info(self) -> dict[str, Any]:
        """The ``model`` object of search answers."""
        e = self.embedder
        return {"name": e.name, "fingerprint": e.fingerprint, "dim": int(e.dim), "height": int(e.height),
                "width": int(e.width)}

    # -- cameras -----------------------------------------------------------------------------------

    @property
    def cameras(self) -> dict[int, int]:
        """Items per camera in the gallery (kept current across mutations)."""
        return dict(self._cameras)

    @property
    def size(self) -> int:
        """Items in the gallery, cached so the event loop never waits on the gallery's lock to read it."""
        return self._size

    def _refresh_cameras(self) -> None:
        stats = self.gallery.stats()
        self._cameras = {int(k): int(v) for k, v in dict(stats.get("cameras", {})).items()}
        self._size = int(stats.get("count", len(self.gallery)))
        self.metrics.gallery_size.set(self._size)

    # -- work off the event loop -------------------------------------------------------------------

    async def decode(self, data: bytes) -> np.ndarray:
        """Decode and resize one upload in the decode pool (OpenCV releases the GIL)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, decode_image, data, int(self.embedder.height),
                                          int(self.embedder.width), self.limits)

    async def search(self, vectors: np.ndarray, k: int, cameras: list[int] | None) -> list[list[dict[str, Any]]]:
        """Rank the gallery for each query vector.

        Args:
            vectors: float32 ``[N, dim]`` un-normalised descriptors (the gallery normalises).
            k: results per query.
            cameras: keep only these cameras, or None for all.

        Returns:
            Per query, the hits best first: dicts with rank, gallery_id, score and the item's metadata.
        """
        return await asyncio.to_thread(self._search_sync, vectors, k, cameras)

    def _search_sync(self, vectors: np.ndarray, k: int, cameras: list[int] | None) -> list[list[dict[str, Any]]]:
        with self._rw.read():
            scores, ids = self.gallery.search(np.asarray(vectors, dtype=np.float32), k, cameras=cameras)
            found = sorted({int(i) for i in np.asarray(ids).ravel() if i >= 0})
            meta = dict(zip(found, self.gallery.get(found))) if found else {}
        answers = []
        for row_scores, row_ids in zip(np.asarray(scores), np.asarray(ids)):
            hits = []
            for score, gid in zip(row_scores, row_ids):
                if gid < 0:  # -1 pads rows when fewer than k items match
                    continue
                item = meta[int(gid)]
                hits.append({"rank": len(hits) + 1, "gallery_id": int(gid), "score": float(score),
                             "camera": item.get("camera"), "person_label": item.get("person_label"),
                             "source": item.get("source")})
            answers.append(hits)
        return answers

    async def add(self, vectors: np.ndarray, metadata: list[dict[str, Any]]) -> tuple[list[int], int]:
        """Add items, persist (unless disabled), and return (new ids, gallery size)."""
        return await asyncio.to_thread(self._add_sync, vectors, metadata)

    def _add_sync(self, vectors: np.ndarray, metadata: list[dict[str, Any]]) -> tuple[list[int], int]:
        with self._mutation:
            with self._rw.write():
                ids = [int(i) for i in np.asarray(self.gallery.add(np.asarray(vectors, dtype=np.float32), metadata))]
            self._after_mutation()
            return ids, self._size

    async def remove(self, item_id: int) -> int:
        """Remove one item (``index.errors.UnknownIdsError`` if absent), persist, return the gallery size."""
        return await asyncio.to_thread(self._remove_sync, item_id)

    def _remove_sync(self, item_id: int) -> int:
        with self._mutation:
            with self._rw.write():
                self.gallery.remove([int(item_id)])
            self._after_mutation()
            return self._size

    def _after_mutation(self) -> None:
        # Reading for the save is enough: searches may go on while the files are written.
        with self._rw.read():
            if self.settings.save_on_mutation:
                started = time.perf_counter()
                self.gallery.save(self.settings.gallery)
                logger.info("gallery saved to %s in %.1f ms", self.settings.gallery,
                            1000 * (time.perf_counter() - started))
            self._refresh_cameras()

    async def stats(self) -> dict[str, Any]:
        """The gallery's own statistics plus size, dimension and fingerprint."""
        def _stats() -> dict[str, Any]:
            with self._rw.read():
                return dict(self.gallery.stats())
        return await asyncio.to_thread(_stats)
