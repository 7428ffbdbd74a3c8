"""The gallery directory on disk, and the atomic save.

Layout::

    gallery/
      manifest.json            <- the pointer: names the current data directory, plus kind, dim,
                                  fingerprint, options, count, next id, created/saved, format version,
                                  the save sequence, and the size and sha256 of each data file
      data-000007-1a2b3c4d/    <- one complete, immutable version
        index.faiss            (CPU FAISS index, IndexIDMap2)
        metadata.sqlite        (SQLite, tables ``items`` and ``requests``)
      .lock                    <- flock'd by the one process that writes this gallery; names it
                                  (pid, command, since when: :func:`index.locking.acquire_directory`)

Why a versioned directory plus a manifest swap: the index and the database must switch together,
and POSIX can only replace one name atomically. So a save writes both files into a fresh temporary
directory, checksums them, fsyncs them and the directory, renames it to a new ``data-*`` name (fsync
the parent), then writes ``manifest.json`` to a temporary file, fsyncs it and ``os.replace``-s it over
the old manifest (fsync the parent again). The manifest replace is the commit point: a process killed,
or a write that fails (a full disk: ``ENOSPC``), at any earlier moment leaves the old manifest pointing
at the old, untouched data directory, and the temporary files are removed; after it, the new version
is what every reader and every restart sees. Old versions and leftovers of killed saves are deleted
only after the commit (the idea is the temp-file-then-``os.replace`` pattern of faiss ``contrib``,
lifted to a directory).

Two guards keep concurrent writers from losing each other's items: the directory's write lock (one
process at a time), and the manifest's ``sequence``, which a save must find unchanged since the saving
object read it (two objects of one process, or a writer that came back after another one saved).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index.errors import CorruptGalleryError, GalleryError, StaleGalleryError
from index.integrity import sha256_file, verify_files
from index.locking import LOCK_FILE, DirectoryLock, acquire_directory
from index.manifest import DATA_FILES, FORMAT, FORMAT_VERSION, INDEX_FILE, MANIFEST, METADATA_FILE, read_manifest
from xmreid.atomic import atomic_write_bytes, fsync_dir, fsync_file

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "FORMAT_VERSION", "INDEX_FILE", "MANIFEST", "METADATA_FILE", "data_paths", "read_manifest",
           "save_directory", "save_manifest", "utc_now", "verified_data"]

_DATA_PREFIX = "data-"
_TMP_PREFIX = ".tmp-"
_LOCK = LOCK_FILE


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _ours(name: str) -> bool:
    return name in (MANIFEST, _LOCK) or name.startswith((_DATA_PREFIX, _TMP_PREFIX, "." + MANIFEST))


def data_dir(directory: Path, manifest: dict[str, Any]) -> Path:
    """The data directory a (validated) manifest names, checked to lie inside the gallery directory.

    The name is already known to be ``data-<sequence>-<token>``; resolving also refuses a data
    directory that is a symlink to somewhere else (another gallery's data).
    """
    directory = Path(directory)
    path = directory / manifest["data_dir"]
    if path.is_symlink() or not path.resolve().is_relative_to(directory.resolve()):
        raise CorruptGalleryError(directory / MANIFEST, f"data_dir {manifest['data_dir']!r} leads outside the "
                                                       f"gallery directory ({path.resolve()})")
    return path


def data_paths(directory: Path, manifest: dict[str, Any]) -> tuple[Path, Path]:
    """The index and metadata files the manifest points at (checked to exist, with the recorded sizes)."""
    data = data_dir(directory, manifest)
    paths = (data / INDEX_FILE, data / METADATA_FILE)
    sizes = manifest.get("sizes", {})
    for path in paths:
        if not path.is_file():
            raise CorruptGalleryError(path, f"is missing (named by {Path(directory) / MANIFEST})")
        if path.name in sizes and path.stat().st_size != sizes[path.name]:
            raise CorruptGalleryError(path, f"has {path.stat().st_size} bytes, the manifest says {sizes[path.name]}: "
                                            f"it was changed or truncated after the save")
    return paths


def verified_data(directory: Path, manifest: dict[str, Any]) -> tuple[tuple[Path, Path], bool]:
    """:func:`data_paths` plus the checksums: ``((index, metadata), checksums_verified)``.

    Raises:
        CorruptGalleryError: a file is missing, truncated or its sha256 differs from the manifest's.
    """
    paths = data_paths(directory, manifest)
    verified = verify_files(Path(directory) / MANIFEST, dict(zip(DATA_FILES, paths)), manifest)
    return paths, verified


def save_directory(directory: Path, write_data: Callable[[Path], dict[str, Any]], manifest: dict[str, Any], *,
                   lock: DirectoryLock | None = None, expect_sequence: int | None = None,
                   replace: bool = False) -> tuple[Path, dict[str, Any]]:
    """Atomically replace the gallery in ``directory`` (created if missing); see the module docstring.

    Args:
        directory: the gallery directory.
        write_data: writes ``INDEX_FILE`` and ``METADATA_FILE`` into the directory it is given and
            returns extra manifest fields.
        manifest: the manifest fields (``sequence``, ``data_dir``, ``sizes``, ``checksums``, ``saved`` are added).
        lock: the caller's write lock on ``directory``; taken for the length of the save when None.
        expect_sequence: the save sequence the caller last read or wrote here; None for a caller that
            holds no gallery from this directory (then the directory must hold none).
        replace: allow replacing a gallery the caller did not read (``gallery repair``, an explicit overwrite).

    Returns:
        ``(new data directory, the manifest written)``.

    Raises:
        GalleryLockedError: another process writes this directory.
        StaleGalleryError: the directory holds a save the caller has not seen (nothing is written then).
        OSError: a write failed (ENOSPC, EIO, ...); the previous gallery is untouched and the temporary
            files are removed, unless the failure came after the commit point (then it is logged only:
            the new version is complete and is what a restart loads).
    """
    directory = Path(directory)
    own = lock is None
    lock = acquire_directory(directory) if lock is None else lock
    try:
        previous = _previous(directory, replace)
        if previous is None:
            _check_foreign(directory)
        _check_sequence(directory, previous, expect_sequence, replace)
        sequence = int(previous.get("sequence", 0)) + 1 if previous else 1
        token = uuid.uuid4().hex[:8]
        tmp = directory / f"{_TMP_PREFIX}{token}"
        data_name = f"{_DATA_PREFIX}{sequence:06d}-{token}"
        tmp.mkdir()
        try:
            extra = write_data(tmp)
            sizes, checksums = {}, {}
            for name in DATA_FILES:
                checksums[name] = sha256_file(tmp / name, what="checksumming")
                fsync_file(tmp / name)
                sizes[name] = (tmp / name).stat().st_size
            fsync_dir(tmp)
            os.rename(tmp, directory / data_name)
            fsync_dir(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = {**manifest, **extra, "sequence": sequence, "data_dir": data_name, "sizes": sizes,
                 "checksums": checksums, "saved": utc_now()}
        try:
            _replace_json(directory / MANIFEST, final, sync_parent=False)
        except BaseException:
            shutil.rmtree(directory / data_name, ignore_errors=True)  # never committed: nobody names it
            raise
        try:
            fsync_dir(directory)
        except OSError as exc:  # after the commit point: the new version is in place; say so, do not undo it
            log.error("saved %s (sequence %d), but syncing the directory afterwards failed: %s", directory,
                      sequence, exc)
        _remove_stale(directory, keep=data_name)
    finally:
        if own:
            lock.release()
    return directory / data_name, final


def save_manifest(directory: Path, manifest: dict[str, Any], *, lock: DirectoryLock | None = None,
                  expect_sequence: int | None = None, replace: bool = False,
                  check_target: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Atomically write ``manifest.json`` alone, for a gallery whose data lives outside its directory.

    A Milvus gallery's vectors and metadata are in its collection, which commits each change itself, so
    its save has no data directory to version: the manifest is a pointer to the collection, replaced as
    :func:`save_directory` replaces it (temporary file, fsync, ``os.replace``, fsync the parent), under the
    same two guards (the write lock, the sequence).

    Args:
        directory: the gallery directory (created when missing).
        manifest: every field to write (``sequence`` and ``saved`` are added).
        lock, expect_sequence, replace: as :func:`save_directory`'s.
        check_target: called with the directory under its write lock, before anything is written, to
            refuse a directory that holds something else (it raises); without it, a directory that holds
            no gallery must hold nothing else.

    Returns:
        The manifest written.

    Raises:
        GalleryLockedError: another process writes this directory.
        StaleGalleryError: the directory holds a save the caller has not seen.
        GalleryError: ``directory`` is not a directory, or ``check_target`` refused it.
    """
    directory = Path(directory)
    own = lock is None
    lock = acquire_directory(directory) if lock is None else lock  # shared with the gallery's own hold, if any
    try:
        if check_target is not None:
            check_target(directory)
        previous = _previous(directory, replace)
        if previous is None and check_target is None:
            _check_foreign(directory)
        _check_sequence(directory, previous, expect_sequence, replace)
        final = {**manifest, "sequence": int(previous.get("sequence", 0)) + 1 if previous else 1, "saved": utc_now()}
        _replace_json(directory / MANIFEST, final)
    finally:
        if own:
            lock.release()
    return final


def check_new_target(directory: Path) -> None:
    """Refuse a directory that exists, holds no gallery and is not empty (before any file is put there).

    Raises:
        GalleryError: naming a few of the files that are in the way.
    """
    directory = Path(directory)
    if directory.is_dir() and not (directory / MANIFEST).exists():
        _check_foreign(directory)
    elif directory.exists() and not directory.is_dir():
        raise GalleryError(f"cannot save a gallery to {directory}: it exists and is not a directory")


def _previous(directory: Path, replace: bool) -> dict[str, Any] | None:
    if not (directory / MANIFEST).exists():
        return None
    try:
        return read_manifest(directory)
    except GalleryError:
        if replace:  # gallery repair writing a good version over a damaged manifest
            return None
        raise


def _check_foreign(directory: Path) -> None:
    """Refuse a directory that holds no gallery but other files (called under the write lock)."""
    foreign = sorted(p.name for p in directory.iterdir() if not _ours(p.name))
    if foreign:
        raise GalleryError(f"cannot save a gallery to {directory}: it is not empty and not a gallery "
                           f"(holds {', '.join(foreign[:5])}); use a new or empty directory")


def _check_sequence(directory: Path, previous: dict[str, Any] | None, expect_sequence: int | None,
                    replace: bool) -> None:
    """Refuse to replace a save the caller has not seen (another writer's), or a gallery it never read."""
    if previous is None:
        if expect_sequence is not None and not replace:
            raise StaleGalleryError(f"the gallery in {directory} was removed since this gallery was read from it "
                                    f"(at save {expect_sequence}); nothing was saved")
        return
    if replace:
        return
    found = int(previous.get("sequence", 0))
    if expect_sequence is None:
        raise StaleGalleryError(f"cannot save a new gallery to {directory}: it already holds one ({previous['count']} "
                                f"items, save {found}); load that one to change it, or use a new directory")
    if found != expect_sequence:
        raise StaleGalleryError(f"the gallery in {directory} was saved by another writer since this one read it "
                                f"(save {found} on disk, {expect_sequence} read); nothing was saved: reload it "
                                f"and apply the change again")


def _replace_json(path: Path, payload: dict[str, Any], *, sync_parent: bool = True) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), sync_parent=sync_parent)  # the commit point


def _remove_stale(directory: Path, keep: str) -> None:
    """Delete older versions and leftovers of killed saves (called with the write lock held)."""
    for entry in directory.iterdir():
        name = entry.name
        if name == keep or not name.startswith((_DATA_PREFIX, _TMP_PREFIX, "." + MANIFEST)):
            continue
        try:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as exc:  # a reader on another OS may hold it; the next save retries
            log.warning("could not remove old gallery version %s: %s", entry, exc)


def retry_if_swapped(directory: Path, read: Callable[[dict[str, Any]], Any], attempts: int = 3) -> Any:
    """Run ``read(manifest)``, again if a concurrent save replaced the version while it was being read.

    A reader without the write lock may see the version it is reading deleted by the writer's cleanup
    after a newer save; that is not damage, so read the newer version instead. Damage that persists
    (the manifest still names the same version) is raised.
    """
    attempt = 0
    while True:
        manifest = read_manifest(directory)
        try:
            return read(manifest)
        except (GalleryError, FileNotFoundError):
            attempt += 1
            if attempt >= attempts or read_manifest(directory).get("data_dir") == manifest["data_dir"]:
                raise
            time.sleep(0.05)


def wait_for_data(directory: Path, attempts: int = 3) -> tuple[dict[str, Any], tuple[Path, Path]]:
    """Read the manifest and locate its files, retrying if a concurrent save swapped versions meanwhile."""
    return retry_if_swapped(directory, lambda m: (m, data_paths(directory, m)), attempts)
