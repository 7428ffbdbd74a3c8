"""Log records as text lines or as one JSON object per line, with the request id where there is one.

Container log collectors (Fluent Bit, Vector, Loki's promtail, Cloud Logging) parse a JSON object per line
into fields without a regex per service; ``--log-format json`` (``XMREID_LOG_FORMAT=json``) gives them that,
for our loggers and uvicorn's alike. Each object has ``ts`` (UTC, RFC 3339 with milliseconds), ``level``,
``logger``, ``message``, ``request_id`` when the record was logged while a request was being handled, and
``exc_info`` (the formatted traceback) when there is one. ``--log-format text`` (the default) keeps the
``time level logger: message`` lines, with ``[request_id]`` appended when there is one.

The request id reaches records through a :class:`contextvars.ContextVar` that
:class:`serving.api.middleware.RequestContext` sets for the request's task: uvicorn's access line and
anything our routes log carry it; work handed to a thread pool does not (``run_in_executor`` does not
copy the context), which is right for the model thread, whose batches mix requests.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from collections.abc import Callable
from typing import Any

#: The id of the request the current task is handling (None outside requests).
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("xmreid_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(request_suffix)s"
FORMATS = ("text", "json")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (and ``record.request_suffix`` for the text format) from the context."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = getattr(record, "request_id", None) or request_id_var.get()
        record.request_id = rid
        record.request_suffix = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside the message are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a log call's argument that JSON cannot encode must not lose the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter for ``text`` or ``json``.

    Raises:
        ValueError: another format (the message lists the valid ones).
    """
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}; valid formats: {', '.join(FORMATS)}")


def configure(log_format: str = "text", level: int | str = logging.INFO) -> Callable[[], None]:
    """Point the root logger at one stderr handler with the chosen format.

    Replaces the handler an earlier call installed (``python -m serving`` configures from the environment
    first, then ``serve`` from its validated settings); handlers someone else added (a test runner's) stay.

    Args:
        log_format: ``text`` or ``json``.
        level: the root level.

    Returns:
        A function that restores the root logger's previous handlers and level (``serve`` called in-process,
        e.g. by a test, leaves logging as it found it).
    """
    root = logging.getLogger()
    before, before_level = list(root.handlers), root.level
    handler = logging.StreamHandler()
    handler.setFormatter(make_formatter(log_format))
    handler.addFilter(RequestIdFilter())
    handler._xmreid = True  # type: ignore[attr-defined]  # ours: the next configure() replaces it
    for old in before:
        if getattr(old, "_xmreid", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)

    def restore() -> None:
        root.removeHandler(handler)
        for old in before:
            if old not in root.handlers:
                root.addHandler(old)
        root.setLevel(before_level)

    return restore


def uvicorn_log_config(base: dict[str, Any], log_format: str) -> dict[str, Any]:
    """uvicorn's ``log_config`` with our formatter and request-id filter on its handlers.

    Args:
        base: uvicorn's config (a deep copy of ``uvicorn.config.LOGGING_CONFIG``), changed in place.
        log_format: ``text`` keeps uvicorn's own formatters (coloured, its access-line layout); ``json``
            replaces them with :class:`JsonFormatter`.

    Returns:
        ``base``.
    """
    base.setdefault("filters", {})["request_id"] = {"()": "serving.core.logs.RequestIdFilter"}
    if log_format == "json":
        base.setdefault("formatters", {})["json"] = {"()": "serving.core.logs.JsonFormatter"}
    for handler in base.get("handlers", {}).values():
        handler.setdefault("filters", []).append("request_id")
        if log_format == "json":
            handler["formatter"] = "json"
    return base
