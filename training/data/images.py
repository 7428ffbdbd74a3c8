"""Image decoding shared by training, evaluation and (by contract) the serving decoder.

``read_image`` is the one definition of "pixels the model sees" offline: OpenCV decode, BGR -> RGB,
``cv2.resize`` with ``INTER_LINEAR`` to (W, H). ``serving.core.imageio.decode_image`` does exactly the same
for uploaded bytes, so offline evaluation and ``/search`` see identical pixels (docs/contracts.md).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from xmreid.errors import UserError


def read_image(path: str | Path, height: int, width: int) -> np.ndarray:
    """Read an image file as uint8 RGB resized to ``height x width``.

    Grey (1-channel) files, such as some infrared crops, come back as 3 equal channels because
    ``cv2.IMREAD_COLOR`` expands them, which is what the two-stream model expects.

    Args:
        path: Image file (anything OpenCV decodes: JPEG, PNG, BMP, ...).
        height: Output height in pixels.
        width: Output width in pixels.

    Returns:
        ``np.ndarray`` ``[height, width, 3]`` uint8, RGB channel order.

    Raises:
        UserError: The file is missing or OpenCV cannot decode it.
    """
    if height < 1 or width < 1:
        raise UserError(f"height and width must be positive, got {height}x{width}")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        reason = "no such file" if not Path(path).is_file() else "not a decodable image"
        raise UserError(f"cannot read image {path}: {reason}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.shape[0] != height or img.shape[1] != width:
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)
