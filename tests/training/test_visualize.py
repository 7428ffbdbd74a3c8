"""CMC and ranking-list pictures: files written, pixel sizes, border colours."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.visualize import (
    BORDER,
    GREEN,
    HEADER,
    PAD,
    QUERY_COLOUR,
    QUERY_GAP,
    RED,
    THUMB,
    plot_cmc,
    plot_ranking_list,
    ranking_list_size,
)
from xmreid.errors import UserError


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_plot_cmc_writes_png_of_requested_size(tmp_path: Path) -> None:
    cmc = np.linspace(0.3, 0.9, 20)
    out = plot_cmc({"DFE": cmc, "baseline": cmc * 0.8}, tmp_path / "plots" / "cmc.png", title="SYSU all-search",
                   size=(640, 480))
    assert out.stat().st_size > 5000
    img = _read_rgb(out)
    assert img.shape == (480, 640, 3)
    assert img.std() > 10  # not a blank canvas


def test_plot_cmc_rejects_bad_curves(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        plot_cmc({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="1-D"):
        plot_cmc({"a": np.zeros((2, 3))}, tmp_path / "x.png")


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = tmp_path / f"img{i}.jpg"
        cv2.imwrite(str(p), rng.integers(0, 256, (96 + i, 40, 3), dtype=np.uint8))  # odd sizes: resized
        paths.append(p)
    return paths


def test_ranking_list_size_and_border_colours(images: list[Path], tmp_path: Path) -> None:
    gallery = [images[1:6] * 2, images[2:6] * 2 + images[:2]]  # two queries x top-10
    same = [[True, False] * 5, [False] * 9 + [True]]
    cams = [[1, 2, 4, 5, 1, 2, 4, 5, 1, 2]] * 2
    out = plot_ranking_list([images[0], images[1]], gallery, same, [3, 6], cams, tmp_path / "rank.png")
    img = _read_rgb(out)
    h, w = ranking_list_size(2, 10)
    cell_h, cell_w = THUMB[0] + 2 * BORDER, THUMB[1] + 2 * BORDER
    # 22 + 2*(136+6) + 6 = 312 rows; 6 + 72 + 18 + 10*(72+6) = 876 columns
    assert (h, w) == (312, 876) and img.shape == (h, w, 3)

    def border_pixel(row: int, col: int | None) -> tuple[int, ...]:
        top = HEADER + row * (cell_h + PAD)
        left = PAD if col is None else PAD + cell_w + QUERY_GAP + col * (cell_w + PAD)
        return tuple(int(v) for v in img[top + 1, left + cell_w // 2])  # inside the top border, mid-width

    assert border_pixel(0, None) == QUERY_COLOUR
    assert border_pixel(0, 0) == GREEN and border_pixel(0, 1) == RED
    assert border_pixel(1, 0) == RED and border_pixel(1, 9) == GREEN
    # the camera label is drawn inside the thumbnail (white text on black)
    top, left = HEADER, PAD + BORDER
    label = img[top + BORDER + THUMB[0] - 14: top + BORDER + THUMB[0] - 1, left:left + 30]
    assert (label.max(axis=2) > 200).any() and (label.max(axis=2) < 30).any()


def test_ranking_list_errors(images: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 rows but there are 1 queries"):
        plot_ranking_list([images[0]], [[images[1]], [images[2]]], [[True]], [3], [[1]], tmp_path / "r.png")
    with pytest.raises(ValueError, match="differ in length"):
        plot_ranking_list([images[0]], [[images[1], images[2]]], [[True]], [3], [[1, 2]], tmp_path / "r.png")
    with pytest.raises(UserError, match="cannot read image"):
        plot_ranking_list([tmp_path / "missing.jpg"], [[images[1]]], [[True]], [3], [[1]], tmp_path / "r.png")
