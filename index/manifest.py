"""``manifest.json``: read it, and check every value's type before anything trusts it.

The manifest is the gallery's commit record (see :mod:`index.persist`), so a damaged or hand-edited one
must be refused with one sentence naming the field, never turned into a traceback further down
(``int("abc")``) or, worse, obeyed (an absolute ``data_dir`` loading another gallery's data, ``"sizes": []``
skipping the truncation check). The checks are a small hand-written schema, not a library: ``index`` needs
only numpy and FAISS.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index.errors import CorruptGalleryError, GalleryError

FORMAT = "xmreid-gallery"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.sqlite"
DATA_FILES = (INDEX_FILE, METADATA_FILE)
# Where a gallery's vectors live: an in-process FAISS index, or a Milvus collection (index/milvus_*.py,
# imported only when asked for, so pymilvus stays an optional extra).
BACKENDS = ("faiss", "milvus")
REQUIRED = ("kind", "dim", "count", "next_id", "data_dir", "options")
# What index.persist names a data directory; anything else (absolute, "..", a separator) is refused.
DATA_DIR_PATTERN = re.compile(r"^data-[0-9]{6,}-[0-9a-f]{8}$")
SHA256_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")


def _int(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(_int(0)(i) for i in v)


def _option_values(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _backend_state(v: Any) -> bool:
    return isinstance(v, dict) and _int_list(v.get("deleted_ids", []))


def _notes(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _origin(v: Any) -> bool:
    return isinstance(v, dict) and _is_str(v.get("uid")) and _int(0)(v.get("sequence"))


# field -> (check, what it must be); fields not listed are informational and kept as they are.
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "backend": (lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}"),
    "kind": (_is_str, "an index kind name (a string)"),
    "dim": (_int(1), "a positive integer"),
    "count": (_int(0), "a non-negative integer"),
    "next_id": (_int(0), "a non-negative integer"),
    "sequence": (_int(0), "a non-negative integer"),
    "options": (_option_values, "an object of option names to values"),
    "fingerprint": (_optional(_is_str), "a string or null"),
    "family": (_optional(_is_str), "a string or null"),
    "created": (_optional(_is_str), "an ISO-8601 string"),
    "saved": (_optional(_is_str), "an ISO-8601 string or null"),
    "uid": (_optional(_is_str), "a string"),
    "backend_state": (_backend_state, "an object whose deleted_ids is a list of non-negative integers"),
    "origin": (_optional(_origin), "null or an object with a string uid and an integer sequence"),
    "notes": (_notes, "an object of strings"),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(manifest: Any, path: Path) -> dict[str, Any]:
    """Check a parsed manifest; return it (unchanged) or raise naming the first bad field.

    Raises:
        GalleryError: not a gallery manifest, or one of another format version.
        CorruptGalleryError: a required field is missing or a value has the wrong type or an impossible value.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GalleryError(f"{path} is not a gallery manifest (expected format {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GalleryError(f"{path} has format version {manifest.get('format_version')!r}; "
                           f"this code reads version {FORMAT_VERSION}")
    for key in REQUIRED:
        if key not in manifest:
            raise GalleryError(f"{path} lacks the required field {key!r}")
    for key, (check, what) in _FIELDS.items():
        if key in manifest and not check(manifest[key]):
            raise CorruptGalleryError(path, f"field {key!r} must be {what}, got {_shown(manifest[key])}")
    if manifest.get("backend", "faiss") == "faiss":
        _validate_files(manifest, path)
    return manifest


def _validate_files(manifest: dict[str, Any], path: Path) -> None:
    data_dir = manifest["data_dir"]
    if not isinstance(data_dir, str) or not DATA_DIR_PATTERN.match(data_dir):
        raise CorruptGalleryError(path, f"field 'data_dir' must name a data directory inside the gallery "
                                        f"(data-<sequence>-<token>), got {_shown(data_dir)}")
    sizes = manifest.get("sizes", {})
    if not isinstance(sizes, dict) or any(k not in DATA_FILES or not _int(0)(v) for k, v in sizes.items()):
        raise CorruptGalleryError(path, f"field 'sizes' must map {' and '.join(DATA_FILES)} to byte counts, "
                                        f"got {_shown(sizes)}")
    checksums = manifest.get("checksums")
    if checksums is None:
        return  # saved by a version without checksums: still loads (with a warning), the next save adds them
    if (not isinstance(checksums, dict) or set(checksums) != set(DATA_FILES)
            or not all(isinstance(v, str) and SHA256_PATTERN.match(v) for v in checksums.values())):
        raise CorruptGalleryError(path, f"field 'checksums' must map {' and '.join(DATA_FILES)} to "
                                        f"'sha256:<64 hex digits>', got {_shown(checksums)}")


def read_manifest(directory: Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a gallery directory.

    Raises:
        GalleryError: no gallery there, or the manifest is unreadable or invalid (the message names the
            file and the field).
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        what = "does not exist" if not Path(directory).exists() else "has no manifest.json"
        raise GalleryError(f"{directory} is not a gallery directory: it {what}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptGalleryError(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, ValueError) as exc:
        raise CorruptGalleryError(path, f"is unreadable: {exc}") from None
    return validate(manifest, path)


def legacy_uid(manifest: dict[str, Any]) -> str:
    """A stable id for a gallery saved before galleries had one (derived, so every reader agrees on it)."""
    seed = f"{manifest.get('created', '')}|{manifest.get('kind')}|{manifest.get('dim')}|{manifest.get('fingerprint')}"
    return "legacy-" + hashlib.sha256(seed.encode("utf-8")).hexdigest()[:16]
