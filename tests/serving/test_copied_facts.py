"""Facts that serving keeps a copy of because the room rules forbid it to import ``training``.

``serving`` may import ``index`` and the torch-free artifact contract only (ARCHITECTURE.md §2), so where
``training`` owns a fact serving also needs, serving keeps an equal copy and this file checks the two agree.
"""

from __future__ import annotations

from serving.indexing.crawl import IMAGE_SUFFIXES as SERVING_SUFFIXES
from training.data.sysu import IMAGE_SUFFIXES as TRAINING_SUFFIXES


def test_image_suffixes_agree() -> None:
    assert SERVING_SUFFIXES == TRAINING_SUFFIXES


def test_one_l2_normalisation_everywhere() -> None:
    import numpy as np

    from index.validate import normalized, unit_rows
    from serving.runtime.ranking import normalise
    from training.features import l2_normalize

    assert normalise is unit_rows
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-13, 0.0]], dtype=np.float64)
    expected = np.array([[0.6, 0.8], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    for fn in (unit_rows, normalise, l2_normalize):
        out = fn(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-7)
    np.testing.assert_allclose(normalized(x[:1], 2, "q"), expected[:1])


def test_atomic_write_leaves_no_temporary_file_and_normal_permissions(tmp_path) -> None:
    import os

    import pytest

    from xmreid.atomic import atomic_write, atomic_write_bytes

    target = atomic_write_bytes(tmp_path / "a.bin", b"abc")
    assert target.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def broken(fh) -> None:
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"abc" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
