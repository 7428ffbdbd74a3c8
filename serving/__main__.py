"""``python -m serving <command>``: batch gallery indexing and the HTTP retrieval server.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``serve`` starts without importing the indexer and vice versa.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from serving.core import logs
from serving.errors import UserError
from serving.version import version_string

COMMANDS: dict[str, tuple[str, str]] = {
    "index": ("serving.indexing", "crawl camera folders of RGB crops, embed them and add them to a gallery"),
    "serve": ("serving.server", "run the FastAPI retrieval server"),
    "gallery": ("serving.gallery_cli", "check, repair or copy a gallery directory (offline)"),
    "demo-hint": ("serving.demo_hint", "print a ready-to-paste curl that posts an IR crop to /search"),
}


def _usage() -> str:
    lines = ["usage: python -m serving [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_string("python -m serving"))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    log_format = os.environ.get("XMREID_LOG_FORMAT", "text").strip().lower()
    # `serve` re-applies its validated --log-format / XMREID_LOG_FORMAT; until then (and for the other
    # commands) the variable decides, and an unknown value falls back to text rather than failing here.
    if not logging.getLogger().handlers:  # as basicConfig: an embedding program's (or pytest's) logging stays
        logs.configure(log_format if log_format in logs.FORMATS else "text", logging.INFO)
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
