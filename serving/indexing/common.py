"""What every indexing engine shares: the crawl, the gallery it fills, and the one batch loop.

Resumable the way faiss's ``big_batch_search`` checkpoints: the gallery is saved every ``save_every``
batches through ``Gallery.save`` (atomic: temp file, fsync, rename), so a killed run loses at most the
batches since the last save, and a rerun skips every ``source`` already in the gallery, so it finishes the
job without adding duplicates. Unreadable files are reported and skipped; they never abort the run.

The run owns the gallery directory for writing from start to end (its write lock, ``index.locking``): a
second indexer, or a server that has written the gallery, is refused at once with the holder named, so
two writers can never overwrite each other's items. A save that fails (a full disk) keeps the last good
save, and the run stops with one sentence and exit status 1; rerunning the same command resumes.

An engine (:mod:`serving.indexing.local`, :mod:`serving.indexing.ray`) only turns the pending items into
:class:`EmbeddedBatch` es in input order; :func:`run_batches` does the rest, once for all of them.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from serving.core.imageio import DecodeLimits, ImageDecodeError, decode_image_file
from serving.embedders import Embedder
from serving.indexing.crawl import SPLITS, ImageItem, crawl_generic, crawl_sysu, is_sysu_tree, read_manifest
from xmreid.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)

_FIND_CHUNK = 10_000  # sources looked up per find_sources call when resuming


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
        lines = [(f"indexed {self.indexed} image(s) in {self.seconds:.1f} s ({self.images_per_s:.1f} images/s) "
                 f"into {self.gallery} (now {self.gallery_size} items)"),
                 f"found {self.found}, already in the gallery {self.already_indexed}, skipped {len(self.skipped)}"]
        for source, reason in self.skipped[:max_skipped]:
            lines.append(f"  skipped {source}: {reason}")
        if len(self.skipped) > max_skipped:
            lines.append(f"  ... and {len(self.skipped) - max_skipped} more skipped file(s)")
        return "\n".join(lines)


def crawl(images: Path, cameras: Sequence[int] | None = None, split: str = "all",
          manifest: Path | None = None,
          track_level: int | None = None) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """Pick the crawler: a CSV manifest when given, else SYSU-MM01 when ``exp/`` is present, else generic.

    Track ids (``track_id``, for ``group_by=camera_track``) come from the manifest's ``track_id`` column, a
    SYSU-MM01 tree's ``tracks.csv``, or, for a generic tree, the folder ``track_level`` levels below the camera.

    Returns:
        ``(items, skipped (source, reason) pairs)``.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if manifest is not None:
        if split != "all":
            raise UserError("--split selects SYSU-MM01 ids; with --manifest, list the wanted images in the manifest")
        return read_manifest(manifest, images, cameras), []
    if track_level is not None and track_level < 1:
        raise UserError(f"--track-level must be >= 1 (1: <camera>/<track>/image), got {track_level}")
    if track_level is not None and (manifest is not None or is_sysu_tree(images)):
        raise UserError("--track-level names track folders of a <camera>/<track>/... tree; a manifest has a "
                        "track_id column and a SYSU-MM01 tree a tracks.csv instead")
    if is_sysu_tree(images):
        logger.info("%s has the SYSU-MM01 layout (cam<N>/<pid>/, exp/)", images)
        return crawl_sysu(images, cameras, split), []
    if split != "all":
        raise UserError(f"--split {split} needs a SYSU-MM01 tree (cam<N>/<pid>/ and exp/*_id.txt); "
                        f"{images} has no exp/ folder, so use --split all")
    return crawl_generic(images, cameras, track_level)


def open_gallery(directory: Path, embedder: Embedder, kind: str = "flat", **options: Any) -> Any:
    """Load the gallery in ``directory`` (checking it belongs to this model), or create an empty one, and
    take the directory's write lock for the run.

    Raises:
        UserError: the gallery was built with another model or descriptor size, is damaged (exit status 2),
            or another process writes it (the message names it and says how to add crops to a served gallery).
    """
    from index import Gallery
    from index.errors import CorruptGalleryError, GalleryError, GalleryLockedError
    from index.manifest import MANIFEST  # its presence means "a gallery lives here"

    try:
        if (directory / MANIFEST).is_file():
            gallery = Gallery.load(directory, fingerprint=embedder.fingerprint,
                                   family=getattr(embedder, "family", None),
                                   dim=embedder.dim, claim=True)
            if gallery.kind != kind:
                logger.warning("%s is an existing %r gallery; --kind %s applies only to new galleries",
                               directory, gallery.kind, kind)
            logger.info("resuming gallery %s (%d items)", directory, len(gallery))
            return gallery
        if options.get("backend") == "milvus":  # Milvus keeps its own data; its manifest is written on save
            return Gallery.create(embedder.dim, kind=kind, fingerprint=embedder.fingerprint,
                                  family=getattr(embedder, "family", None), **options)
        return Gallery.create(embedder.dim, kind=kind, fingerprint=embedder.fingerprint,
                              family=getattr(embedder, "family", None),
                              directory=directory,
                              **options)
    except GalleryLockedError as exc:
        raise UserError(f"cannot index into {directory}: {exc}. To add crops to a gallery a server is serving, "
                        f"POST them to its /gallery, or copy it (python -m serving gallery copy), index into the "
                        f"copy and POST /gallery/reload") from exc
    except CorruptGalleryError as exc:
        raise UserError(f"cannot add to the gallery in {directory}: {exc}", exit_code=EXIT_DAMAGED) from exc
    except GalleryError as exc:
        if (directory / MANIFEST).is_file():
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
    except Exception:
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


def load_item(item: ImageItem, height: int, width: int, limits: DecodeLimits) -> np.ndarray | str:
    """Decoded pixels, or the reason the file cannot be used (never raises: one bad file must not stop a run)."""
    try:
        return decode_image_file(item.path, height, width, limits)
    except ImageDecodeError as exc:
        return f"{exc.error}: {exc.detail}"
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    except Exception as exc:  # a codec crash on a hostile file is still just a skipped file
        return f"{type(exc).__name__}: {exc}"


def pending_items(store: Any, items: Sequence[ImageItem], summary: IndexSummary) -> list[ImageItem]:
    """The items a run still has to index, counting the rest into ``summary``.

    Items whose ``source`` is in the gallery already are counted as ``already_indexed`` (a resumed run);
    a ``source`` listed twice (a manifest may) is indexed once and the repeat reported as skipped. The
    gallery is asked by ``find_sources`` in chunks, not read whole, so resuming a large gallery is cheap.
    """
    done: set[str] = set()
    sources = [it.source for it in items]
    for start in range(0, len(sources), _FIND_CHUNK):
        done.update(store.find_sources(sources[start:start + _FIND_CHUNK]))
    todo: list[ImageItem] = []
    queued: set[str] = set()
    for item in items:
        if item.source in done:
            summary.already_indexed += 1
        elif item.source in queued:
            summary.skipped.append((item.source, "listed more than once; indexed once"))
        else:
            queued.add(item.source)
            todo.append(item)
    return todo


@dataclass
class EmbeddedBatch:
    """One batch as an engine hands it to :func:`run_batches`.

    Attributes:
        items: the batch's items, in input order (the gallery assigns ids in arrival order).
        errors: per item, why it could not be indexed, or ``""`` when it was embedded.
        vectors: float32 ``[n_good, dim]``, the descriptors of the items whose error is ``""``, in order.
    """

    items: list[ImageItem]
    errors: list[str]
    vectors: np.ndarray


def run_batches(store: Any, gallery_dir: Path, summary: IndexSummary, batches: Iterable[EmbeddedBatch], *,
                total: int, save_every: int, show_progress: bool, desc: str = "indexing",
                engine: str = "") -> IndexSummary:
    """The batch loop of every engine: add each batch, report its bad files, save every ``save_every`` batches.

    ``batches`` is consumed lazily, so an engine's decode and embed work happens inside this loop and a
    Ctrl-C anywhere in it saves what was added so far (:func:`save_interrupted`) before it propagates.

    Args:
        store: the open, locked gallery.
        gallery_dir: where it is saved.
        summary: the run's summary, updated in place.
        batches: the engine's embedded batches, in input order.
        total: images the engine will hand over (for the progress bar).
        save_every: save every this many batches (0: only at the end).
        show_progress: draw a tqdm bar.
        desc: the bar's label.
        engine: named in the final log line ("" for the local engine).

    Returns:
        ``summary``, completed by :func:`finish_run`.
    """
    start = time.perf_counter()
    progress = tqdm(total=total, unit="img", desc=desc, disable=not show_progress)
    n_batches = 0
    try:
        for batch in batches:
            good = []
            for item, error in zip(batch.items, batch.errors):
                if error:
                    logger.warning("skipping %s: %s", item.source, error)
                    summary.skipped.append((item.source, error))
                else:
                    good.append(item)
            if good:
                store.add(batch.vectors, [it.metadata() for it in good])
                summary.indexed += len(good)
            n_batches += 1
            progress.update(len(batch.items))
            if save_every and n_batches % save_every == 0:
                save_gallery(store, gallery_dir)
    except KeyboardInterrupt:
        save_interrupted(store, gallery_dir, summary)
        raise
    finally:
        progress.close()
    return finish_run(store, gallery_dir, summary, start, engine=engine)


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
