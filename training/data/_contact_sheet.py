"""A PNG overview of a generated dataset: a few identities, every camera, RGB next to IR.

It exists so that a person can look at what the generator makes (do the cameras differ, can one
see the same person across modalities?) without opening hundreds of files.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from training.data.records import MARKER, layout_cameras, layout_image_path
from xmreid.errors import UserError

GAP = 6


def contact_sheet(root: str | Path, layout: str, out_png: str | Path, people: int = 4, per_cam: int = 2) -> Path:
    """Tile ``people`` identities x (cameras x ``per_cam`` images) from the files on disk.

    Args:
        root: Dataset root written by ``generate``.
        layout: ``"sysu"`` or ``"regdb"``.
        out_png: Where to write the PNG.
        people: Number of identities (rows); the first ones by id.
        per_cam: Images per camera (columns per camera).

    Returns:
        The PNG path.
    """
    root = Path(root)
    params = json.loads((root / MARKER).read_text())
    h, w = params["height"], params["width"]
    per_cam = min(per_cam, params["images_per_camera"])
    cams = layout_cameras(layout)
    # RGB cameras first, then IR, with a wider gap between the two groups.
    order = [c for c in cams if cams[c] == "rgb"] + [c for c in cams if cams[c] == "ir"]
    n_rows = min(people, params["ids"])
    header = 18
    cols_w = len(order) * (per_cam * w + GAP) + GAP * 3
    sheet = np.full((header + n_rows * (h + GAP), cols_w, 3), 255, np.uint8)
    x = 0
    for camid in order:
        if cams[camid] == "ir" and camid == order[len(order) - sum(v == "ir" for v in cams.values())]:
            x += GAP * 3
        if layout == "sysu":
            label = f"cam{camid} {cams[camid].upper()}"
        else:
            label = "Visible" if cams[camid] == "rgb" else "Thermal"
        cv2.putText(sheet, label, (x + 2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for row in range(n_rows):
            for n in range(per_cam):
                path = root / layout_image_path(layout, row + 1, camid, n)
                img = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if img is None:
                    raise UserError(f"contact sheet: cannot read {path}")
                y0 = header + row * (h + GAP)
                sheet[y0:y0 + h, x + n * w:x + (n + 1) * w] = img[:, :, ::-1]
        x += per_cam * w + GAP
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), sheet[:, :, ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return out_png
