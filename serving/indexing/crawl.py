"""Find the RGB crops to index: a SYSU-MM01 tree, a generic ``<camera>/.../*.jpg`` tree, or a CSV manifest.

Each finder returns :class:`ImageItem` records in a stable order (sorted paths, or manifest order),
with ``source`` relative to the images root: that relative path is what the gallery stores and what a
resumed run compares against, so a gallery stays valid when the image tree is moved or mounted elsewhere.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xmreid.errors import UserError

logger = logging.getLogger(__name__)

# A copy of training.data.sysu.IMAGE_SUFFIXES, kept because serving may not import training (its ONNX
# path runs without it); tests/serving/test_copied_facts.py checks that the two lists agree.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS: tuple[str, ...] = ("all", "train", "test")
#: SYSU-MM01's RGB cameras; 3 and 6 are near-infrared (the query side), so a gallery defaults to these.
SYSU_RGB_CAMERAS: tuple[int, ...] = (1, 2, 4, 5)
SYSU_CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "camera", "person_label", "timestamp", "track_id")
#: A SYSU-MM01 tree may carry this manifest of track ids (``python -m training synth --track-length N`` writes
#: one): its ``path`` -> ``track_id`` rows are attached to the crawled crops.
TRACKS_FILE = "tracks.csv"
_SYSU_CAM_DIR = re.compile(r"cam(\d+)")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class ImageItem:
    """One image to index.

    Attributes:
        path: where to read it.
        source: the path relative to the images root (POSIX separators), or the absolute path for a
            manifest entry outside the root; unique within a gallery.
        camera: camera number.
        person_label: identity, when known (SYSU-MM01 pid, manifest column).
        timestamp: seconds since the epoch, when known.
        extra: other manifest columns.
        track_id: the camera track (one person's pass past one camera), when known: a manifest column, a
            folder level (``--track-level``) or a SYSU-MM01 tree's ``tracks.csv``.
    """

    path: Path
    source: str
    camera: int
    person_label: int | str | None = None
    timestamp: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    track_id: int | str | None = None

    def metadata(self) -> dict[str, Any]:
        """The gallery metadata dict (``index.Gallery.add`` contract)."""
        return {"camera": self.camera, "person_label": self.person_label, "source": self.source,
                "timestamp": self.timestamp, "extra": dict(self.extra), "track_id": self.track_id}


def _label_value(text: str) -> int | str | None:
    """A manifest or folder label: an integer when it is one, else the text (empty: unknown)."""
    text = text.strip()
    if re.fullmatch(r"-?\d{1,18}", text):
        return int(text)
    return text or None


def _source(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def is_sysu_tree(root: Path) -> bool:
    """A SYSU-MM01 layout: an ``exp/`` folder (the id lists) beside ``cam<N>/`` folders."""
    if not (root / "exp").is_dir():
        return False
    return any(d.is_dir() and _SYSU_CAM_DIR.fullmatch(d.name) for d in root.iterdir())


def _read_ids(path: Path) -> set[int]:
    if not path.is_file():
        raise UserError(f"missing id file {path}; --split train/test needs exp/train_id.txt, exp/val_id.txt and "
                        "exp/test_id.txt (SYSU-MM01 layout), or use --split all")
    tokens = [t.strip() for t in path.read_text().replace("\n", ",").split(",") if t.strip()]
    try:
        return {int(t) for t in tokens}
    except ValueError as exc:
        raise UserError(f"malformed id file {path}: {exc} (expected comma-separated integers)") from exc


def crawl_sysu(root: Path, cameras: Iterable[int] | None = None, split: str = "all") -> list[ImageItem]:
    """Images of a SYSU-MM01 tree: ``cam<N>/<pid>/<n>.jpg``, person_label = pid.

    Args:
        root: the dataset root.
        cameras: cameras to include; default the RGB cameras 1, 2, 4, 5 (a gallery holds RGB crops).
        split: ``test`` (ids of ``exp/test_id.txt``), ``train`` (``train_id`` + ``val_id``) or ``all``.

    Returns:
        Items sorted by camera, pid, file name.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    cameras = sorted(set(cameras)) if cameras is not None else list(SYSU_RGB_CAMERAS)
    ids: set[int] | None = None
    if split == "test":
        ids = _read_ids(root / "exp" / "test_id.txt")
    elif split == "train":
        ids = _read_ids(root / "exp" / "train_id.txt") | _read_ids(root / "exp" / "val_id.txt")
    tracks = _sysu_tracks(root)
    items = []
    for cam in cameras:
        cam_dir = root / f"cam{cam}"
        if not cam_dir.is_dir():
            logger.warning("no folder %s; camera %d has no images", cam_dir, cam)
            continue
        for pid_dir in sorted(d for d in cam_dir.iterdir() if d.is_dir() and d.name.isdigit()):
            pid = int(pid_dir.name)
            if ids is not None and pid not in ids:
                continue
            for f in sorted(pid_dir.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    source = _source(f, root)
                    items.append(ImageItem(path=f, source=source, camera=cam, person_label=pid,
                                           track_id=tracks.get(source)))
    return items


def _sysu_tracks(root: Path) -> dict[str, int | str | None]:
    """``{source: track_id}`` from the tree's :data:`TRACKS_FILE`, or ``{}`` when it has none."""
    path = root / TRACKS_FILE
    if not path.is_file():
        return {}
    tracks = {item.source: item.track_id for item in read_manifest(path, root)}
    logger.info("%s: track ids of %d crop(s)", path, len(tracks))
    return tracks


def crawl_generic(root: Path, cameras: Iterable[int] | None = None,
                  track_level: int | None = None) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """Images of a ``<camera>/.../*.jpg`` tree; the camera is the first run of digits in the top folder name.

    ``cam07/2024-05-01/a.jpg`` -> camera 7. Files directly under the root, or under a top folder without
    digits, cannot be given a camera and are returned as skipped (never guessed). With ``track_level=L``,
    the folder ``L`` levels below the camera folder names the crop's track: ``cam07/track_12/a.jpg`` with
    ``L=1`` -> track ``"track_12"`` (an integer when the name is one); a file with no folder at that level is
    skipped, since a track id that is silently missing would split a track into single crops.

    Args:
        root: the images root.
        cameras: cameras to include; default all.
        track_level: the folder level naming tracks (1 = directly below the camera folder), or None.

    Returns:
        ``(items sorted by path, skipped (source, reason) pairs)``.
    """
    wanted = set(cameras) if cameras is not None else None
    items, skipped = [], []
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        rel = f.relative_to(root)
        source = rel.as_posix()
        if len(rel.parts) < 2:
            skipped.append((source, "not inside a camera folder (expected <camera>/.../image)"))
            continue
        digits = _DIGITS.search(rel.parts[0])
        if digits is None:
            skipped.append((source, f"camera folder {rel.parts[0]!r} has no digits to take the camera number from"))
            continue
        camera = int(digits.group())
        if wanted is not None and camera not in wanted:
            continue
        track: int | str | None = None
        if track_level is not None:
            if len(rel.parts) < track_level + 2:  # camera folder, the levels down to the track, the file
                skipped.append((source, (f"no track folder {track_level} level(s) below the camera folder "
                                        f"(--track-level {track_level})")))
                continue
            track = _label_value(rel.parts[track_level])
        items.append(ImageItem(path=f, source=source, camera=camera, track_id=track))
    return items, skipped


def _parse_timestamp(value: str, where: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{where}: timestamp {value!r} is neither seconds since the epoch nor ISO 8601") from None
    if stamp.tzinfo is None:  # naive means UTC, as in index.Gallery, so both readings of a manifest agree
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def read_manifest(manifest: Path, root: Path, cameras: Iterable[int] | None = None) -> list[ImageItem]:
    """Images listed in a CSV file with a header row: ``path,camera[,person_label,timestamp,track_id]``.

    ``path`` is relative to ``root`` (or absolute); ``camera`` an integer; ``person_label`` and ``track_id``
    an integer or any string (empty = unknown); ``timestamp`` seconds since the epoch or ISO 8601 (naive =
    UTC). Any other column is kept in the item's ``extra``.

    Raises:
        UserError: missing file or column, or a malformed value; the message names the line.
    """
    if not manifest.is_file():
        raise UserError(f"manifest not found: {manifest}")
    wanted = set(cameras) if cameras is not None else None
    items = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("path", "camera") if c not in columns]
        if missing:
            raise UserError(f"{manifest}: header lacks column(s) {', '.join(missing)}; expected "
                            f"{','.join(MANIFEST_COLUMNS)} (all but the first two optional), "
                            f"found {','.join(columns) or 'none'}")
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            where = f"{manifest}:{line}"
            if not row.get("path"):
                raise UserError(f"{where}: empty path")
            try:
                camera = int(row["camera"])
            except ValueError:
                raise UserError(f"{where}: camera {row['camera']!r} is not an integer") from None
            if wanted is not None and camera not in wanted:
                continue
            label = _label_value(row.get("person_label", ""))
            path = Path(row["path"])
            path = path if path.is_absolute() else root / path
            extra = {k: v for k, v in row.items() if k not in MANIFEST_COLUMNS}
            items.append(ImageItem(path=path, source=_source(path, root), camera=camera, person_label=label,
                                   timestamp=_parse_timestamp(row.get("timestamp", ""), where), extra=extra,
                                   track_id=_label_value(row.get("track_id", ""))))
    return items
