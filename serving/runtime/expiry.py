"""Retention: remove the gallery items stamped before a cut-off, offline or on a schedule in the server.

The rule, shared by ``python -m serving gallery expire`` (:mod:`serving.indexing.expire`) and the server's
``--expire-older-than`` schedule (:class:`ScheduledExpiry`): an item whose ``timestamp`` is strictly before
the cut-off (now minus the age) is removed; one stamped exactly at the cut-off is kept (it is not *older*
than the age); an item without a timestamp is kept and counted, since nothing says how old it is.

In the server a run is one change through the live gallery's durable path, as ``DELETE /gallery`` is: the
removal and its save are one step under the server's mutation lock (all of a run's items are removed in
one save, or none is and the run is logged as refused), searches go on meanwhile. Each run logs one INFO
line with its counts, and a run that removed items appends one record to the audit trail (key
``retention``) after its save.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.core.ages import parse_age
from serving.core.audit_log import AuditError, AuditWriter
from serving.core.config import Settings
from serving.runtime.durable import ChangeNotSaved, ChangeRefused, DurableGallery

logger = logging.getLogger(__name__)

#: The audit record's ``key`` for the server's scheduled runs (no API key asked for them).
RETENTION_KEY = "retention"


def iso(seconds: float) -> str:
    """Unix seconds as an ISO-8601 UTC time (``2026-11-07T10:00:00Z``)."""
    text = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class ExpiryReport:
    """What a run found (and, unless a dry run, removed).

    Attributes:
        cutoff: Unix seconds; items stamped strictly before it are expired.
        removed: the expired ids, sorted.
        kept: items stamped at or after the cut-off.
        unstamped: items without a timestamp (kept).
    """

    cutoff: float
    removed: list[int] = field(default_factory=list)
    kept: int = 0
    unstamped: int = 0

    def summary(self) -> str:
        """``removed 3, kept 5, kept 2 without a time``."""
        return f"removed {len(self.removed)}, kept {self.kept}, kept {self.unstamped} without a time"

    def audit_fields(self, endpoint: str, key: str, **parameters: Any) -> dict[str, Any]:
        """The audit record of the run: who, the parameters, the cut-off and the ids removed with the counts."""
        return {"endpoint": endpoint, "key": key, "client": None, **parameters, "cutoff": iso(self.cutoff),
                "removed": list(self.removed), "removed_count": len(self.removed), "kept": self.kept,
                "kept_without_time": self.unstamped}


def select_expired(gallery: Any, cutoff: float) -> ExpiryReport:
    """Which items of ``gallery`` (an ``index.Gallery``) a run at ``cutoff`` removes, and what it keeps.

    The caller holds off other writers (the directory's lock offline, the mutation lock in the server), so
    the counts and the ids describe one state of the gallery.
    """
    removed = [int(i) for i in gallery.stamped_before(cutoff)]
    unstamped = int(gallery.unstamped_count())
    return ExpiryReport(cutoff, removed, len(gallery) - len(removed) - unstamped, unstamped)


def expire_served(durable: DurableGallery, cutoff: float) -> ExpiryReport:
    """Remove the served gallery's items stamped before ``cutoff``, saved before returning (or none removed).

    The same path as ``DELETE /gallery`` (:meth:`DurableGallery.remove`), for many ids in one save: the
    removal runs in the gallery's transaction and is undone if its save fails. Nothing is saved when no item
    is expired.

    Raises:
        ChangeRefused: the server is read-only, not ready, or lost the gallery's lock or sequence (nothing removed).
        ChangeNotSaved: the save failed otherwise (nothing removed).
    """
    reports: list[ExpiryReport] = []

    def select(gallery: Any) -> list[int]:
        reports.append(select_expired(gallery, cutoff))
        return list(reports[-1].removed)

    durable.remove_selected(select)
    return reports[-1]


class ScheduledExpiry:
    """The server's retention task: a run at start, then one every ``every_s`` seconds, until :meth:`stop`.

    Args:
        runtime: the server's :class:`~serving.runtime.state.Runtime` (its durable gallery, its counts).
        older_than_s: the age in seconds; items stamped before ``clock() - older_than_s`` are removed.
        every_s: seconds between runs.
        audit: the server's audit writer, or None without an audit trail.
        clock: Unix seconds now (a test's fake clock).
    """

    def __init__(self, runtime: Any, older_than_s: float, every_s: float, audit: AuditWriter | None = None, *,
                 clock: Callable[[], float] = time.time, label: str = "") -> None:
        self.runtime = runtime
        self.older_than_s = float(older_than_s)
        self.every_s = float(every_s)
        self.audit = audit
        self.clock = clock
        self.label = label or f"{older_than_s:g} s"
        self.runs = 0
        self.last: ExpiryReport | None = None
        self._task: asyncio.Task[None] | None = None
        self._run: asyncio.Future[ExpiryReport] | None = None  # the run in its thread, if one is going on

    @classmethod
    def from_settings(cls, settings: Settings, runtime: Any, audit: AuditWriter | None) -> ScheduledExpiry | None:
        """The task ``settings`` ask for, started; None when ``expire_older_than`` is unset."""
        if settings.expire_older_than is None:
            return None
        task = cls(runtime, parse_age(settings.expire_older_than), parse_age(settings.expire_every), audit,
                   label=settings.expire_older_than)
        logger.info("retention: items stamped more than %s ago are removed at start and every %s%s",
                    settings.expire_older_than, settings.expire_every,
                    "" if audit is not None else " (no audit trail configured)")
        task.start()
        return task

    def start(self) -> None:
        """Schedule the runs on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        """Cancel the schedule; a run in progress is waited for (its save is not cut short)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._run is not None:
            with contextlib.suppress(Exception):
                await self._run

    async def _loop(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.every_s)

    async def run_once(self) -> ExpiryReport | None:
        """One run: expire, log one line, audit it; returns its report (None when it was refused or failed)."""
        cutoff = self.clock() - self.older_than_s
        try:
            # Shielded: cancelling the schedule must not leave the thread saving behind a closing server.
            self._run = asyncio.ensure_future(asyncio.to_thread(self._expire, cutoff))
            report = await asyncio.shield(self._run)
        except ChangeRefused as exc:
            logger.warning("retention: nothing removed: %s", exc.detail)
            return None
        except ChangeNotSaved as exc:
            logger.error("retention: nothing removed: %s", exc)
            return None
        except Exception:  # a bug must not end the schedule; the next run tries again
            logger.exception("retention: the run failed; nothing removed")
            return None
        self.runs += 1
        self.last = report
        logger.info("retention: %s (items stamped before %s, older than %s)", report.summary(), iso(cutoff),
                    self.label)
        if report.removed and self.audit is not None:
            fields = report.audit_fields("retention expire", RETENTION_KEY, older_than=self.label)
            try:
                await self.audit.write(fields)
            except AuditError as exc:  # the removal is saved: say so, never undo it
                logger.error("retention: removed %d items, but their audit record was not written: %s",
                             len(report.removed), exc)
        return report

    def _expire(self, cutoff: float) -> ExpiryReport:
        try:
            return expire_served(self.runtime.durable, cutoff)
        finally:
            self.runtime.refresh_cameras()  # the served counts (/readyz, the size metric) follow the change
