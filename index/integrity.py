"""Checks that a gallery on disk is the one that was saved: checksums, SQLite's own check, vector sanity.

Why each check exists (each is a kind of damage that would otherwise load and serve garbage):

* **sha256 of every data file**, recorded in the manifest at save and verified at load: a flipped
  4 KiB in the vector data otherwise loads, and ``/search`` ranks an item at score 5e36. Streamed in
  1 MiB blocks (memory stays flat), with a progress line every few seconds for large files.
* **SQLite ``PRAGMA quick_check``**: for galleries saved before checksums existed (and as a second
  opinion), finds damaged pages and records (O(n), unlike ``integrity_check`` which also cross-checks
  every index; ``python -m serving gallery check`` runs that one).
* **finite, unit-length vectors** (for kinds that store them, :meth:`VectorBackend.check_vectors`): the
  contract that search scores are cosines in [-1, 1] rests on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from index.errors import CorruptGalleryError

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_PROGRESS_BYTES = 256 << 20  # files at least this large get progress lines
_PROGRESS_EVERY_S = 5.0


def sha256_file(path: Path, *, what: str = "verifying") -> str:
    """``sha256:<hex>`` of a file, read in 1 MiB blocks, logging progress for large files.

    Args:
        path: the file.
        what: the verb for the progress line ("verifying", "checksumming").
    """
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    loud = size >= _PROGRESS_BYTES
    started = last = time.monotonic()
    done = 0
    if loud:
        log.info("%s %s (%.1f GiB)", what, path, size / 2**30)
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_BLOCK)
        view = memoryview(buffer)
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            done += n
            now = time.monotonic()
            if loud and now - last >= _PROGRESS_EVERY_S:
                last = now
                log.info("%s %s: %.1f of %.1f GiB (%.0f MiB/s)", what, path.name, done / 2**30, size / 2**30,
                         done / 2**20 / max(now - started, 1e-9))
    return "sha256:" + digest.hexdigest()


def verify_files(manifest_path: Path, files: dict[str, Path], manifest: dict[str, Any]) -> bool:
    """Check the files a manifest names: present, the recorded sizes, the recorded checksums.

    Args:
        manifest_path: the manifest (named in errors).
        files: ``{file name: path}`` of the data files.
        manifest: the validated manifest (``sizes``, optional ``checksums``).

    Returns:
        True when checksums were verified, False for a gallery saved without them (sizes only).

    Raises:
        CorruptGalleryError: a file is missing, has another size, or another checksum.
    """
    sizes = manifest.get("sizes", {})
    for name, path in files.items():
        if not path.is_file():
            raise CorruptGalleryError(path, f"is missing (named by {manifest_path})")
        size = path.stat().st_size
        if name in sizes and size != sizes[name]:
            raise CorruptGalleryError(path, f"has {size} bytes, the manifest says {sizes[name]}: it was changed or "
                                            f"truncated after the save")
    checksums = manifest.get("checksums")
    if checksums is None:
        return False
    for name, path in files.items():
        found = sha256_file(path)
        if found != checksums[name]:
            raise CorruptGalleryError(path, f"sha256 does not match the manifest ({found[7:19]}… on disk, "
                                            f"{checksums[name][7:19]}… saved): the file was damaged or changed "
                                            f"after the save")
    return True
