"""The server process's garbage-collector policy: the heap it has built by the time it serves is frozen.

Why: the model, the gallery, the app and every imported module make a heap of objects that live as long
as the process, and CPython's full (generation-2) collection walks all of them every few seconds, a pause
of the event loop and the model thread alike that shows in the p99. ``gc.freeze()`` moves them out of the
collector's generations (they are still freed by reference counting), so full collections walk only what
serving allocates (benchmarks/results/gc_pause.md measures both).

Only ``python -m serving serve`` freezes (:func:`freeze`, called once everything is loaded): an app
created in someone else's process (tests, a notebook) leaves that process's collector alone. Frozen
objects that become cyclic garbage are not collected while frozen, and a replaced gallery is such
garbage (its SQLite connection sits in a reference cycle), so a reload calls :func:`refreeze`, which
collects them and freezes what is live again.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

_frozen = False


def freeze() -> None:
    """Collect, then freeze everything that is live (call when the server has loaded what it serves)."""
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = True
    logger.debug("froze %d objects out of the garbage collector's generations", gc.get_freeze_count())


def refreeze() -> None:
    """After replacing long-lived objects (a gallery reload): collect what was frozen and is now garbage,
    freeze what is live again. Nothing happens in a process that never called :func:`freeze`."""
    if not _frozen:
        return
    gc.unfreeze()
    freeze()


def unfreeze() -> None:
    """Give the frozen objects back to the collector (tests; a process that stops serving)."""
    global _frozen
    gc.unfreeze()
    _frozen = False
