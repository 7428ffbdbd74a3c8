"""``python -m serving index``: crawl RGB crops, embed them in batches, add them to a gallery.

Written like a torchvision reference script (one ``main`` over plain functions) and resumable the way
faiss's ``big_batch_search`` checkpoints: the gallery is saved every ``--save-every`` batches through
``Gallery.save`` (atomic: temp file, fsync, rename), so a killed run loses at most the batches since
the last save, and a rerun skips every ``source`` already in the gallery, so it finishes the job without
adding duplicates. Unreadable files are reported and skipped; they never abort the run.

The run owns the gallery directory for writing from start to end (its write lock, ``index.locking``): a
second indexer, or a server that has written the gallery, is refused at once with the holder named, so
two writers can never overwrite each other's items. A save that fails (a full disk) keeps the last good
save, and the run stops with one sentence and exit status 1; rerunning the same command resumes.

Decoding and resizing (OpenCV releases the GIL) run in a thread pool, a couple of batches ahead of the
embedder, so the model is kept busy while the next batch is read.
"""

from __future__ import annotations

import argparse
import errno
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from serving.crawl import SPLITS, ImageItem, crawl_generic, crawl_sysu, is_sysu_tree, read_manifest
from serving.embedders import BACKENDS, Embedder, load_embedder
from serving.errors import EXIT_DAMAGED, UserError
from serving.imageio import DEFAULT_LIMITS, DecodeLimits, ImageDecodeError, decode_image_file

logger = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("local", "ray")
GALLERY_MANIFEST = "manifest.json"  # written by Gallery.save; its presence means "a gallery lives here"
_PREFETCH_BATCHES = 2


@dataclass
class IndexSummary:
    """What an indexing run did.

    Attributes:
        found: images the crawl found (after camera / split filters).
        indexed: images embedded and added in this run.
        already_indexed: images skipped because their ``source`` was already in the gallery (resume).
        skipped: ``(source, reason)`` for every file that could not be indexed.
        seconds: wall time of the embedding loop.
        gallery_size: items in the gallery at the end.
        gallery: the gallery directory.
    """

    found: int = 0
    indexed: int = 0
    already_indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    gallery_size: int = 0
    gallery: str = ""

    @property
    def images_per_s(self) -> float:
        """Indexing throughput of this run (decode + embed + add), images per second."""
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def format(self, max_skipped: int = 20) -> str:
        """A human-readable report, listing up to ``max_skipped`` skipped files with their reasons."""
        lines = [f"indexed {self.indexed} image(s) in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) "
                 f"into {self.gallery} (now {self.gallery_size} items)",
                 f"found {self.found}, already in the gallery {self.already_indexed}, skipped {len(self.skipped)}"]
        for source, reason in self.skipped[:max_skipped]:
            lines.append(f"  skipped {source}: {reason}")
        if len(self.skipped) > max_skipped:
            lines.append(f"  ... and {len(self.skipped) - max_skipped} more skipped file(s)")
        return "\n".join(lines)


def crawl(images: Path, cameras: Sequence[int] | None = None, split: str = "all",
          manifest: Path | None = None) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """Pick the crawler: a CSV manifest when given, else SYSU-MM01 when ``exp/`` is present, else generic.

    Returns:
        ``(items, skipped (source, reason) pairs)``.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if manifest is not None:
        if split != "all":
            raise UserError("--split selects SYSU-MM01 ids; with --manifest, list the wanted images in the manifest")
        return read_manifest(manifest, images, cameras), []
    if is_sysu_tree(images):
        logger.info("%s has the SYSU-MM01 layout (cam<N>/<pid>/, exp/)", images)
        return crawl_sysu(images, cameras, split), []
    if split != "all":
        raise UserError(f"--split {split} needs a SYSU-MM01 tree (cam<N>/<pid>/ and exp/*_id.txt); "
                        f"{images} has no exp/ folder, so use --split all")
    return crawl_generic(images, cameras)


def open_gallery(directory: Path, embedder: Embedder, kind: str = "flat", **options: Any) -> Any:
    """Load the gallery in ``directory`` (checking it belongs to this model), or create an empty one, and
    take the directory's write lock for the run.

    Raises:
        UserError: the gallery was built with another model or descriptor size, is damaged (exit status 2),
            or another process writes it (the message names it and says how to add crops to a served gallery).
    """
    from index import Gallery
    from index.errors import CorruptGalleryError, GalleryError, GalleryLockedError

    try:
        if (directory / GALLERY_MANIFEST).is_file():
            gallery = Gallery.load(directory, fingerprint=embedder.fingerprint, family=getattr(embedder, "family", None),
                                   dim=embedder.dim, claim=True)
            if gallery.kind != kind:
                logger.warning("%s is an existing %r gallery; --kind %s applies only to new galleries",
                               directory, gallery.kind, kind)
            logger.info("resuming gallery %s (%d items)", directory, len(gallery))
            return gallery
        if options.get("backend") == "milvus":  # Milvus keeps its own data; its manifest is written on save
            return Gallery.create(embedder.dim, kind=kind, fingerprint=embedder.fingerprint,
                                  family=getattr(embedder, "family", None), **options)
        return Gallery.create(embedder.dim, kind=kind, fingerprint=embedder.fingerprint, family=getattr(embedder, "family", None),
                              directory=directory,
                              **options)
    except GalleryLockedError as exc:
        raise UserError(f"cannot index into {directory}: {exc}. To add crops to a gallery a server is serving, "
                        f"POST them to its /gallery, or copy it (python -m serving gallery copy), index into the "
                        f"copy and POST /gallery/reload") from exc
    except CorruptGalleryError as exc:
        raise UserError(f"cannot add to the gallery in {directory}: {exc}", exit_code=EXIT_DAMAGED) from exc
    except GalleryError as exc:
        if (directory / GALLERY_MANIFEST).is_file():
            raise UserError(f"cannot add to the gallery in {directory}: {exc}. A gallery holds descriptors "
                            "of one model; index into a new --gallery directory") from exc
        raise UserError(f"cannot create a {kind!r} gallery: {exc}") from exc


def record_image_root(store: Any, images: Path) -> None:
    """Note in the gallery's manifest the folder its ``source`` paths are relative to.

    ``serve`` then shows thumbnails without ``--image-root`` (still confined to that folder). A gallery
    indexed from a second folder keeps the latest one, with a warning: the earlier items' thumbnails then
    need ``--image-root`` for both.
    """
    set_note = getattr(store, "set_note", None)
    if set_note is None:  # a gallery object without notes (a stand-in): thumbnails need --image-root
        return
    root = str(images.resolve())
    previous = store.notes.get("image_root")
    if previous and previous != root:
        logger.warning("gallery was indexed from %s before and now from %s; the manifest records the latter, so "
                       "serve the earlier items' thumbnails with --image-root for both", previous, root)
    set_note("image_root", root)


def reserve_gallery(directory: Path) -> Any:
    """The gallery directory's write lock, taken before anything slow (a context manager).

    Raises:
        UserError: another process writes the directory (named), or it is not a gallery directory.
    """
    from index.errors import GalleryError, GalleryLockedError
    from index.locking import acquire_directory
    from index.persist import check_new_target

    try:
        check_new_target(directory)
        return acquire_directory(directory)
    except GalleryLockedError as exc:
        raise UserError(f"cannot index into {directory}: {exc}. To add crops to a gallery a server is serving, "
                        f"POST them to its /gallery, or copy it (python -m serving gallery copy), index into the "
                        f"copy and POST /gallery/reload") from exc
    except GalleryError as exc:
        raise UserError(str(exc)) from exc


def save_gallery(store: Any, gallery_dir: Path) -> None:
    """Save, turning a failed save into one sentence (the last good save stays, and a rerun resumes from it).

    Raises:
        UserError: the save failed; the message names the cause and what is on disk now.
    """
    try:
        store.save(gallery_dir)
    except OSError as exc:
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        raise UserError(f"could not save the gallery to {gallery_dir}: {exc.strerror or exc} ({code}); "
                        f"{_last_good_save(gallery_dir)}; fix that and rerun the same command to resume") from None


def _last_good_save(gallery_dir: Path) -> str:
    from index.persist import read_manifest

    try:
        manifest = read_manifest(gallery_dir)
    except Exception:  # noqa: BLE001 - only describing what is there
        return "nothing was saved there yet"
    return f"the last good save is kept ({manifest['count']} items, saved {manifest.get('saved')})"


def gallery_metadata(gallery: Any, chunk: int = 10_000) -> list[dict[str, Any]]:
    """Metadata of every item in the gallery, in id order.

    ``index.Gallery`` assigns increasing ids below ``stats()["next_id"]`` and never reuses them, so
    reading that range with ``missing="none"`` visits every item through the public API (a gallery
    that offers ``ids()`` is asked directly).
    """
    if hasattr(gallery, "ids"):
        ids = np.asarray(gallery.ids(), dtype=np.int64)
        return [m for s in range(0, len(ids), chunk) for m in gallery.get(ids[s:s + chunk])]
    next_id = int(gallery.stats()["next_id"])
    return [m for s in range(0, next_id, chunk)
            for m in gallery.get(np.arange(s, min(s + chunk, next_id)), missing="none") if m is not None]


def gallery_sources(gallery: Any) -> set[str]:
    """Every ``source`` already in the gallery (what a resumed run skips)."""
    return {m["source"] for m in gallery_metadata(gallery) if m.get("source")}


def _load(item: ImageItem, height: int, width: int, limits: DecodeLimits) -> np.ndarray | str:
    """Decoded pixels, or the reason the file cannot be used (never raises: one bad file must not stop a run)."""
    try:
        return decode_image_file(item.path, height, width, limits)
    except ImageDecodeError as exc:
        return f"{exc.error}: {exc.detail}"
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    except Exception as exc:  # a codec crash on a hostile file is still just a skipped file
        return f"{type(exc).__name__}: {exc}"


def index_images(model: str | Path | Embedder, images: str | Path, gallery: str | Path, *,
                 cameras: Sequence[int] | None = None, split: str = "all", manifest: str | Path | None = None,
                 batch_size: int = 32, workers: int = 2, backend: str = "auto", kind: str = "flat",
                 save_every: int = 20, limits: DecodeLimits = DEFAULT_LIMITS, show_progress: bool = True,
                 gallery_options: dict[str, Any] | None = None) -> IndexSummary:
    """Embed the images under ``images`` and add them to the gallery in ``gallery`` (created if absent).

    Args:
        model: the exported model (``.onnx`` / ``.plan`` / ``.pt``) or an already loaded embedder.
        images: root of the image tree; ``source`` paths in the gallery are relative to it.
        gallery: gallery directory.
        cameras: cameras to index (SYSU-MM01 default: the RGB cameras 1, 2, 4, 5; otherwise all).
        split: SYSU-MM01 identities: ``test``, ``train`` or ``all``.
        manifest: CSV ``path,camera[,person_label,timestamp]`` listing the images instead of crawling.
        batch_size: images per embedder call.
        workers: decoding threads.
        backend: embedder backend (see :func:`serving.embedders.load_embedder`).
        kind: index kind for a new gallery (see ``index.Gallery.create``).
        save_every: save the gallery every this many batches (0: only at the end).
        limits: decoding limits (the same guard as the server's).
        show_progress: draw a tqdm bar.
        gallery_options: extra keyword arguments for ``Gallery.create``.

    Returns:
        The run's :class:`IndexSummary`.

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
        items, skipped = crawl(images, cameras, split, Path(manifest) if manifest is not None else None)
        summary = IndexSummary(found=len(items) + len(skipped), skipped=list(skipped), gallery=str(gallery_dir))
        store = open_gallery(gallery_dir, embedder, kind, **(gallery_options or {}))
        record_image_root(store, images)
        try:
            return _index_into(store, embedder, items, summary, gallery_dir, batch_size=batch_size, workers=workers,
                               save_every=save_every, limits=limits, show_progress=show_progress)
        finally:
            store.close()  # the directory's write lock


def _index_into(store: Any, embedder: Embedder, items: list[ImageItem], summary: IndexSummary, gallery_dir: Path, *,
                batch_size: int, workers: int, save_every: int, limits: DecodeLimits,
                show_progress: bool) -> IndexSummary:
    """The embedding loop of :func:`index_images` (with the gallery open and locked)."""
    done = gallery_sources(store)
    todo: list[ImageItem] = []
    queued: set[str] = set()
    for item in items:
        if item.source in done:
            summary.already_indexed += 1
        elif item.source in queued:  # a manifest may list a file twice: index it once
            summary.skipped.append((item.source, "listed more than once; indexed once"))
        else:
            queued.add(item.source)
            todo.append(item)
    logger.info("%d image(s) to index (%d already in the gallery) with %s", len(todo), summary.already_indexed,
                embedder)

    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    start = time.perf_counter()
    progress = tqdm(total=len(todo), unit="img", desc="indexing", disable=not show_progress)
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
            pending: deque[tuple[list[ImageItem], list[Future]]] = deque()
            feed = iter(batches)

            def submit_next() -> None:
                batch = next(feed, None)
                if batch is not None:
                    pending.append((batch, [pool.submit(_load, it, embedder.height, embedder.width, limits)
                                            for it in batch]))

            for _ in range(_PREFETCH_BATCHES):
                submit_next()
            n_batches = 0
            while pending:
                batch, futures = pending.popleft()
                submit_next()
                good, pixels = [], []
                for item, future in zip(batch, futures):
                    result = future.result()
                    if isinstance(result, str):
                        logger.warning("skipping %s: %s", item.source, result)
                        summary.skipped.append((item.source, result))
                    else:
                        good.append(item)
                        pixels.append(result)
                if pixels:
                    vectors = embedder.embed(np.stack(pixels))
                    store.add(vectors, [it.metadata() for it in good])
                    summary.indexed += len(good)
                n_batches += 1
                progress.update(len(batch))
                if save_every and n_batches % save_every == 0:
                    save_gallery(store, gallery_dir)
    except KeyboardInterrupt:
        save_interrupted(store, gallery_dir, summary)
        raise
    finally:
        progress.close()
    return finish_run(store, gallery_dir, summary, start)


def save_interrupted(store: Any, gallery_dir: Path, summary: IndexSummary) -> None:
    """Keep what a Ctrl-C'd run indexed so far: the same command resumes from there (every engine)."""
    logger.warning("interrupted: saving the %d image(s) indexed so far; rerun the same command to resume",
                   summary.indexed)
    save_gallery(store, gallery_dir)


def finish_run(store: Any, gallery_dir: Path, summary: IndexSummary, start: float,
               engine: str = "") -> IndexSummary:
    """The last step of every engine's run: save the gallery atomically and complete the summary."""
    save_gallery(store, gallery_dir)
    summary.seconds = time.perf_counter() - start
    summary.gallery_size = len(store)
    logger.info("indexed %d image(s)%s in %.1f s (%.1f images/s); %d skipped; gallery %s has %d items",
                summary.indexed, f" on {engine}" if engine else "", summary.seconds, summary.images_per_s,
                len(summary.skipped), gallery_dir, summary.gallery_size)
    return summary


def parse_cameras(text: str | None) -> list[int] | None:
    """``"1,2,4,5"`` -> ``[1, 2, 4, 5]``; None or empty -> None (all cameras)."""
    if text is None or not text.strip():
        return None
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--cameras {text!r} must be comma-separated integers, e.g. 1,2,4,5") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving index", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="exported model: model.onnx (or .plan, .pt)")
    parser.add_argument("--images", required=True, type=Path,
                        help="image root: a SYSU-MM01 tree, <camera>/.../*.jpg folders, or the root of --manifest paths")
    parser.add_argument("--gallery", required=True, type=Path, help="gallery directory (created, or resumed)")
    crawl_group = parser.add_argument_group("what to index")
    crawl_group.add_argument("--cameras", default=None,
                             help="comma-separated cameras, e.g. 1,2,4,5 (default: SYSU-MM01 RGB cameras 1,2,4,5; "
                                  "otherwise all)")
    crawl_group.add_argument("--split", default="all", choices=SPLITS, help="SYSU-MM01 identities to index")
    crawl_group.add_argument("--manifest", type=Path, default=None,
                             help="CSV with header path,camera[,person_label,timestamp] instead of crawling")
    run_group = parser.add_argument_group("how")
    run_group.add_argument("--batch-size", type=int, default=32, help="images per embedder call")
    run_group.add_argument("--workers", type=int, default=2, help="decoding threads")
    run_group.add_argument("--backend", default="auto", choices=BACKENDS, help="embedder backend")
    run_group.add_argument("--kind", default="flat", help="index kind of a new gallery (see index.Gallery.create)")
    run_group.add_argument("--save-every", type=int, default=20, help="save the gallery every N batches (0: at the end)")
    run_group.add_argument("--engine", default="local", choices=ENGINES,
                           help="local: this process (decode threads, one embedder); ray: Ray Data decode tasks "
                                "and an actor pool of embedders (serving.ray_engine)")
    run_group.add_argument("--milvus-uri", default=None,
                           help="keep a new gallery's vectors and metadata in Milvus at this uri (a Milvus Lite "
                                "file *.db, or http://host:19530) instead of FAISS; --gallery holds its manifest")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    from serving.ray_engine import add_ray_arguments  # here, not at import: ray_engine imports this module

    add_ray_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    gallery_options = {"backend": "milvus", "uri": args.milvus_uri} if args.milvus_uri else None
    common = dict(cameras=parse_cameras(args.cameras), split=args.split, manifest=args.manifest,
                  batch_size=args.batch_size, backend=args.backend, kind=args.kind, save_every=args.save_every,
                  show_progress=not args.no_progress, gallery_options=gallery_options)
    if args.engine == "ray":
        from serving.ray_engine import index_images_ray

        summary = index_images_ray(args.model, args.images, args.gallery, address=args.ray_address,
                                   num_cpus=args.ray_num_cpus, embedders=args.ray_embedders,
                                   embedder_cpus=args.ray_embedder_cpus, **common)
    else:
        summary = index_images(args.model, args.images, args.gallery, workers=args.workers, **common)
    print(summary.format())
    return 0
