"""``python -m serving gallery check|repair|copy|tune|expire``: a gallery directory, offline.

* ``check DIR``: every check a load runs (manifest types, sha256 of each file, SQLite quick_check, every
  row, finite unit-length vectors, index and metadata agreeing) plus SQLite's full integrity_check.
  Prints one line; exit 0 when sound, 2 when damaged (the line names the file and what is wrong).
* ``repair DIR``: rebuilds what can be rebuilt (checksums of an old gallery, damaged SQLite indexes,
  leftovers of killed saves) as a new atomic save, or says why it cannot (exit 2, nothing changed).
  Needs the directory's write lock: stop its writer first (exit 1 otherwise, naming it).
* ``copy SRC DEST``: a consistent copy to index into while SRC is being served; the server installs it
  with ``POST /gallery/reload`` (``--staging-gallery DEST``).
* ``tune DIR --target-recall R``: pick an approximate gallery's ``nprobe`` / ``ef_search`` for a held-out
  recall@k of at least R, measured on its own items (``index.Gallery.tune``), and save it: the record
  (target, measured recall, value, sample) is in the manifest and ``GET /gallery/stats``. ``python -m
  serving index --target-recall R`` runs the same step after indexing.
* ``expire DIR --older-than 30d [--now T] [--dry-run] [--audit-log PATH]``: remove the items stamped before
  the cut-off, durably and audited; prints ``removed N, kept M, kept K without a time``. Exit 2 while
  another process writes the gallery, or for an age that is not ``90m`` / ``12h`` / ``30d``
  (:mod:`serving.indexing.expire`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serving.indexing import expire
from xmreid.errors import EXIT_DAMAGED, UserError

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
    tune = commands.add_parser("tune", help="set an approximate gallery's search parameter for a recall target")
    tune.add_argument("directory", type=Path)
    tune.add_argument("--target-recall", type=float, required=True, help="held-out recall@k to reach, in (0, 1]")
    tune.add_argument("--k", type=int, default=10, help="the recall depth")
    tune.add_argument("--sample", type=int, default=1000, help="gallery items used as held-out queries")
    expire.add_parser(commands)
    return parser


def tune_gallery(directory: Path, target_recall: float, k: int = 10, sample: int = 1000) -> dict:
    """Tune the gallery saved in ``directory`` to ``target_recall`` and save it (takes its write lock).

    Returns:
        ``Gallery.tune``'s record.

    Raises:
        GalleryError: an exact kind, an untrained gallery, a target outside (0, 1], or a locked directory.
    """
    from index import Gallery

    gallery = Gallery.load(directory)
    try:
        record = gallery.tune(target_recall, k=k, sample=sample)
        gallery.save(directory)
    finally:
        gallery.close()
    logger.log(logging.INFO if record["met"] else logging.WARNING, "tuned %s: %s in %.1f s", directory,
               describe_tuning(record), record["seconds"])
    return record


def describe_tuning(record: dict) -> str:
    """One line for a ``Gallery.tune`` record: ``ef_search=11, held-out recall@10 0.993 (target 0.950), 1000 items``."""
    return (f"{record['param']}={record['value']}, held-out recall@{record['k']} {record['recall']:.3f} "
            f"(target {record['target_recall']:.3f}{'' if record['met'] else ', not reached'}), "
            f"{record['sample']} items")


def main(argv: list[str] | None = None) -> int:
    """Run one gallery command; returns the exit status (0 sound/done, 1 usage or locked, 2 damaged; ``expire``:
    2 also while another process writes the gallery)."""
    from index import repair as tools
    from index.errors import CorruptGalleryError, GalleryError, GalleryLockedError

    args = build_parser().parse_args(argv)
    try:
        if args.action == "expire":
            print(expire.run(args), file=sys.stdout)
            return 0
        if args.action == "check":
            report = tools.check(args.directory)
        elif args.action == "repair":
            report = tools.repair(args.directory)
        elif args.action == "tune":
            record = tune_gallery(args.directory, args.target_recall, args.k, args.sample)
            print(f"{'ok' if record['met'] else 'warning'}: {args.directory}: {describe_tuning(record)}",
                  file=sys.stdout)
            return 0
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
