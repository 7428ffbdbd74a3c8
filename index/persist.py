"""The gallery directory on disk, and the atomic save.

Layout::

    gallery/
      manifest.json            <- the pointer: names the current data directory, plus kind, dim,
                                  fingerprint, options, count, next id, created/saved, format version
      data-000007-1a2b3c4d/    <- one complete, immutable version
        index.faiss            (CPU FAISS index, IndexIDMap2)
        metadata.sqlite        (SQLite, table ``items``)
      .lock                    <- flock'd while saving, so two savers cannot interleave

Why a versioned directory plus a manifest swap: the index and the database must switch together,
and POSIX can only replace one name atomically. So a save writes both files into a fresh temporary
directory, fsyncs them and the directory, renames it to a new ``data-*`` name (fsync the parent),
then writes ``manifest.json`` to a temporary file, fsyncs it and ``os.replace``-s it over the old
manifest (fsync the parent again). The manifest replace is the commit point: a process killed at any
earlier moment leaves the old manifest pointing at the old, untouched data directory; killed later,
the new one is complete. Old versions and leftovers of killed saves are deleted only after the commit
(the idea is the temp-file-then-``os.replace`` pattern of faiss ``contrib``, lifted to a directory).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from index.errors import GalleryError

try:
    import fcntl
except ImportError:  # not POSIX: saves are still atomic, just not guarded against two savers
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT = "xmreid-gallery"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
_DATA_PREFIX = "data-"
_TMP_PREFIX = ".tmp-"
_LOCK = ".lock"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot fsync a directory
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _save_lock(directory: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(directory / _LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ours(name: str) -> bool:
    return name in (MANIFEST, _LOCK) or name.startswith((_DATA_PREFIX, _TMP_PREFIX, "." + MANIFEST))


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a gallery directory."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        what = "does not exist" if not Path(directory).exists() else "has no manifest.json"
        raise GalleryError(f"{directory} is not a gallery directory: it {what}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GalleryError(f"{path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GalleryError(f"{path} is not a gallery manifest (expected format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GalleryError(f"{path} has format version {manifest.get('format_version')!r}; "
                           f"this code reads version {FORMAT_VERSION}")
    for key in ("kind", "dim", "count", "next_id", "data_dir", "options"):
        if key not in manifest:
            raise GalleryError(f"{path} lacks the required field {key!r}")
    return manifest


def data_paths(directory: Path, manifest: dict[str, Any]) -> tuple[Path, Path]:
    """The index and metadata files the manifest points at (checked to exist, with the recorded sizes)."""
    data = Path(directory) / manifest["data_dir"]
    paths = (data / INDEX_FILE, data / METADATA_FILE)
    sizes = manifest.get("sizes", {})
    for path in paths:
        if not path.is_file():
            raise GalleryError(f"gallery file {path} named by {Path(directory) / MANIFEST} is missing")
        if path.name in sizes and path.stat().st_size != sizes[path.name]:
            raise GalleryError(f"gallery file {path} has {path.stat().st_size} bytes, the manifest says "
                               f"{sizes[path.name]}: it was changed or truncated after the save")
    return paths


def save_directory(directory: Path, write_data: Callable[[Path], dict[str, Any]], manifest: dict[str, Any]) -> Path:
    """Atomically replace the gallery in ``directory`` (created if missing); see the module docstring.

    Args:
        directory: the gallery directory.
        write_data: writes ``INDEX_FILE`` and ``METADATA_FILE`` into the directory it is given and
            returns extra manifest fields.
        manifest: the manifest fields (``sequence``, ``data_dir``, ``sizes``, ``saved`` are added).

    Returns:
        The new data directory.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GalleryError(f"cannot save a gallery to {directory}: it exists and is not a directory") from None
    with _save_lock(directory):
        previous = read_manifest(directory) if (directory / MANIFEST).exists() else None
        if previous is None:
            foreign = sorted(p.name for p in directory.iterdir() if not _ours(p.name))
            if foreign:
                raise GalleryError(f"cannot save a gallery to {directory}: it is not empty and not a gallery "
                                   f"(holds {', '.join(foreign[:5])}); use a new or empty directory")
        sequence = int(previous.get("sequence", 0)) + 1 if previous else 1
        token = uuid.uuid4().hex[:8]
        tmp = directory / f"{_TMP_PREFIX}{token}"
        tmp.mkdir()
        try:
            extra = write_data(tmp)
            sizes = {}
            for name in (INDEX_FILE, METADATA_FILE):
                _fsync_file(tmp / name)
                sizes[name] = (tmp / name).stat().st_size
            _fsync_dir(tmp)
            data_name = f"{_DATA_PREFIX}{sequence:06d}-{token}"
            os.rename(tmp, directory / data_name)
            _fsync_dir(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = {**manifest, **extra, "sequence": sequence, "data_dir": data_name, "sizes": sizes,
                 "saved": utc_now()}
        _replace_json(directory / MANIFEST, final)
        _remove_stale(directory, keep=data_name)
    return directory / data_name


def _replace_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        _fsync_file(tmp)
        os.replace(tmp, path)  # the commit point
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _remove_stale(directory: Path, keep: str) -> None:
    """Delete older versions and leftovers of killed saves (called with the save lock held)."""
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


def wait_for_data(directory: Path, attempts: int = 3) -> tuple[dict[str, Any], tuple[Path, Path]]:
    """Read the manifest and locate its files, retrying if a concurrent save swapped versions meanwhile."""
    attempt = 0
    while True:
        manifest = read_manifest(directory)
        try:
            return manifest, data_paths(directory, manifest)
        except GalleryError:
            attempt += 1
            if attempt >= attempts or read_manifest(directory).get("data_dir") == manifest["data_dir"]:
                raise
            time.sleep(0.05)
