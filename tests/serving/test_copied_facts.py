"""Facts that serving keeps a copy of because the room rules forbid it to import ``training``.

``serving`` may import ``index`` and the torch-free artifact contract only (ARCHITECTURE.md §2), so where
``training`` owns a fact serving also needs, serving keeps an equal copy and this file checks the two agree.
"""

from __future__ import annotations

from serving.crawl import IMAGE_SUFFIXES as SERVING_SUFFIXES
from training.data.sysu import IMAGE_SUFFIXES as TRAINING_SUFFIXES


def test_image_suffixes_agree() -> None:
    assert SERVING_SUFFIXES == TRAINING_SUFFIXES
