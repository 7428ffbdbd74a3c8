"""The one record type every dataset parser yields and every sampler consumes.

A dataset is a list of :class:`Record`; nothing downstream needs to know whether it came from
the real SYSU-MM01 / RegDB folders or from the synthetic generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Modality = Literal["rgb", "ir"]
MODALITIES: tuple[str, ...] = ("rgb", "ir")

#: SYSU-MM01 cameras by modality (Wu et al., ICCV 2017): 1, 2, 4, 5 are RGB, 3 and 6 are near-infrared.
SYSU_RGB_CAMS: tuple[int, ...] = (1, 2, 4, 5)
SYSU_IR_CAMS: tuple[int, ...] = (3, 6)
#: RegDB has one visible and one thermal camera; we number them 1 and 2.
REGDB_VISIBLE_CAM = 1
REGDB_THERMAL_CAM = 2


@dataclass(frozen=True)
class Record:
    """One image of one person.

    Attributes:
        path: Absolute (or dataset-root relative, if the caller chose so) path of the image file.
        pid: The dataset's own person id (not relabelled; samplers relabel to 0..C-1).
        camid: Camera number as the dataset numbers it (SYSU 1..6; RegDB 1 = visible, 2 = thermal).
        modality: ``"rgb"`` (visible) or ``"ir"`` (infrared / thermal).
    """

    path: str
    pid: int
    camid: int
    modality: Modality

    def __post_init__(self) -> None:
        # A wrong modality string would silently drop images from the paired sampler, so fail early.
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")


def sysu_modality(camid: int) -> Modality:
    """Modality of a SYSU-MM01 camera.

    Args:
        camid: Camera number 1..6.

    Returns:
        ``"ir"`` for cameras 3 and 6, ``"rgb"`` for 1, 2, 4, 5.
    """
    if camid in SYSU_IR_CAMS:
        return "ir"
    if camid in SYSU_RGB_CAMS:
        return "rgb"
    raise ValueError(f"SYSU-MM01 camera must be one of 1..6, got {camid}")


# The layout facts the generator writes and its contact sheet reads (kept here, not in the
# ``synthetic`` command module, so that neither imports the other).
MARKER = "synthetic.json"  # the generator's parameters, at the root of every tree it writes


def layout_cameras(layout: str) -> dict[int, str]:
    """Camera number -> modality for a layout."""
    if layout == "sysu":
        return {c: sysu_modality(c) for c in range(1, 7)}
    return {REGDB_VISIBLE_CAM: "rgb", REGDB_THERMAL_CAM: "ir"}


def layout_image_path(layout: str, pid: int, camid: int, n: int) -> str:
    """Dataset-relative path of image ``n`` (0-based) of ``pid`` in camera ``camid``."""
    if layout == "sysu":
        return f"cam{camid}/{pid:04d}/{n + 1:04d}.jpg"  # as in the real SYSU-MM01 tree
    folder = "Visible" if camid == REGDB_VISIBLE_CAM else "Thermal"
    return f"{folder}/{pid}/{n + 1:04d}.jpg"
