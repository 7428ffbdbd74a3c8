"""Pictures of retrieval results: CMC curves and top-k ranking lists (the paper's Figure 8).

The CMC plot uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global
backend switch), so it is safe in headless jobs and beside other users of matplotlib. The ranking
list is composed pixel by pixel with OpenCV/NumPy, so its size and border colours are exact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["GREEN", "QUERY_COLOUR", "RED", "plot_cmc", "plot_ranking_list", "ranking_list_size",
           "render_ranking_list"]

# RGB border colours: same identity, different identity, and the query itself.
GREEN = (0, 170, 0)
RED = (220, 0, 0)
QUERY_COLOUR = (40, 90, 220)
BACKGROUND = (255, 255, 255)

THUMB = (128, 64)  # (height, width) of each thumbnail: the 2:1 aspect of person crops
BORDER = 4  # border thickness around a thumbnail
PAD = 6  # space between cells and around the picture
QUERY_GAP = 18  # extra space separating the query column from the ranked gallery
HEADER = 22  # band above the rows with "query", "1", "2", ...


def plot_cmc(curves: Mapping[str, np.ndarray], out_png: str | Path, title: str = "CMC",
             size: tuple[int, int] = (640, 480), dpi: int = 100) -> Path:
    """Plot CMC curves (matching rate against rank) to a PNG.

    Args:
        curves: name → CMC array ``[R]`` with values in [0, 1] (entry r-1 is the rank-r matching rate),
            e.g. ``{"DFE": cmc, "baseline": cmc_b}``.
        out_png: file to write (parent folders are created).
        title: figure title.
        size: ``(width, height)`` of the PNG in pixels.
        dpi: resolution used to lay out fonts; the pixel size stays ``size``.

    Returns:
        The path written.
    """
    if not curves:
        raise ValueError("curves is empty: give at least one name -> CMC array")
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    max_rank = 1
    for name, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=np.float64)
        if cmc.ndim != 1 or cmc.size == 0:
            raise ValueError(f"CMC curve {name!r} must be a non-empty 1-D array, got shape {cmc.shape}")
        ranks = np.arange(1, cmc.size + 1)
        ax.plot(ranks, 100.0 * cmc, marker="o", markersize=3, label=f"{name} (R1 {100.0 * cmc[0]:.1f}%)")
        max_rank = max(max_rank, cmc.size)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_xlim(1, max_rank)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    logger.info("wrote CMC plot %s", out)
    return out


def ranking_list_size(rows: int, cols: int, thumb: tuple[int, int] = THUMB) -> tuple[int, int]:
    """``(height, width)`` in pixels of a ranking list with ``rows`` queries and ``cols`` ranks."""
    cell_h, cell_w = thumb[0] + 2 * BORDER, thumb[1] + 2 * BORDER
    height = HEADER + rows * (cell_h + PAD) + PAD
    width = PAD + cell_w + QUERY_GAP + cols * (cell_w + PAD)
    return height, width


def _read_thumb(path: str | Path, thumb: tuple[int, int]) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"cannot read image {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (thumb[1], thumb[0]), interpolation=cv2.INTER_AREA)


def _put_label(canvas: np.ndarray, text: str, x: int, y: int, scale: float = 0.4) -> None:
    """Small white text on a dark box, its lower-left corner at (x, y): readable on any image."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(canvas, (x, y - th - base), (x + tw + 2, y + 1), (0, 0, 0), thickness=-1)
    cv2.putText(canvas, text, (x + 1, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def _draw_cell(canvas: np.ndarray, image: np.ndarray, top: int, left: int, colour: tuple[int, int, int],
               cam: int | str) -> None:
    h, w = image.shape[:2]
    canvas[top:top + h + 2 * BORDER, left:left + w + 2 * BORDER] = colour
    canvas[top + BORDER:top + BORDER + h, left + BORDER:left + BORDER + w] = image
    _put_label(canvas, f"cam{cam}", left + BORDER, top + BORDER + h - 2)  # box ends inside the image


def render_ranking_list(query_paths: Sequence[str | Path], gallery_paths_ranked: Sequence[Sequence[str | Path]],
                        same_identity: Sequence[Sequence[bool]], query_cams: Sequence[int | str],
                        gallery_cams: Sequence[Sequence[int | str]],
                        thumb: tuple[int, int] = THUMB) -> np.ndarray:
    """Compose the ranking-list picture as an RGB ``uint8`` array (see :func:`plot_ranking_list`)."""
    rows = len(query_paths)
    if rows == 0:
        raise ValueError("query_paths is empty: give at least one query")
    for name, seq in (("gallery_paths_ranked", gallery_paths_ranked), ("same_identity", same_identity),
                      ("query_cams", query_cams), ("gallery_cams", gallery_cams)):
        if len(seq) != rows:
            raise ValueError(f"{name} has {len(seq)} rows but there are {rows} queries")
    for r in range(rows):
        if not len(gallery_paths_ranked[r]) == len(same_identity[r]) == len(gallery_cams[r]):
            raise ValueError(f"row {r}: gallery_paths_ranked, same_identity and gallery_cams differ in length "
                             f"({len(gallery_paths_ranked[r])}, {len(same_identity[r])}, {len(gallery_cams[r])})")
    cols = max(len(g) for g in gallery_paths_ranked)
    height, width = ranking_list_size(rows, cols, thumb)
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    cell_h, cell_w = thumb[0] + 2 * BORDER, thumb[1] + 2 * BORDER
    gallery_left = PAD + cell_w + QUERY_GAP

    _put_label(canvas, "query", PAD, HEADER - 6, scale=0.45)
    for c in range(cols):
        _put_label(canvas, str(c + 1), gallery_left + c * (cell_w + PAD), HEADER - 6, scale=0.45)
    for r in range(rows):
        top = HEADER + r * (cell_h + PAD)
        _draw_cell(canvas, _read_thumb(query_paths[r], thumb), top, PAD, QUERY_COLOUR, query_cams[r])
        for c, path in enumerate(gallery_paths_ranked[r]):
            colour = GREEN if same_identity[r][c] else RED
            _draw_cell(canvas, _read_thumb(path, thumb), top, gallery_left + c * (cell_w + PAD), colour,
                       gallery_cams[r][c])
    return canvas


def plot_ranking_list(query_paths: Sequence[str | Path], gallery_paths_ranked: Sequence[Sequence[str | Path]],
                      same_identity: Sequence[Sequence[bool]], query_cams: Sequence[int | str],
                      gallery_cams: Sequence[Sequence[int | str]], out_png: str | Path,
                      thumb: tuple[int, int] = THUMB) -> Path:
    """Write a top-k ranking list like the paper's Figure 8.

    Each row is one query: its thumbnail (blue border), then its ranked gallery thumbnails with a
    green border for the same identity and a red one otherwise; every thumbnail carries its camera
    number. The picture is ``ranking_list_size(rows, max row length, thumb)`` pixels.

    Args:
        query_paths: one image path per row.
        gallery_paths_ranked: per row, the gallery image paths in rank order (usually the top 10).
        same_identity: per row, for each ranked gallery image, whether it shows the query's identity.
        query_cams: camera of each query.
        gallery_cams: per row, the camera of each ranked gallery image.
        out_png: file to write (parent folders are created).
        thumb: ``(height, width)`` of each thumbnail.

    Returns:
        The path written.
    """
    canvas = render_ranking_list(query_paths, gallery_paths_ranked, same_identity, query_cams, gallery_cams, thumb)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR)):
        raise UserError(f"cannot write {out}")
    logger.info("wrote ranking list %s (%d queries)", out, len(query_paths))
    return out
