"""``python -m serving <command>``: batch gallery indexing and the HTTP retrieval server.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``serve`` starts without importing the indexer and vice versa.
"""

from __future__ import annotations

import logging
import os
import sys

from serving.core import logs
from xmreid.cli import run

COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("serving.indexing", "crawl camera folders of RGB crops, embed them and add them to a gallery"),
    "ingest": ("serving.indexing.video.ingest_cli", "detect and track people in camera video, index their crops"),
    "query": ("serving.indexing.video.query_cli", "answer each person tracked in a clip with the gallery's tracks"),
    "serve": ("serving.server", "run the FastAPI retrieval server"),
    "gallery": ("serving.indexing.gallery_cli", "check, repair, copy, tune or expire a gallery directory (offline)"),
    "audit": ("serving.indexing.audit_cli", "verify the audit trail's hash chain, or show its records"),
    "demo-hint": ("serving.indexing.demo_hint", "print a ready-to-paste curl that posts an IR crop to /search"),
}


def _configure_logging() -> None:
    # `serve` re-applies its validated --log-format / XMREID_LOG_FORMAT; until then (and for the other
    # commands) the variable decides, and an unknown value falls back to text rather than failing here.
    log_format = os.environ.get("XMREID_LOG_FORMAT", "text").strip().lower()
    if not logging.getLogger().handlers:  # as basicConfig: an embedding program's (or pytest's) logging stays
        logs.configure(log_format if log_format in logs.FORMATS else "text", logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run one command (see :func:`xmreid.cli.run`); returns the exit status."""
    return run("python -m serving", COMMANDS, argv, configure_logging=_configure_logging)


if __name__ == "__main__":
    sys.exit(main())
