"""The offline jobs: ``python -m serving index`` (crawl RGB crops, embed them, fill a gallery), ``gallery``
(check, repair, copy, tune a gallery directory) and ``demo-hint``.

Kept apart from the live server: the server never imports this package, and this package shares with the
server only the embedders, the image decoder and ``index``. One indexing pipeline, two engines:

* :mod:`serving.indexing.crawl` -- finds the crops: a SYSU-MM01 tree, camera folders, or a CSV manifest;
* :mod:`serving.indexing.common` -- the gallery (open, lock, resume, save) and the batch loop that adds
  embedded batches, records skipped files and saves every ``--save-every`` batches;
* :mod:`serving.indexing.local` -- this process: decode threads and one embedder;
* :mod:`serving.indexing.ray` -- Ray Data decode tasks and an actor pool of embedders (an optional extra);
* :mod:`serving.indexing.cli` -- the command line, every option of ``python -m serving index``;
* :mod:`serving.indexing.gallery_cli` and :mod:`serving.indexing.demo_hint` -- the other two commands.

Both engines feed the same loop, so resuming, skipping bad files, periodic saves and the Ctrl-C save behave
alike, and both produce the same gallery (same ids, same vectors up to float rounding).
"""

from __future__ import annotations

from serving.indexing.cli import ENGINES, build_parser, main, parse_cameras
from serving.indexing.common import IndexSummary, crawl, gallery_metadata, gallery_sources, open_gallery, save_gallery
from serving.indexing.local import index_images

__all__ = ["ENGINES", "IndexSummary", "build_parser", "crawl", "gallery_metadata", "gallery_sources",
           "index_images", "main", "open_gallery", "parse_cameras", "save_gallery"]
