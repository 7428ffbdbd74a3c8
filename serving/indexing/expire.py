"""``python -m serving gallery expire DIR --older-than 30d``: remove the items older than a retention age, offline.

An item whose ``timestamp`` is strictly before the cut-off (``--now``, default the current time, minus
the age) is removed; one stamped exactly at the cut-off is kept, and so is every item without a timestamp
(counted). The removal is one change through the gallery's ordinary path: under the directory's write lock
(refused while a server or another command writes the gallery), in a transaction, saved as a new version
whose manifest replace is the commit point, so a ``kill -9`` at any moment leaves the gallery with all
of the run's removals or none. A Milvus gallery's removals are Milvus deletes, committed by Milvus in
chunks as they are made: a killed run may have removed part of the items, never part of an item, and
the same command (same ``--now``) removes the rest.

``--audit-log PATH`` appends one record per run to the server's hash-chained audit trail
(:mod:`serving.core.audit_log`; ``python -m serving audit verify PATH``), after the save: endpoint
``gallery expire``, key ``local-operator``, the OS user, the parameters and the removed ids.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import math
import time
from pathlib import Path

from serving.core.ages import parse_age
from serving.core.audit_log import AuditError, AuditLog
from serving.runtime.expiry import ExpiryReport, iso, select_expired
from xmreid.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)

#: The audit record's ``key`` for a run from the command line (no API key is involved).
LOCAL_KEY = "local-operator"
#: The exit status of a run refused because another process writes the gallery: 2, as argparse's for an age it
#: cannot read, so a scheduled job tells "not run, retry later" from a missing gallery (1).
EXIT_REFUSED = 2


def age_argument(text: str) -> str:
    """``--older-than``: an age as written (checked; argparse reports a bad one in one line, exit 2)."""
    try:
        parse_age(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def time_argument(text: str) -> float:
    """``--now``: Unix seconds, or an ISO-8601 time (UTC when it names no zone), as Unix seconds."""
    try:
        value = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither Unix seconds (1796637600) nor an ISO-8601 time "
                                             f"(2026-12-07T10:00:00Z)") from None
        return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time")
    return value


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The ``expire`` subcommand of ``python -m serving gallery``."""
    expire = commands.add_parser("expire", help="remove the items whose timestamp is older than an age")
    expire.add_argument("directory", type=Path)
    expire.add_argument("--older-than", type=age_argument, required=True, metavar="AGE",
                        help="the retention age: a whole number and m, h or d (90m, 12h, 30d)")
    expire.add_argument("--now", type=time_argument, default=None, metavar="TIME",
                        help="the time the age counts back from (Unix seconds or ISO-8601; default: now)")
    expire.add_argument("--dry-run", action="store_true", help="count what would be removed; change nothing")
    expire.add_argument("--audit-log", type=Path, default=None, metavar="PATH",
                        help="append a record of the run to this audit trail (the server's --audit-log)")


def expire_gallery(directory: Path, older_than_s: float, *, now: float | None = None, dry_run: bool = False,
                   audit_log: Path | None = None, label: str = "") -> ExpiryReport:
    """Remove the items of the gallery in ``directory`` stamped before ``now - older_than_s``, durably.

    Args:
        directory: a saved gallery.
        older_than_s: the retention age in seconds.
        now: Unix seconds (default: the current time).
        dry_run: only count (the gallery is opened read-only and no lock is taken).
        audit_log: an audit trail to append the run's record to (not for a dry run).
        label: the age as the operator wrote it, for the audit record.

    Returns:
        The run's :class:`~serving.runtime.expiry.ExpiryReport` (for a dry run: what would be removed).

    Raises:
        UserError: the gallery is written by another process (exit 2), damaged (exit 2), missing, or the audit
            log cannot be opened (before anything is removed) or written (after: the message says it was removed).
    """
    from index import Gallery
    from index.errors import CorruptGalleryError, GalleryError, GalleryLockedError, describe_holder

    now = time.time() if now is None else float(now)
    cutoff = now - float(older_than_s)
    trail = None
    if audit_log is not None and not dry_run:
        try:  # opened first: a run that could not be audited changes nothing
            trail = AuditLog(audit_log)
        except AuditError as exc:
            raise UserError(f"{exc}; nothing was removed") from None
    try:
        try:
            gallery = Gallery.load(directory, read_only=dry_run, claim=not dry_run)
        except GalleryLockedError as exc:
            raise UserError(f"cannot expire items of {directory}: it is open for writing by "
                            f"{describe_holder(exc.holder)}; stop that process first, or let the server expire "
                            f"items itself (--expire-older-than); nothing was removed",
                            exit_code=EXIT_REFUSED) from None
        except CorruptGalleryError as exc:
            raise UserError(f"damaged: {exc}; nothing was removed", exit_code=EXIT_DAMAGED) from None
        except GalleryError as exc:
            raise UserError(f"{exc}; nothing was removed") from None
        try:
            report = select_expired(gallery, cutoff)
            if report.removed and not dry_run:
                with gallery.transaction():
                    gallery.remove(report.removed)
                    gallery.save(directory)
        except OSError as exc:
            raise UserError(f"cannot save {directory} ({exc.strerror or exc}); nothing was removed") from None
        except GalleryError as exc:  # e.g. saved by another writer meanwhile (the save refuses; undone)
            raise UserError(f"{exc}; nothing was removed") from None
        finally:
            gallery.close()
        if dry_run:
            return report
        logger.info("expired %s: %s (items stamped before %s)", directory, report.summary(), iso(cutoff))
        if trail is not None:
            fields = report.audit_fields("gallery expire", LOCAL_KEY, os_user=_os_user(),
                                         gallery=str(directory), older_than=label or f"{older_than_s:g} s",
                                         now=iso(now))
            try:
                trail.append(fields)
            except AuditError as exc:
                raise UserError(f"{report.summary()} in {directory}, but the audit record was not written: "
                                f"{exc}") from None
        return report
    finally:
        if trail is not None:
            trail.close()


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (a bare container)
        return None


def run(args: argparse.Namespace) -> str:
    """Run ``expire`` from parsed arguments; returns the line to print."""
    report = expire_gallery(args.directory, parse_age(args.older_than), now=args.now, dry_run=args.dry_run,
                            audit_log=args.audit_log, label=args.older_than)
    cutoff = f"items stamped before {iso(report.cutoff)}"
    if args.dry_run:
        return (f"dry run: {args.directory}: would have {report.summary()} ({cutoff} would be removed); "
                f"nothing was changed")
    return f"ok: {args.directory}: {report.summary()} ({cutoff} were removed)"
