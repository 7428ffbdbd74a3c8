"""A gallery item's metadata row: its fields, its SQLite schema, and the checks of rows coming in and read back.

An item's metadata is ``camera`` (int, required), ``person_label`` (int, str or None), ``source`` (path or
URI), ``timestamp`` (Unix seconds), ``extra`` (a JSON object) and ``track_id`` (int, str or None: crops of one
person seen by one camera in one pass share it, so a search can group results by ``(camera, track_id)``).
:func:`validate_metadata` turns what ``Gallery.add`` is given into :data:`Row` tuples before anything
changes; :func:`check_stored_row` refuses a stored row of the wrong types when a saved gallery is read (a
``camera`` stored as text or an ``extra`` that is not JSON would otherwise load and turn every search that
returns that item into a 500).

Schema migration: ``track_id`` was added after galleries were already saved without it. A database whose
``items`` table has exactly :data:`LEGACY_COLUMNS` is upgraded at load (:mod:`index.metadata`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from index.errors import CorruptGalleryError, GalleryError

FIELDS = ("camera", "person_label", "source", "timestamp", "extra", "track_id")
COLUMNS = ("id", *FIELDS)
# The columns of galleries saved before ``track_id`` existed: migrated at load.
LEGACY_COLUMNS = COLUMNS[:-1]
# ``person_label`` and ``track_id`` have no declared type on purpose: SQLite then keeps ints as ints and
# strings as strings, so a label round-trips with the type the caller gave it. ``requests`` holds the
# idempotency keys of recent adds (see :class:`index.metadata.MetadataStore`).
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    camera INTEGER NOT NULL,
    person_label,
    source TEXT,
    timestamp REAL,
    extra TEXT NOT NULL DEFAULT '{}',
    track_id
);
CREATE INDEX IF NOT EXISTS items_camera ON items(camera);
CREATE INDEX IF NOT EXISTS items_track ON items(camera, track_id);
CREATE INDEX IF NOT EXISTS items_label ON items(person_label);
CREATE INDEX IF NOT EXISTS items_timestamp ON items(timestamp);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    ids TEXT NOT NULL,
    created REAL NOT NULL
);
"""

Row = tuple[int, Any, str | None, float | None, str, Any]
"""``(camera, person_label, source, timestamp, extra JSON, track_id)``: one validated item."""


def to_timestamp(value: Any, what: str) -> float | None:
    """Convert a timestamp to Unix seconds.

    Args:
        value: ``None``, a number (Unix seconds), a ``datetime`` (naive means UTC) or an
            ISO-8601 string.
        what: how to name the value in an error message.

    Returns:
        Seconds since the epoch, or ``None``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise GalleryError(f"{what}: expected Unix seconds, a datetime or an ISO-8601 string, got a bool")
    if isinstance(value, numbers.Real):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise GalleryError(f"{what}: timestamp must be finite, got {value!r}")
        return seconds
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise GalleryError(f"{what}: {value!r} is not an ISO-8601 date/time") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    raise GalleryError(f"{what}: expected Unix seconds, a datetime or an ISO-8601 string, got {type(value).__name__}")


def _check_row(i: int, item: Any) -> Row:
    if not isinstance(item, dict):
        raise GalleryError(f"metadata[{i}] must be a dict with keys {', '.join(FIELDS)}, got {type(item).__name__}")
    unknown = set(item) - set(FIELDS)
    if unknown:
        hint = " (ids are assigned by the gallery)" if "id" in unknown else ""
        raise GalleryError(f"metadata[{i}] has unknown key(s) {sorted(map(str, unknown))}{hint}; "
                           f"valid keys: {', '.join(FIELDS)}")
    if "camera" not in item:
        raise GalleryError(f"metadata[{i}] is missing the required key 'camera' (an int)")
    camera = item["camera"]
    if isinstance(camera, bool) or not isinstance(camera, numbers.Integral):
        raise GalleryError(f"metadata[{i}]['camera'] must be an int, got {camera!r}")
    label = item.get("person_label")
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        label = int(label)
    elif label is not None and not isinstance(label, str):
        raise GalleryError(f"metadata[{i}]['person_label'] must be an int, a str or None, got {label!r}")
    source = item.get("source")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if source is not None and not isinstance(source, str):
        raise GalleryError(f"metadata[{i}]['source'] must be a str (path or URI) or None, got {source!r}")
    timestamp = to_timestamp(item.get("timestamp"), f"metadata[{i}]['timestamp']")
    extra = item.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise GalleryError(f"metadata[{i}]['extra'] must be a JSON-able dict or None, got {type(extra).__name__}")
    try:
        extra_json = json.dumps(extra, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"metadata[{i}]['extra'] is not JSON-able: {exc}") from None
    track = item.get("track_id")
    if isinstance(track, numbers.Integral) and not isinstance(track, bool):
        track = int(track)
    elif track is not None and not isinstance(track, str):
        raise GalleryError(f"metadata[{i}]['track_id'] must be an int, a str or None, got {track!r}")
    return int(camera), label, source, timestamp, extra_json, track


def validate_metadata(metadata: Any, n: int) -> list[Row]:
    """Check the metadata given to ``Gallery.add`` before anything is changed.

    Args:
        metadata: a sequence of ``n`` dicts with ``camera`` (int, required) and optional
            ``person_label`` (int or str), ``source`` (str), ``timestamp`` (see
            :func:`to_timestamp`), ``extra`` (JSON-able dict), ``track_id`` (int or str).
        n: the number of vectors being added.

    Returns:
        One normalised row per item, ready for :meth:`MetadataStore.insert`.
    """
    if isinstance(metadata, dict) or not isinstance(metadata, Sequence) or isinstance(metadata, str):
        raise GalleryError(f"metadata must be a list of {n} dicts, got {type(metadata).__name__}")
    if len(metadata) != n:
        raise GalleryError(f"metadata has {len(metadata)} entries but {n} vectors were given; they must match")
    return [_check_row(i, item) for i, item in enumerate(metadata)]


def check_stored_row(path: Path, row: Sequence[Any]) -> None:
    """Refuse a stored row whose values do not have the types :func:`validate_metadata` writes.

    Raises:
        CorruptGalleryError: naming the file, the row id and the field.
    """
    item_id, camera, label, source, timestamp, extra = row[:6]
    track = row[6] if len(row) > 6 else None

    def bad(field: str, what: str, value: Any) -> CorruptGalleryError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        return CorruptGalleryError(path, f"row id {item_id}: {field} must be {what}, found {shown}")

    if not isinstance(item_id, int) or item_id < 0:
        raise CorruptGalleryError(path, f"a row has id {item_id!r}; ids are non-negative integers")
    if not isinstance(camera, int):
        raise bad("camera", "an integer", camera)
    if label is not None and not isinstance(label, (int, str)):
        raise bad("person_label", "an integer, a string or NULL", label)
    if source is not None and not isinstance(source, str):
        raise bad("source", "a string or NULL", source)
    if timestamp is not None and (not isinstance(timestamp, (int, float)) or not math.isfinite(timestamp)):
        raise bad("timestamp", "finite Unix seconds or NULL", timestamp)
    if track is not None and not isinstance(track, (int, str)):
        raise bad("track_id", "an integer, a string or NULL", track)
    if not isinstance(extra, str):
        raise bad("extra", "a JSON object (text)", extra)
    try:
        parsed = json.loads(extra)
    except (ValueError, RecursionError):
        raise bad("extra", "a JSON object", extra) from None
    if not isinstance(parsed, dict):
        raise bad("extra", "a JSON object", extra)
