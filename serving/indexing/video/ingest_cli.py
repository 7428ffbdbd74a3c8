"""``python -m serving ingest``: camera video -> people detected and tracked -> a few crops per track indexed
(the command line is :func:`serving.indexing.video.cli.ingest_main`)."""

from serving.indexing.video.cli import ingest_main as main

__all__ = ["main"]
