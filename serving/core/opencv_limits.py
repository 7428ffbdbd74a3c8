"""OpenCV's own decoder limits, set from the server's settings before OpenCV is loaded.

The upload checks in :mod:`serving.core.imageio` read an image's header and refuse one over ``max_pixels`` /
``max_side`` before anything is decoded. OpenCV has a second, independent guard: ``imdecode`` refuses an
image larger than ``OPENCV_IO_MAX_IMAGE_PIXELS`` (default 2**30, i.e. 1 Gpixel, 3 GiB of BGR) or wider or
taller than ``OPENCV_IO_MAX_IMAGE_WIDTH`` / ``_HEIGHT`` (2**20). Setting them to the server's limits makes
that guard a backstop at the same bound: a format whose header our checks misread (or a codec path that
bypasses them) still cannot make OpenCV allocate more than the configured image.

OpenCV reads these variables once, when its library is loaded (``import cv2``), so they must be in the
environment before that. This module imports nothing heavy; the modules that import cv2 import it first.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)

PIXELS_VAR = "OPENCV_IO_MAX_IMAGE_PIXELS"
WIDTH_VAR = "OPENCV_IO_MAX_IMAGE_WIDTH"
HEIGHT_VAR = "OPENCV_IO_MAX_IMAGE_HEIGHT"

# The Settings defaults (serving.core.config), repeated so that importing this module needs no pydantic;
# tests/serving/test_operator_fixes.py checks the two agree.
DEFAULT_MAX_PIXELS = 36_000_000
DEFAULT_MAX_SIDE = 16_384


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:  # the settings model reports a bad value with its own message later
        return default


def apply(max_pixels: int, max_side: int) -> bool:
    """Put the limits in the environment for OpenCV, if it is not loaded yet.

    Args:
        max_pixels: largest width x height accepted (``Settings.max_pixels``).
        max_side: largest width or height accepted (``Settings.max_side``).

    Returns:
        True when set before OpenCV loaded; False (and a warning) when cv2 was already imported, in which
        case OpenCV keeps the values it read then.
    """
    if "cv2" in sys.modules:
        current = os.environ.get(PIXELS_VAR)
        if current != str(int(max_pixels)):
            logger.warning("OpenCV was loaded before the server's limits were known: its decoder backstop stays at "
                           "%s pixels instead of max_pixels=%d", current or "2**30", max_pixels)
        return False
    os.environ[PIXELS_VAR] = str(int(max_pixels))
    os.environ[WIDTH_VAR] = str(int(max_side))
    os.environ[HEIGHT_VAR] = str(int(max_side))
    return True


def apply_defaults() -> None:
    """Before the first ``import cv2`` of a process that did not call :func:`apply`: the limits from the
    ``XMREID_MAX_PIXELS`` / ``XMREID_MAX_SIDE`` variables (or their defaults), unless already set.

    Covers ``uvicorn --factory serving.app:create_app`` and the indexer, which import cv2 before any
    settings object exists. An operator's own ``OPENCV_IO_*`` values are kept.
    """
    if "cv2" in sys.modules:
        return
    os.environ.setdefault(PIXELS_VAR, str(_env_int("XMREID_MAX_PIXELS", DEFAULT_MAX_PIXELS)))
    side = str(_env_int("XMREID_MAX_SIDE", DEFAULT_MAX_SIDE))
    os.environ.setdefault(WIDTH_VAR, side)
    os.environ.setdefault(HEIGHT_VAR, side)


apply_defaults()
