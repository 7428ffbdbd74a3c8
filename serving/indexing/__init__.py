"""The offline jobs: ``python -m serving index`` (crawl RGB crops, embed them, fill a gallery), ``gallery``
(check, repair, copy, tune or expire a gallery directory), ``audit`` (verify or show the audit trail) and ``demo-hint``.

Kept apart from the live server: the server never imports this package, and this package shares with the
server only the embedders, the image decoder and ``index``. One indexing pipeline, two engines:

* :mod:`serving.indexing.crawl` -- finds the crops: a SYSU-MM01 tree, camera folders, or a CSV manifest;
* :mod:`serving.indexing.common` -- the gallery (open, lock, resume, save) and the batch loop that adds
  embedded batches, records skipped files and saves every ``--save-every`` batches;
* :mod:`serving.indexing.local` -- this process: decode threads and one embedder;
* :mod:`serving.indexing.ray` -- Ray Data decode tasks and an actor pool of embedders (an optional extra);
* :mod:`serving.indexing.cli` -- the command line, every option of ``python -m serving index``;
* :mod:`serving.indexing.gallery_cli`, :mod:`serving.indexing.audit_cli`, :mod:`serving.indexing.demo_hint`:
  the other commands.

Both engines feed the same loop, so resuming, skipping bad files, periodic saves and the Ctrl-C save behave
alike, and both produce the same gallery (same ids, same vectors up to float rounding).

The names below are imported on first use (PEP 562), so the light commands of this package
(``gallery``, ``audit``) start without loading FAISS or a model runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"ENGINES": "serving.indexing.cli", "build_parser": "serving.indexing.cli", "main": "serving.indexing.cli",
         "parse_cameras": "serving.indexing.cli", "IndexSummary": "serving.indexing.common",
         "crawl": "serving.indexing.common", "gallery_metadata": "serving.indexing.common",
         "gallery_sources": "serving.indexing.common", "open_gallery": "serving.indexing.common",
         "save_gallery": "serving.indexing.common", "index_images": "serving.indexing.local"}

__all__ = ["ENGINES", "IndexSummary", "build_parser", "crawl", "gallery_metadata", "gallery_sources",
           "index_images", "main", "open_gallery", "parse_cameras", "save_gallery"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'serving.indexing' has no attribute {name!r}")
