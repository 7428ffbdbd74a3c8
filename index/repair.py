"""Offline checks and repairs of a gallery directory (``python -m serving gallery check|repair|copy``).

``check`` runs every load check (:mod:`index.loading`) plus SQLite's thorough ``integrity_check``, without
taking the write lock. ``repair`` takes the lock and rebuilds what can be rebuilt from the gallery itself:

* checksums missing (a gallery saved by an older version): written by a new save;
* SQLite indexes damaged (``integrity_check`` fails, the tables still read): the rows are copied into a
  fresh database, checked against the vector index, and saved as the next version;
* leftovers of killed saves: removed by that save.

What it cannot rebuild it says, and changes nothing: damaged vectors (the images are needed to embed them
again), damaged metadata tables (rows are lost), a damaged manifest. A changed row value that neither
SQLite nor the type checks can see is kept as it is (only the checksum knew; that is said too).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.errors import CorruptGalleryError, GalleryError
from index.gallery import Gallery
from index.loading import read_saved
from index.locking import acquire_directory, read_holder
from index.manifest import INDEX_FILE, METADATA_FILE, read_manifest
from index.metadata_rebuild import integrity_problems, rebuild_database
from index.persist import data_dir

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What ``check`` or ``repair`` found and did (``ok``: the gallery loads and passes every check)."""

    directory: Path
    ok: bool
    summary: str
    actions: list[str] = field(default_factory=list)


def _describe(gallery: Gallery) -> str:
    return f"{len(gallery)} items ({gallery.kind}, {gallery.dim}-d), save {gallery.sequence}"


def check(directory: Path) -> Report:
    """Every load check plus SQLite ``integrity_check``, read-only.

    Raises:
        CorruptGalleryError: the first problem found (one line naming the file).
        GalleryError: not a gallery.
    """
    directory = Path(directory)
    gallery = Gallery.load(directory, read_only=True)
    manifest = read_manifest(directory)
    metadata = data_dir(directory, manifest) / METADATA_FILE
    problems = integrity_problems(metadata)
    if problems:
        raise CorruptGalleryError(metadata, f"SQLite integrity_check reports damage: {'; '.join(problems[:3])}")
    checksummed = manifest.get("checksums") is not None
    holder = read_holder(directory)
    writer = f"; written by pid {holder['pid']}" if holder.get("alive") else ""
    note = "checksums verified" if checksummed else "no checksums (run gallery repair to add them)"
    return Report(directory, checksummed, f"{directory}: {_describe(gallery)}, {note}, SQLite integrity ok{writer}")


def repair(directory: Path) -> Report:
    """Rebuild what can be rebuilt (see the module docstring) under the directory's write lock.

    Raises:
        GalleryLockedError: another process writes the gallery (stop it first).
        CorruptGalleryError: damage that cannot be repaired (nothing was changed).
    """
    directory = Path(directory)
    with acquire_directory(directory):
        manifest = read_manifest(directory)  # a damaged manifest cannot be repaired from here
        try:
            gallery = Gallery.load(directory, claim=True)
        except CorruptGalleryError as exc:
            return _repair_metadata(directory, manifest, exc)
        try:
            actions = []
            metadata = data_dir(directory, manifest) / METADATA_FILE
            if integrity_problems(metadata):
                gallery._store.reindex()
                actions.append("rebuilt the SQLite indexes")
            if manifest.get("checksums") is None:
                actions.append("added checksums")
            leftovers = [p.name for p in directory.iterdir()
                         if p.name.startswith((".tmp-", ".manifest")) or
                         (p.name.startswith("data-") and p.name != manifest["data_dir"])]
            if leftovers:
                actions.append(f"removed {len(leftovers)} leftover(s) of earlier saves")
            if not actions:
                return Report(directory, True, f"{directory}: {_describe(gallery)}: nothing to repair")
            gallery.save(directory)
            return Report(directory, True, f"{directory}: {_describe(gallery)}: {'; '.join(actions)}", actions)
        finally:
            gallery.close()


def _repair_metadata(directory: Path, manifest: dict[str, Any], found: CorruptGalleryError) -> Report:
    """The load failed: rebuild the metadata database when that is all that is damaged."""
    data = data_dir(directory, manifest)
    metadata = data / METADATA_FILE
    if found.path != metadata:
        raise CorruptGalleryError(found.path, f"{found.problem}; this cannot be repaired from the gallery alone "
                                              f"(the vectors or the manifest are damaged): re-index the images "
                                              f"into a new gallery directory") from None
    scratch = directory / f"data-{0:06d}-{uuid.uuid4().hex[:8]}"  # an unnamed version: the next save removes it
    scratch.mkdir()
    try:
        rows = rebuild_database(metadata, scratch / METADATA_FILE)
        shutil.copy2(data / INDEX_FILE, scratch / INDEX_FILE)
        candidate = {**manifest, "data_dir": scratch.name, "checksums": None, "sizes": {}}
        candidate.pop("checksums")
        loaded = read_saved(directory, candidate, None, {})  # every other check, on the rebuilt rows
    except CorruptGalleryError as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise CorruptGalleryError(exc.path, f"{exc.problem}; the metadata cannot be repaired") from None
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    gallery = Gallery(storage=loaded.storage, fingerprint=manifest.get("fingerprint"), family=manifest.get("family"),
                      next_id=int(manifest["next_id"]), created=manifest.get("created", ""),
                      saved=manifest.get("saved"), directory=directory, sequence=int(manifest.get("sequence", 0)),
                      uid=manifest.get("uid"), origin=manifest.get("origin"))
    try:
        gallery.save(directory)
    finally:
        gallery.close()
        shutil.rmtree(scratch, ignore_errors=True)
    action = f"rebuilt {METADATA_FILE} from its {rows} readable rows (was: {found.problem})"
    return Report(directory, True, f"{directory}: {_describe(gallery)}: {action}", [action])


def copy(source: Path, dest: Path) -> Report:
    """A consistent copy of a gallery (read without its lock) that records it as its origin.

    ``POST /gallery/reload`` on the server serving ``source`` installs the copy once crops have been
    indexed into it, provided the served gallery has not changed since.
    """
    gallery = Gallery.load(source, read_only=True)
    if Path(dest).exists() and any(Path(dest).iterdir()):
        raise GalleryError(f"cannot copy to {dest}: it exists and is not empty; remove it or name a new directory")
    gallery.save(dest)
    return Report(Path(dest), True, f"copied {source} ({_describe(gallery)}) to {dest}; index into it, then "
                                    f"POST /gallery/reload to the server that serves {source}")
