"""Fault injection for saves: make the n-th write step of a save fail with ``OSError(ENOSPC)``.

The steps are the primitives a gallery save writes through (``index.persist``): creating the temporary
directory, FAISS's ``write_index``, the SQLite copy, every ``fsync``, the ``rename`` of the data directory,
the manifest's temporary file, and the ``os.replace`` that commits. A dry run counts them, so a test can
fail each in turn ("at every write step of a save") without knowing their order.
"""

from __future__ import annotations

import builtins
import errno
import os
from collections.abc import Callable
from typing import Any

import faiss

from index import persist
from index.metadata import MetadataStore

COMMIT_STEP = "os.replace"  # the manifest replace: a failure after it leaves the new version committed


class SaveFaults:
    """Wrap the write primitives; ``fail_on = n`` makes the n-th call (1-based) raise ``error``.

    Args:
        monkeypatch: pytest's fixture (the wrappers go away with the test).
        error: the errno to raise (ENOSPC: a full disk).
    """

    def __init__(self, monkeypatch: Any, error: int = errno.ENOSPC) -> None:
        self.calls: list[str] = []
        self.fail_on: int | None = None
        self.fail_label: str | None = None
        self.error = error
        self.failed: str | None = None
        for owner, name, label in ((os, "mkdir", "os.mkdir"), (os, "fsync", "os.fsync"), (os, "rename", "os.rename"),
                                   (os, "replace", "os.replace"), (faiss, "write_index", "faiss.write_index"),
                                   (MetadataStore, "save", "MetadataStore.save")):
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), label))
        real_open = builtins.open

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if any(c in mode for c in "wax+"):
                self._step("open for writing")
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(persist, "open", open_, raising=False)  # persist's own file writes

    def _wrap(self, real: Callable[..., Any], label: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self._step(label)
            return real(*args, **kwargs)
        return wrapper

    def _step(self, label: str) -> None:
        self.calls.append(label)
        if self.fail_label is not None and label == self.fail_label:
            self.fail_label = None
            self.failed = label
            raise OSError(self.error, os.strerror(self.error))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            self.failed = label
            raise OSError(self.error, os.strerror(self.error))

    def count(self, run: Callable[[], Any]) -> list[str]:
        """The steps ``run`` goes through, in order (nothing fails)."""
        self.calls, self.fail_on = [], None
        run()
        steps, self.calls = self.calls, []
        return steps

    def arm(self, n: int | None = None, label: str | None = None) -> None:
        """Fail the n-th step from now, or the next step called ``label`` (e.g. ``"faiss.write_index"``)."""
        self.calls, self.fail_on, self.fail_label, self.failed = [], n, label, None

    def disarm(self) -> None:
        self.fail_on = self.fail_label = None
