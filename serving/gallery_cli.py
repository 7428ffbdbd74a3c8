"""``python -m serving gallery check|repair|copy``: a gallery directory, offline.

* ``check DIR``: every check a load runs (manifest types, sha256 of each file, SQLite quick_check, every
  row, finite unit-length vectors, index and metadata agreeing) plus SQLite's full integrity_check.
  Prints one line; exit 0 when sound, 2 when damaged (the line names the file and what is wrong).
* ``repair DIR``: rebuilds what can be rebuilt (checksums of an old gallery, damaged SQLite indexes,
  leftovers of killed saves) as a new atomic save, or says why it cannot (exit 2, nothing changed).
  Needs the directory's write lock: stop its writer first (exit 1 otherwise, naming it).
* ``copy SRC DEST``: a consistent copy to index into while SRC is being served; the server installs it
  with ``POST /gallery/reload`` (``--staging-gallery DEST``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving gallery", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    check = commands.add_parser("check", help="run every load check and SQLite integrity_check (read-only)")
    check.add_argument("directory", type=Path)
    repair = commands.add_parser("repair", help="rebuild what can be rebuilt, or say it cannot")
    repair.add_argument("directory", type=Path)
    copy = commands.add_parser("copy", help="copy a gallery (even one being served) to index into")
    copy.add_argument("source", type=Path)
    copy.add_argument("dest", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one gallery command; returns the exit status (0 sound/done, 1 usage or locked, 2 damaged)."""
    from index import repair as tools
    from index.errors import CorruptGalleryError, GalleryError, GalleryLockedError

    args = build_parser().parse_args(argv)
    try:
        if args.action == "check":
            report = tools.check(args.directory)
        elif args.action == "repair":
            report = tools.repair(args.directory)
        else:
            report = tools.copy(args.source, args.dest)
    except CorruptGalleryError as exc:
        verb = "cannot repair" if args.action == "repair" else "damaged"
        raise UserError(f"{verb}: {exc}", exit_code=EXIT_DAMAGED) from None
    except GalleryLockedError as exc:
        raise UserError(str(exc)) from None
    except GalleryError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise UserError(f"{exc.filename or args}: {exc.strerror or exc}") from None
    print(("ok: " if report.ok else "warning: ") + report.summary, file=sys.stdout)
    return 0
