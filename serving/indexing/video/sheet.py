"""A video query's answer as a contact sheet: each query track's crops beside its best gallery tracks' crops.

The crops are read back from the videos their ``source`` names (``<video>#frame=<n>&box=<l,t,w,h>``), each
video in one pass. ``.html`` gives a self-contained page (crops inlined as PNG data URIs), ``.png`` one image.
A crop whose video cannot be read any more is drawn as a grey placeholder, so a moved video never fails the
sheet.
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from serving.core import opencv_limits  # noqa: F401  (OpenCV's decoder limits, before cv2 loads)
from serving.indexing.video.crops import crop_region
from serving.indexing.video.decode import read_frames
from serving.indexing.video.ingest import parse_source
from xmreid.errors import UserError

#: Size of a crop on the sheet (height, width) and how many results and crops per result it shows.
THUMB = (128, 64)
RESULTS_SHOWN = 5
CROPS_SHOWN = 3
SUFFIXES: tuple[str, ...] = (".html", ".png")
_HEAD = ("<!doctype html><html><head><meta charset='utf-8'><title>video query</title><style>"
         "body{font-family:sans-serif;margin:1em} table{border-collapse:collapse;margin-bottom:1.5em}"
         "td{padding:4px;vertical-align:middle} td.l{font-size:13px;max-width:26em}"
         "tr.q{background:#eef} img{margin-right:3px}</style></head><body>")


def load_crops(sources: list[str]) -> dict[str, np.ndarray]:
    """``{source: BGR thumbnail}`` for every readable source (videos read once each, frames in one pass)."""
    import cv2

    wanted: dict[str, dict[int, list[tuple[str, tuple[int, int, int, int]]]]] = defaultdict(lambda: defaultdict(list))
    for source in sources:
        parsed = parse_source(source) if source else None
        if parsed is not None:
            video, frame, box = parsed
            wanted[video][frame].append((source, box))
    out: dict[str, np.ndarray] = {}
    for video, frames in wanted.items():
        for index, frame in read_frames(video, set(frames)).items():
            for source, box in frames[index]:
                x0, y0, x1, y1 = crop_region(box, THUMB[0] / THUMB[1], frame.shape)
                out[source] = cv2.resize(frame[y0:y1, x0:x1], (THUMB[1], THUMB[0]), interpolation=cv2.INTER_AREA)
    return out


def _placeholder() -> np.ndarray:
    return np.full((THUMB[0], THUMB[1], 3), 160, np.uint8)


def _when(seconds: Any) -> str:
    """A time for people: ISO-8601 for wall times, seconds into the clip for small numbers."""
    if seconds is None:
        return "?"
    value = float(seconds)
    if abs(value) < 10 ** 8:  # seconds from the clip's start (the query's own times)
        return f"{value:.1f} s"
    return datetime.fromtimestamp(value, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _rows(result: dict[str, Any]) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """Per query track: its title and its rows ``(label, crop sources)``, the query's own row first."""
    blocks = []
    for track in result.get("tracks", []):
        title = (f"query track {track['track_id']} (camera {result.get('camera')}, frames {track['frames'][0]}-"
                 f"{track['frames'][1]}, {_when(track['first_seen'])} - {_when(track['last_seen'])})")
        rows = [("query", list(track["crop_sources"]))]
        for hit in track["results"][:RESULTS_SHOWN]:
            label = (f"#{hit['rank']} camera {hit['camera']} track {hit['track_id']} score {hit['score']:.3f} "
                     f"seen {_when(hit['first_seen'])} - {_when(hit['last_seen'])}")
            rows.append((label, list(hit["sources"][:CROPS_SHOWN])))
        blocks.append((title, rows))
    return blocks


def _data_uri(image: np.ndarray) -> str:
    import cv2

    ok, png = cv2.imencode(".png", image)
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode() if ok else ""


def sheet_html(result: dict[str, Any], crops: dict[str, np.ndarray]) -> str:
    """The sheet as one self-contained HTML page."""
    parts = [_HEAD,
             f"<h1>{html.escape(str(result.get('video', '')))}</h1>",
             f"<p>{len(result.get('tracks', []))} query track(s), top {result.get('top_k')} gallery tracks each</p>"]
    for title, rows in _rows(result):
        parts.append(f"<h2>{html.escape(title)}</h2><table>")
        for i, (label, sources) in enumerate(rows):
            images = "".join(f"<img alt='{html.escape(s)}' title='{html.escape(s)}' "
                             f"src='{_data_uri(crops.get(s, _placeholder()))}'>" for s in sources)
            row_class = " class=q" if i == 0 else ""
            parts.append(f"<tr{row_class}><td class=l>{html.escape(label)}</td><td>{images}</td></tr>")
        parts.append("</table>")
    if not result.get("tracks"):
        parts.append("<p>No people were found in the query clip.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def sheet_png(result: dict[str, Any], crops: dict[str, np.ndarray]) -> np.ndarray:
    """The sheet as one BGR image: per query track a title line and a row of crops per result."""
    import cv2

    label_w, gap, line = 420, 4, 18
    cols = max([CROPS_SHOWN] + [len(s) for _, rows in _rows(result) for _, s in rows])
    width = label_w + cols * (THUMB[1] + gap) + gap
    pieces = []
    for title, rows in _rows(result) or [("No people were found in the query clip.", [])]:
        head = np.full((line + 8, width, 3), 255, np.uint8)
        cv2.putText(head, title[:110], (gap, line), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        pieces.append(head)
        for i, (label, sources) in enumerate(rows):
            row = np.full((THUMB[0] + 2 * gap, width, 3), 235 if i == 0 else 255, np.uint8)
            for j, text in enumerate(_wrap(label, 52)[:5]):
                cv2.putText(row, text, (gap, 20 + j * line), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
            for j, source in enumerate(sources):
                x = label_w + j * (THUMB[1] + gap)
                row[gap:gap + THUMB[0], x:x + THUMB[1]] = crops.get(source, _placeholder())
            pieces.append(row)
    return np.vstack(pieces)


def _wrap(text: str, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])


def write_sheet(result: dict[str, Any], path: str | Path) -> Path:
    """Write the contact sheet of a :func:`~serving.indexing.video.query.query_video` answer to ``path``
    (``.html`` or ``.png``).

    Raises:
        UserError: another suffix, or the file cannot be written.
    """
    import cv2

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--sheet {path}: the contact sheet is written as {' or '.join(SUFFIXES)}")
    sources = [s for t in result.get("tracks", []) for s in t["crop_sources"]]
    sources += [s for t in result.get("tracks", []) for hit in t["results"][:RESULTS_SHOWN]
                for s in hit["sources"][:CROPS_SHOWN]]
    crops = load_crops(sources)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".html":
            path.write_text(sheet_html(result, crops), encoding="utf-8")
        elif not cv2.imwrite(str(path), sheet_png(result, crops)):
            raise OSError("OpenCV could not write it")
    except OSError as exc:
        raise UserError(f"cannot write the contact sheet {path}: {exc}") from None
    return path
