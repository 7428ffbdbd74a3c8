"""serving.core.heap: the serve process freezes its start-up heap, and a reload collects what it replaced."""

from __future__ import annotations

import gc
import weakref

import pytest

from serving.core import heap


class _Node:
    """A cyclic object with a weak reference to watch (the shape of a replaced gallery's SQLite connection)."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def frozen():
    heap.freeze()
    try:
        yield
    finally:
        heap.unfreeze()


def test_refreeze_is_a_no_op_in_a_process_that_never_froze() -> None:
    before = gc.get_freeze_count()
    heap.refreeze()
    assert gc.get_freeze_count() == before == 0


def test_frozen_cycles_survive_collections_until_refreeze(frozen) -> None:
    node = _Node()
    heap.freeze()  # node is now in the permanent generation, like the gallery a server loaded
    assert gc.get_freeze_count() > 0
    watch = weakref.ref(node)
    del node
    gc.collect()
    assert watch() is not None  # a frozen cycle is not collected ...
    heap.refreeze()
    assert watch() is None  # ... until a reload gives it back to the collector
    assert gc.get_freeze_count() > 0  # and what is live is frozen again


def test_unfreeze_gives_everything_back(frozen) -> None:
    heap.unfreeze()
    assert gc.get_freeze_count() == 0
