"""``python -m serving query``: a clip in, the gallery's ranked tracks for each person in it out
(the command line is :func:`serving.indexing.video.cli.query_main`)."""

from serving.indexing.video.cli import query_main as main

__all__ = ["main"]
