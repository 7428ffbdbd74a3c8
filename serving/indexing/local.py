"""The local indexing engine: this process decodes in a thread pool and embeds with one embedder.

Decoding and resizing (OpenCV releases the GIL) run a couple of batches ahead of the embedder, so the
model is kept busy while the next batch is read. Everything after the embedder (adding, skipping bad
files, saving, resuming) is :func:`serving.indexing.common.run_batches`, shared with the Ray engine.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from serving.core.imageio import DEFAULT_LIMITS, DecodeLimits
from serving.embedders import Embedder, load_embedder
from serving.indexing.common import (
    EmbeddedBatch,
    IndexSummary,
    crawl,
    load_item,
    open_gallery,
    pending_items,
    record_image_root,
    reserve_gallery,
    run_batches,
)
from serving.indexing.crawl import ImageItem
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

_PREFETCH_BATCHES = 2


def index_images(model: str | Path | Embedder, images: str | Path, gallery: str | Path, *,
                 cameras: Sequence[int] | None = None, split: str = "all", manifest: str | Path | None = None,
                 batch_size: int = 32, workers: int = 2, backend: str = "auto", kind: str = "flat",
                 save_every: int = 20, limits: DecodeLimits = DEFAULT_LIMITS, show_progress: bool = True,
                 gallery_options: dict[str, Any] | None = None, track_level: int | None = None) -> IndexSummary:
    """Embed the images under ``images`` and add them to the gallery in ``gallery`` (created if absent).

    Args:
        model: the exported model (``.onnx`` / ``.plan`` / ``.pt``) or an already loaded embedder.
        images: root of the image tree; ``source`` paths in the gallery are relative to it.
        gallery: gallery directory.
        cameras: cameras to index (SYSU-MM01 default: the RGB cameras 1, 2, 4, 5; otherwise all).
        split: SYSU-MM01 identities: ``test``, ``train`` or ``all``.
        manifest: CSV ``path,camera[,person_label,timestamp,track_id]`` listing the images instead of crawling.
        batch_size: images per embedder call.
        workers: decoding threads.
        backend: embedder backend (see :func:`serving.embedders.load_embedder`).
        kind: index kind for a new gallery (see ``index.Gallery.create``).
        save_every: save the gallery every this many batches (0: only at the end).
        limits: decoding limits (the same guard as the server's).
        show_progress: draw a tqdm bar.
        gallery_options: extra keyword arguments for ``Gallery.create``.
        track_level: in a generic tree, the folder level below the camera folder that names tracks.

    Returns:
        The run's :class:`~serving.indexing.common.IndexSummary`.

    Raises:
        UserError: missing folders or files, bad options, or a gallery of another model.
    """
    images, gallery_dir = Path(images), Path(gallery)
    if not images.is_dir():
        raise UserError(f"--images {images} is not a directory")
    if batch_size < 1 or workers < 1 or save_every < 0:
        raise UserError(f"--batch-size and --workers must be >= 1 and --save-every >= 0, "
                        f"got {batch_size}, {workers}, {save_every}")
    with reserve_gallery(gallery_dir):  # before the model loads: a second writer is refused at once
        embedder = model if isinstance(model, Embedder) else load_embedder(model, backend=backend)
        items, skipped = crawl(images, cameras, split, Path(manifest) if manifest is not None else None, track_level)
        summary = IndexSummary(found=len(items) + len(skipped), skipped=list(skipped), gallery=str(gallery_dir))
        store = open_gallery(gallery_dir, embedder, kind, **(gallery_options or {}))
        record_image_root(store, Path(images))  # serve shows thumbnails from it
        try:
            return _index_into(store, embedder, items, summary, gallery_dir, batch_size=batch_size, workers=workers,
                               save_every=save_every, limits=limits, show_progress=show_progress)
        finally:
            store.close()  # the directory's write lock


def _index_into(store: Any, embedder: Embedder, items: list[ImageItem], summary: IndexSummary, gallery_dir: Path, *,
                batch_size: int, workers: int, save_every: int, limits: DecodeLimits,
                show_progress: bool) -> IndexSummary:
    """The run of :func:`index_images` once the gallery is open and locked."""
    todo = pending_items(store, items, summary)
    logger.info("%d image(s) to index (%d already in the gallery) with %s", len(todo), summary.already_indexed,
                embedder)
    batches = embed_batches(embedder, todo, batch_size=batch_size, workers=workers, limits=limits)
    return run_batches(store, gallery_dir, summary, batches, total=len(todo), save_every=save_every,
                       show_progress=show_progress)


def embed_batches(embedder: Embedder, todo: Sequence[ImageItem], *, batch_size: int, workers: int,
                  limits: DecodeLimits) -> Iterator[EmbeddedBatch]:
    """Decode ``todo`` in ``workers`` threads, :data:`_PREFETCH_BATCHES` ahead, and embed it batch by batch.

    Yields:
        One :class:`EmbeddedBatch` per ``batch_size`` items, in input order.
    """
    batches = iter([todo[i:i + batch_size] for i in range(0, len(todo), batch_size)])
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[Sequence[ImageItem], list[Future]]] = deque()

        def submit_next() -> None:
            batch = next(batches, None)
            if batch is not None:
                pending.append((batch, [pool.submit(load_item, it, embedder.height, embedder.width, limits)
                                        for it in batch]))

        for _ in range(_PREFETCH_BATCHES):
            submit_next()
        while pending:
            batch, futures = pending.popleft()
            submit_next()
            results = [future.result() for future in futures]
            pixels = [r for r in results if not isinstance(r, str)]
            vectors = embedder.embed(np.stack(pixels)) if pixels else np.zeros((0, embedder.dim), np.float32)
            yield EmbeddedBatch(items=list(batch), errors=[r if isinstance(r, str) else "" for r in results],
                                vectors=vectors)
