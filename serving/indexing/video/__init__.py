"""From camera video to a gallery of tracks, and video queries answered with the gallery's tracks.

``python -m serving ingest`` and ``python -m serving query`` (and :func:`ingest_video`, :func:`query_video`):

* :mod:`~serving.indexing.video.decode` -- OpenCV decoding of files, folders and streams (reopened with backoff);
* :mod:`~serving.indexing.video.detect` -- the :class:`~serving.indexing.video.detect.Detector` interface and
  background subtraction (MOG2 / KNN), the default; :mod:`~serving.indexing.video.onnx_detect` -- a YOLO ONNX;
* :mod:`~serving.indexing.video.tracking` -- ByteTrack (the ``trackers`` library) per camera, or a MOT file;
* :mod:`~serving.indexing.video.crops` -- a few good crops per track;
* :mod:`~serving.indexing.video.pipeline` -- one video through those stages;
* :mod:`~serving.indexing.video.ingest` -- the crops embedded and indexed, resumably;
* :mod:`~serving.indexing.video.query` -- each track of a query clip fused and answered with gallery tracks;
* :mod:`~serving.indexing.video.sheet` -- the answer as an HTML / PNG contact sheet;
* :mod:`~serving.indexing.video.ingest_cli`, :mod:`~serving.indexing.video.query_cli` -- the command lines.

The names below are imported on first use, so importing this package loads neither OpenCV nor a model runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ingest_video": "serving.indexing.video.ingest", "query_video": "serving.indexing.video.query"}

__all__ = ["ingest_video", "query_video"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'serving.indexing.video' has no attribute {name!r}")
