"""Atomic file writes: a crash or a full disk never leaves a half-written model behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def fsync_file(path: str | Path) -> None:
    """Flush ``path``'s data to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to the device; a no-op where folders cannot be fsynced."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot fsync a directory
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], *, sync_parent: bool = False) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it into place.

    The one atomic file write (models, checkpoints, configs, sidecars, gallery manifests): ``os.replace`` is
    atomic on POSIX and Windows when both names are on one file system, which is why the temporary file
    lives in the target folder (the pattern faiss's ``contrib`` uses for indexes); ``mkstemp`` names it
    uniquely (two writers never share a temporary file) and the result gets the umask's normal permissions
    (``mkstemp`` makes 0600 files). With ``sync_parent`` the folder is fsynced after the rename, so the new
    name itself survives a power cut (what a commit point needs).
    """
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    if sync_parent:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, sync_parent: bool = False) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data), sync_parent=sync_parent)


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` through :func:`atomic_write`."""
    with open(src, "rb") as fin:
        return atomic_write(dst, lambda fout: shutil.copyfileobj(fin, fout, length=16 << 20))
