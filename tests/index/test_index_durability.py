"""A change and its save succeed together or not at all (``Gallery.transaction``), and retries are idempotent.

The save is failed with ``OSError(ENOSPC)`` at each of its write steps in turn (tests/index/faults.py).
Every time: either the save raised and memory and disk are both as before, or it committed (a failure
after the manifest replace) and both hold the change; a restart (a fresh load) equals memory.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
from faults import COMMIT_STEP, SaveFaults
from index_helpers import clustered

from index import Gallery
from index.errors import GalleryError

DIM = 16
OPTIONS = {"ivf_flat": {"train_size": 100}, "ivf_pq": {"train_size": 200, "m": 4, "nbits": 4}}


def _template(tmp_path: Path, kind: str = "flat") -> tuple[Path, np.ndarray]:
    x, _ = clustered(300, DIM, seed=7)
    gallery = Gallery.create(DIM, kind, fingerprint="fp", **OPTIONS.get(kind, {}))
    gallery.add(x[:250], [{"camera": 1 + i % 3, "source": f"s{i}", "extra": {"i": i}} for i in range(250)])
    gallery.save(tmp_path / "template")
    gallery.close()
    return tmp_path / "template", x


def _state(gallery: Gallery, probe: np.ndarray) -> tuple:
    ids = gallery.ids()
    _, found = gallery.search(probe, 5)
    return ids.tolist(), gallery.get(ids), found.tolist()


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith((".tmp-", ".manifest"))]


@pytest.mark.parametrize("change", ["add", "remove"])
def test_enospc_at_every_write_step_leaves_memory_equal_to_disk(change: str, tmp_path: Path, monkeypatch) -> None:
    template, x = _template(tmp_path)
    faults = SaveFaults(monkeypatch)
    probe = x[240:260]

    def mutate(gallery: Gallery) -> None:
        if change == "add":
            gallery.add(x[250:260], [{"camera": 2, "source": f"new{i}"} for i in range(10)])
        else:
            gallery.remove([3, 241, 249])

    def attempt(gallery: Gallery, target: Path) -> None:
        with gallery.transaction():
            mutate(gallery)
            gallery.save(target)

    scratch = tmp_path / "count"
    shutil.copytree(template, scratch)
    counted = Gallery.load(scratch, claim=True)
    steps = faults.count(lambda: attempt(counted, scratch))
    counted.close()
    assert COMMIT_STEP in steps and len(steps) >= 10, steps
    outcomes = []
    for n in range(1, len(steps) + 1):
        target = tmp_path / f"g{n}"
        shutil.copytree(template, target)
        gallery = Gallery.load(target, claim=True)
        before, next_before = _state(gallery, probe), gallery.stats()["next_id"]
        faults.arm(n)
        try:
            attempt(gallery, target)
            outcome = "saved"
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            outcome = "refused"
        faults.disarm()
        memory = _state(gallery, probe)
        restarted = Gallery.load(target)
        assert _state(restarted, probe) == memory, f"step {n} ({steps[n - 1]}): memory and disk differ"
        if outcome == "refused":
            assert memory == before and gallery.stats()["next_id"] == next_before, f"step {n}: not undone"
            assert gallery.unsaved_changes == 0
        else:
            assert memory != before
        assert _leftovers(target) == [], f"step {n}: leftovers of the failed save"
        outcomes.append((steps[n - 1], outcome))
        gallery.close()
    commit = steps.index(COMMIT_STEP)
    assert all(o == "refused" for _, o in outcomes[:commit + 1]), "\n".join(map(str, outcomes))
    assert all(o == "saved" for _, o in outcomes[commit + 1:]), outcomes  # after the commit: it is on disk


@pytest.mark.parametrize("kind", ["flat", "flat_fp16", "hnsw", "ivf_flat", "ivf_pq"])
def test_an_undone_removal_puts_back_the_same_items(kind: str, tmp_path: Path) -> None:
    template, x = _template(tmp_path, kind)
    gallery = Gallery.load(template)
    probe = x[:40]
    before = _state(gallery, probe)
    with pytest.raises(RuntimeError, match="boom"), gallery.transaction():
        gallery.remove([0, 5, 17, 249])
        assert 5 not in gallery
        raise RuntimeError("boom")
    ids, rows, found = _state(gallery, probe)
    assert (ids, rows) == before[:2]
    agree = np.mean(np.asarray(found) == np.asarray(before[2]))
    assert agree == 1.0 or (kind == "ivf_pq" and agree > 0.9)  # PQ re-encodes the decoded vector


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_an_undone_add_leaves_no_trace_and_no_reused_id_is_hidden(kind: str, tmp_path: Path) -> None:
    template, x = _template(tmp_path, kind)
    gallery = Gallery.load(template)
    with pytest.raises(RuntimeError), gallery.transaction():
        gallery.add(x[250:255], [{"camera": 1}] * 5)
        raise RuntimeError("save failed")
    assert len(gallery) == 250 and gallery.unsaved_changes == 0
    new = gallery.add(x[250:251], [{"camera": 3}])
    # HNSW keeps removed vectors behind tombstones, so the undone ids are not handed out again.
    assert new.tolist() == ([250] if kind == "flat" else [255])
    _, ids = gallery.search(x[250:251], 1)
    assert ids[0, 0] == new[0]


def test_idempotency_keys_replay_and_are_saved_with_their_items(tmp_path: Path) -> None:
    template, x = _template(tmp_path)
    gallery = Gallery.load(template)
    first = gallery.add(x[250:252], [{"camera": 1}] * 2, idempotency_key="k1", request_digest="d1")
    again = gallery.add(x[250:252], [{"camera": 1}] * 2, idempotency_key="k1", request_digest="d1")
    assert again.tolist() == first.tolist() and len(gallery) == 252
    with pytest.raises(GalleryError, match="already used for a different request"):
        gallery.add(x[252:253], [{"camera": 1}], idempotency_key="k1", request_digest="other")
    gallery.save(template)
    reloaded = Gallery.load(template)
    assert reloaded.find_request("k1") == ("d1", first.tolist())
    assert reloaded.add(x[250:252], [{"camera": 1}] * 2, idempotency_key="k1",
                        request_digest="d1").tolist() == first.tolist()
    # An add whose save failed forgets its key: the retry adds for real.
    with pytest.raises(OSError), reloaded.transaction():
        reloaded.add(x[253:254], [{"camera": 1}], idempotency_key="k2", request_digest="d2")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert reloaded.find_request("k2") is None and len(reloaded) == 252
    assert len(reloaded.add(x[253:254], [{"camera": 1}], idempotency_key="k2", request_digest="d2")) == 1
