"""The audit trail of the HTTP API: one record per search, thumbnail view and gallery change, before the answer.

A record names who asked (the API key's name, never the key; the client address; the request id), what was
asked (the endpoint, the parameters and the SHA-256 of each query image, never the image) and what was given
(the returned gallery ids with their scores, the thumbnail's id, the ids added or removed). It is on disk
(:class:`serving.core.audit_log.AuditWriter`) before the route returns its answer; when it cannot be written
the request is refused with 503 ``audit_unavailable`` (``--audit-failure refuse``, the default) or answered
with an error in the log (``serve``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from starlette.requests import Request

from serving.api.errors import ApiError
from serving.core.audit_log import AuditError, AuditLog, AuditWriter
from serving.core.config import Settings

logger = logging.getLogger(__name__)


def sha256(data: bytes) -> str:
    """The hex SHA-256 of a query image, as the audit trail records it."""
    return hashlib.sha256(data).hexdigest()


def ranked(hits: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """``[[gallery id, score], ...]`` of a ranked answer (the compact form the trail keeps)."""
    return [[int(h["gallery_id"]), round(float(h["score"]), 6)] for h in hits]


class Auditor:
    """Writes the API's audit records; a no-op when the server runs without ``--audit-log``.

    Args:
        writer: the group-committing writer, or None for no audit trail.
        refuse_on_failure: answer 503 when a record cannot be written (else log and answer).
    """

    def __init__(self, writer: AuditWriter | None, *, refuse_on_failure: bool = True) -> None:
        self.writer = writer
        self.refuse_on_failure = refuse_on_failure

    @classmethod
    def open(cls, settings: Settings) -> Auditor:
        """The auditor the settings ask for (opens the log; :class:`AuditError` when it cannot be)."""
        if settings.audit_log is None:
            return cls(None)
        log = AuditLog(settings.audit_log, max_bytes=settings.audit_max_bytes)
        logger.info("audit trail: %s (record %d is the last one written)", settings.audit_log, log.last_seq)
        return cls(AuditWriter(log), refuse_on_failure=settings.audit_failure == "refuse")

    @property
    def enabled(self) -> bool:
        """True when records are written."""
        return self.writer is not None

    async def record(self, request: Request, *, images: Sequence[bytes] = (), committed: bool = False,
                     **fields: Any) -> None:
        """Append the record of ``request`` with ``fields``; ``images`` are recorded by their SHA-256.

        ``results``, when given, is a list of ranked answers (lists of hit dicts), kept as ``[[id, score], ...]``.
        ``committed``: the request already changed the gallery, so a failed record is logged, never a 503 (the
        answer must say what happened).

        Raises:
            ApiError: 503 ``audit_unavailable`` when the record could not be written and the server refuses then.
        """
        if self.writer is None:
            return
        state = request.scope.get("state", {})
        client = request.client.host if request.client else None
        record = {"endpoint": f"{request.method} {request.url.path}", "key": state.get("api_key_name"),
                  "client": client, "request_id": state.get("request_id"), **fields}
        if images:
            record["queries"] = [sha256(data) for data in images]
        if "results" in record:
            record["results"] = [ranked(hits) for hits in record["results"]]
        try:
            await self.writer.write(record)
        except AuditError as exc:
            logger.error("audit record of %s not written: %s", record["endpoint"], exc)
            if self.refuse_on_failure and not committed:
                raise ApiError(503, "audit_unavailable", "the audit record of this request could not be written, "
                                                         "so it is not answered; retry later",
                               headers={"Retry-After": "5"}) from None

    def close(self) -> None:
        """Finish the queued records and close the log."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def auditor(request: Request) -> Auditor:
    """The app's :class:`Auditor` (a no-op one before the lifespan opened the log)."""
    return getattr(request.app.state, "auditor", None) or _OFF


_OFF = Auditor(None)
