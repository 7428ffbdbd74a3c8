"""What a running server holds: the embedder, the gallery, the micro-batcher and the thread pools.

Built once in the FastAPI lifespan (LitServe's "setup once, then serve" lifecycle), torn down on
shutdown, and reached by routes through ``deps.RuntimeDep``. All blocking work (decoding, model calls,
FAISS search, SQLite, saving) runs in threads so the event loop only ever shuffles requests.

The gallery's concurrency and durability rules (changes saved before they are acknowledged, undone when
the save fails, one writer per directory) live in :mod:`serving.runtime.durable`, so routes need not think
about them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from index.manifest import MANIFEST  # Gallery.save writes it; its presence means "a gallery lives here"
from serving.core import heap
from serving.core.config import Settings
from serving.core.imageio import DecodeLimits, ImageDecodeError, claimed_size, decode_image
from serving.runtime.batching import JobResult, MicroBatcher
from serving.runtime.durable import AddResult, DurableGallery
from serving.runtime.metrics import Metrics
from xmreid.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)

# Uploads up to this size whose header claims up to this many pixels are decoded in the model thread with
# their micro-batch (a crop decodes in well under a millisecond there, and the request needs no hand-off of
# its own). Anything else could hold up the whole batch, and every search waiting on it, and is decoded in
# the decode pool first: a big file, or a small one that decompresses to many pixels (a 25 KB PNG can hold
# 30 megapixels of one colour). The pixel count comes from the header (no pixel is decoded to learn it).
BATCH_DECODE_BYTES = 256 * 1024
BATCH_DECODE_PIXELS = 512 * 512


def decode_in_pool(data: bytes, limits: DecodeLimits) -> bool:
    """True when ``data`` must be decoded in the decode pool rather than in the model thread (see above).

    A file whose header cannot be read, or claims more than ``limits`` accept, goes to the model thread: its
    decoding fails there at the same header check, before any pixel is touched. Only the size is read here
    (:func:`claimed_size`, microseconds); the decoder checks the whole file as before.
    """
    if len(data) > BATCH_DECODE_BYTES:
        return True
    try:
        width, height = claimed_size(data)
    except ImageDecodeError:
        return False
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        return False
    return width * height > BATCH_DECODE_PIXELS


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
    early = None
    if settings.exclusive and settings.save_on_mutation and not settings.read_only:
        early = _reserve(Path(settings.gallery))  # before the model loads: refused at once if another writes
    try:
        embedder = load_settings_embedder(settings)
        return embedder, load_gallery(settings, embedder)
    finally:
        if early is not None:
            early.release()  # the gallery holds its own reference to the lock now


def load_settings_embedder(settings: Settings) -> Any:
    """The embedder ``settings`` name: a Triton model (``backend triton``) or the ``model`` file."""
    from serving.embedders import load_embedder, load_triton_embedder

    if settings.backend == "triton":
        return load_triton_embedder(str(settings.triton_url), settings.triton_model, settings.triton_timeout_s)
    return load_embedder(settings.model, backend=settings.backend)


def _reserve(directory: Path) -> Any:
    from index.errors import GalleryError
    from index.locking import acquire_directory

    try:
        return acquire_directory(directory)
    except GalleryError as exc:
        raise UserError(f"cannot use gallery {directory}: {exc}") from exc


def load_gallery(settings: Settings, embedder: Any) -> Any:
    """Open ``settings.gallery`` for ``embedder`` (or start an empty one when ``create_gallery`` is set).

    The directory's write lock is taken now only with ``exclusive`` (otherwise by the first saved change);
    with ``read_only`` never.

    Raises:
        UserError: no gallery there, one built with another model or descriptor size, one another process
            writes (with ``exclusive``), or a damaged one (exit code 2, the message names the file).
    """
    from index import Gallery
    from index.errors import CorruptGalleryError, GalleryError

    directory = Path(settings.gallery)
    claim = settings.exclusive and settings.save_on_mutation and not settings.read_only
    try:
        if (directory / MANIFEST).is_file():
            gallery = Gallery.load(directory, fingerprint=embedder.fingerprint,
                                   family=getattr(embedder, "family", None),
                                   dim=int(embedder.dim),
                                   read_only=settings.read_only, claim=claim)
        elif settings.create_gallery and not settings.read_only:
            logger.info("no gallery in %s; starting an empty one (it is written on the first change)", directory)
            gallery = Gallery.create(int(embedder.dim), fingerprint=embedder.fingerprint,
                                     family=getattr(embedder, "family", None),
                                     directory=directory if claim else None)
        else:
            raise UserError(f"no gallery in {directory} (no {MANIFEST}); build one with `python -m serving index`"
                            + ("" if settings.read_only else ", or start with --create-gallery to begin empty"))
    except CorruptGalleryError as exc:
        raise UserError(f"cannot use gallery {directory}: {exc}", exit_code=EXIT_DAMAGED) from exc
    except GalleryError as exc:
        raise UserError(f"cannot use gallery {directory}: {exc}") from exc
    if not settings.save_on_mutation and not settings.read_only:
        logger.warning("gallery changes are kept in memory only (--no-save): nothing is written to %s, and a "
                       "shutdown with changes reports them and exits non-zero", directory)
    return gallery


def gallery_image_root(gallery: Any) -> Path | None:
    """The folder ``python -m serving index --images DIR`` recorded in the gallery's manifest, if it still is one.

    Read afresh on each call: a reload may install a gallery indexed elsewhere (a dict lookup and a stat).
    """
    recorded = dict(getattr(gallery, "notes", {}) or {}).get("image_root")
    if not recorded:
        return None
    root = Path(recorded)
    return root if root.is_dir() else None


def describe_image_roots(settings: Settings, gallery: Any) -> str:
    """One sentence for the startup log: where thumbnails come from, and why."""
    if settings.image_roots:
        return "thumbnails: gallery images are read from " + ", ".join(map(str, settings.image_roots)) + \
            " (--image-root)"
    recorded = dict(getattr(gallery, "notes", {}) or {}).get("image_root")
    root = gallery_image_root(gallery)
    if root is not None:
        return (f"thumbnails: gallery images are read from {root}, the folder the gallery was indexed from "
                f"(recorded in its manifest; --image-root overrides)")
    if recorded:
        return (f"thumbnails: off; the gallery was indexed from {recorded}, which is not a directory here "
                f"(give --image-root)")
    return "thumbnails: off; the gallery records no image folder (give --image-root)"


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
                 owns_embedder: bool = False, owns_gallery: bool = False) -> None:
        self.settings = settings
        self.embedder = embedder
        self.metrics = metrics
        self.limits = DecodeLimits(max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
                                   max_side=settings.max_side)
        self.batcher = MicroBatcher(
            embedder.embed, max_batch_size=settings.max_batch_size, max_wait_s=settings.max_wait_s,
            max_queue=settings.max_queue, thread_safe=bool(getattr(embedder, "thread_safe", False)),
            concurrency=settings.model_concurrency, observer=metrics.observe_batch,
            decode=self._decode_sync, finish=self._search_jobs)
        self._decode_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        self.durable = DurableGallery(settings, gallery, getattr(embedder, "fingerprint", None), int(embedder.dim),
                                      getattr(embedder, "family", None))
        self._given_gallery = None if owns_gallery else gallery  # a caller's gallery is theirs to close
        self._cameras: dict[int, int] = {}
        self._size = 0
        self._owns_embedder = owns_embedder  # close only what we loaded; a caller's embedder is theirs

    @property
    def gallery(self) -> Any:
        """The served ``index.Gallery`` (a reload replaces it: read it afresh, do not keep it)."""
        return self.durable.gallery

    @classmethod
    async def start(cls, settings: Settings, metrics: Metrics, embedder: Any = None, gallery: Any = None) -> Runtime:
        """Load what is not given, start the batcher, and return the ready runtime.

        Args:
            settings: server settings.
            metrics: the app's metrics.
            embedder: an already loaded embedder (tests, or the CLI that loaded it to report errors early).
            gallery: an already loaded gallery.

        Returns:
            The runtime, ready to serve.
        """
        owns_embedder, owns_gallery = embedder is None, gallery is None
        if embedder is None:
            embedder = await asyncio.to_thread(load_settings_embedder, settings)
        if gallery is None:
            gallery = await asyncio.to_thread(load_gallery, settings, embedder)
        runtime = cls(settings, embedder, gallery, metrics, owns_embedder=owns_embedder, owns_gallery=owns_gallery)
        await asyncio.to_thread(runtime.refresh_cameras)
        await runtime.batcher.start()
        metrics.watch_batcher(runtime.batcher)
        metrics.set_model(runtime.model_info())
        logger.info("serving model %s (%s, %dx%d -> %d-d) over a gallery of %d items",
                    str(embedder.fingerprint)[:12], embedder.name, embedder.height, embedder.width,
                    embedder.dim, runtime.size)
        logger.info("%s", describe_image_roots(settings, runtime.gallery))
        return runtime

    async def close(self) -> None:
        """Stop the batcher and the decode threads; release the model and gallery if this runtime loaded them."""
        await self.batcher.stop()
        self._decode_pool.shutdown(wait=True)
        if self.gallery is not self._given_gallery:
            self.gallery.close()  # the directory's write lock, if it was taken
        close = getattr(self.embedder, "close", None)
        if self._owns_embedder and callable(close):
            close()

    @property
    def ready(self) -> bool:
        """Whether requests can be served (the batcher's worker is alive, the gallery is sound)."""
        return self.not_ready_reason is None

    @property
    def not_ready_reason(self) -> str | None:
        """Why :attr:`ready` is False, as a sentence (None when ready)."""
        if not self.batcher.running:
            return "the micro-batcher is not running"
        # A model served elsewhere (Triton) has its own readiness, kept current by the embedder off the loop.
        model_reason = getattr(self.embedder, "not_ready_reason", None)
        if isinstance(model_reason, str):
            return model_reason
        return self.durable.not_ready_reason

    @property
    def image_roots(self) -> list[Path]:
        """Folders thumbnails may read gallery images from: ``--image-root`` when given, else the folder the
        gallery was indexed from (``image_root`` in its manifest, see :func:`gallery_image_root`)."""
        if self.settings.image_roots:
            return list(self.settings.image_roots)
        root = gallery_image_root(self.gallery)
        return [root] if root is not None else []

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

    def refresh_cameras(self) -> None:
        """Re-read the served size and per-camera counts (``/readyz``, the size metric) after a change."""
        stats = self.durable.stats()
        self._cameras = {int(k): int(v) for k, v in dict(stats.get("cameras", {})).items()}
        self._size = int(stats.get("count", len(self.gallery)))
        self.metrics.gallery_size.set(self._size)

    # -- work off the event loop -------------------------------------------------------------------

    async def decode(self, data: bytes) -> np.ndarray:
        """Decode and resize one upload in the decode pool (OpenCV releases the GIL)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, decode_image, data, int(self.embedder.height),
                                          int(self.embedder.width), self.limits)

    def _decode_sync(self, data: bytes) -> np.ndarray:
        return decode_image(data, int(self.embedder.height), int(self.embedder.width), self.limits)

    async def search_image(self, data: bytes, k: int, cameras: list[int] | None) -> JobResult:
        """Decode, embed and search one upload with its micro-batch, in the model thread (one hand-off).

        Args:
            data: the uploaded file.
            k: results wanted.
            cameras: keep only these cameras, or None for all.

        Returns:
            The batcher's :class:`~serving.runtime.batching.JobResult`; ``result`` is the hit list
            (:meth:`serving.runtime.durable.DurableGallery.search` for one query) and ``decode_s`` the decoding time.

        Raises:
            ImageDecodeError: the upload is not a usable image.
            BatcherOverloaded, BatcherClosed: the model queue is full or stopped.
        """
        if not decode_in_pool(data, self.limits):  # nearly every crop: straight to the batcher (the hot path)
            return await self.batcher.submit_job(data, (k, cameras))
        (outcome,) = await self.search_images([data], k, cameras)  # a big image: decoded in the pool there
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def search_images(self, datas: list[bytes], k: int, cameras: list[int] | None) -> list[JobResult | Exception]:
        """:meth:`search_image` for several uploads of one request, queued together (``POST /search/batch``).

        Returns:
            Per upload, in order, its :class:`~serving.runtime.batching.JobResult` or the exception that failed it
            (e.g. ``ImageDecodeError``): the route answers the first failure in upload order.

        Raises:
            BatcherOverloaded, BatcherClosed: the model queue is full or stopped.
        """
        outcomes: list[Any] = list(datas)
        decode_s = [0.0] * len(datas)
        large = [i for i, data in enumerate(datas) if decode_in_pool(data, self.limits)]
        if large:  # big images, which could hold up a whole batch, are decoded in the pool first
            started = time.perf_counter()
            decoded = await asyncio.gather(*(self.decode(datas[i]) for i in large), return_exceptions=True)
            for i, image in zip(large, decoded):
                outcomes[i] = image  # an array, or the exception that stays this upload's outcome
                decode_s[i] = time.perf_counter() - started
        todo = [i for i, item in enumerate(outcomes) if not isinstance(item, BaseException)]
        if todo:
            jobs = await self.batcher.submit_jobs([outcomes[i] for i in todo], [(k, cameras)] * len(todo))
            for i, job in zip(todo, jobs):
                if isinstance(job, JobResult) and decode_s[i]:
                    job.decode_s = decode_s[i]
                outcomes[i] = job
        return outcomes

    def _search_jobs(self, vectors: np.ndarray, contexts: list[Any]) -> list[Any]:
        """The batcher's ``finish``: search for a micro-batch's jobs, one gallery call per (k, cameras)."""
        groups: dict[tuple[int, tuple[int, ...] | None], list[int]] = {}
        for j, (k, cameras) in enumerate(contexts):
            groups.setdefault((k, None if cameras is None else tuple(cameras)), []).append(j)
        results: list[Any] = [None] * len(contexts)
        for (k, cameras), rows in groups.items():
            try:
                hits: list[Any] = self.durable.search(vectors[rows], k, None if cameras is None else list(cameras))
            except Exception as exc:  # e.g. GalleryDamaged: these requests fail, the others of the batch do not
                hits = [exc] * len(rows)
            for j, row_hits in zip(rows, hits):
                results[j] = row_hits
        return results

    async def add(self, vectors: np.ndarray, metadata: list[dict[str, Any]], key: str | None = None,
                  digest: str = "") -> AddResult:
        """Add items and save them (see :meth:`serving.runtime.durable.DurableGallery.add`)."""
        return await asyncio.to_thread(self._add_sync, vectors, metadata, key, digest)

    def _add_sync(self, vectors: np.ndarray, metadata: list[dict[str, Any]], key: str | None = None,
                  digest: str = "") -> AddResult:
        try:
            return self.durable.add(vectors, metadata, key, digest)
        finally:
            self.refresh_cameras()

    async def find_request(self, key: str) -> tuple[str, list[int]] | None:
        """``(digest, ids)`` of a saved add made with this idempotency key, or None."""
        find = getattr(self.gallery, "find_request", None)
        return await asyncio.to_thread(find, key) if find is not None else None

    async def remove(self, item_id: int) -> int:
        """Remove one item (``index.errors.UnknownIdsError`` if absent), persist, return the gallery size."""
        return await asyncio.to_thread(self._remove_sync, item_id)

    def _remove_sync(self, item_id: int) -> int:
        try:
            return self.durable.remove(item_id)
        finally:
            self.refresh_cameras()

    async def reload(self) -> dict[str, Any]:
        """Reload the gallery from disk, or install the staging copy (:meth:`DurableGallery.reload`)."""
        def _reload() -> dict[str, Any]:
            try:
                return self.durable.reload()
            finally:
                self.refresh_cameras()
                heap.refreeze()  # the replaced gallery is garbage in a reference cycle (serving.core.heap)
        return await asyncio.to_thread(_reload)

    async def stats(self) -> dict[str, Any]:
        """The gallery's own statistics plus size, dimension and fingerprint."""
        return await asyncio.to_thread(self.durable.stats)
