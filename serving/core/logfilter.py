"""One line per interval for errors that repeat, instead of a flood.

With its file descriptors exhausted, a server logs "Too many open files" with a traceback for every
failed ``accept`` (half a gigabyte in minutes), and an overloaded one logs "Exceeded concurrency
limit." for every refused request. A log that size hides everything else and fills the disk the gallery
is saved to. :class:`RepeatFilter` lets the first record of a kind through (with its traceback), drops the
rest for ``interval_s``, and then lets one through carrying the count of what it dropped.

Only WARNING and above are limited: INFO lines (the access log) are one per request by design.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

_MAX_KINDS = 1024  # bound the memory of the filter itself under a storm of distinct messages


class RepeatFilter(logging.Filter):
    """A handler filter: at most one WARNING+ record per kind per ``interval_s``, then a count.

    A record's kind is its logger, level, message template (not its arguments: ``"accept failed: %s"`` is
    one kind whatever the errno) and exception type.

    Args:
        interval_s: the interval.
        clock: the time source (tests pass a fake).
    """

    def __init__(self, interval_s: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[Any, ...], list[float]] = {}  # kind -> [window start, records dropped]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        exc_type = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else None
        kind = (record.name, record.levelno, str(record.msg), exc_type)
        now = self._clock()
        with self._lock:
            state = self._seen.get(kind)
            if state is None or now - state[0] >= self.interval_s:
                dropped = int(state[1]) if state else 0
                if len(self._seen) >= _MAX_KINDS and state is None:
                    self._seen.clear()
                self._seen[kind] = [now, 0]
                if dropped:
                    record.msg = f"{record.msg} [and {dropped} more like this in the last {self.interval_s:g} s]"
                    record.exc_info = record.exc_text = None  # the first one carried the traceback
                return True
            state[1] += 1
            return False


def install(interval_s: float, loggers: tuple[str, ...] = ("", "uvicorn", "uvicorn.error", "uvicorn.access")) -> None:
    """Add one shared :class:`RepeatFilter` to every handler of ``loggers`` (root included) that lacks one."""
    shared = RepeatFilter(interval_s)
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RepeatFilter) for f in handler.filters):
                handler.addFilter(shared)
