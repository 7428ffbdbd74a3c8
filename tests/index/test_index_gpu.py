"""GPU placement: the real thing where faiss-gpu sees a GPU, and the fall-back to the CPU everywhere.

The fall-back tests stand in for a broken GPU stack by replacing FAISS's GPU entry points (absent
from faiss-cpu) with ones that fail the way real ones do, e.g. "no kernel image is available" from
a wheel built without the card's architecture.
"""

from __future__ import annotations

import logging
import types

import numpy as np
import pytest
from index_helpers import brute_force, clustered, meta

import index.gpu as gpu
from index import Gallery, GalleryError

needs_gpu = pytest.mark.skipif(gpu.gpu_count() == 0,
                               reason="needs faiss-gpu and a CUDA GPU (faiss.get_num_gpus() == 0 here)")


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """Pretend FAISS has one GPU; the test supplies ``index_cpu_to_gpu``."""
    monkeypatch.setattr(gpu, "gpu_count", lambda: 1)
    monkeypatch.setattr(gpu.faiss, "StandardGpuResources", lambda: object(), raising=False)
    monkeypatch.setattr(gpu.faiss, "GpuClonerOptions", lambda: types.SimpleNamespace(useFloat16=False),
                        raising=False)
    monkeypatch.setattr(gpu, "_warned", False)

    def install(clone) -> None:
        monkeypatch.setattr(gpu.faiss, "index_cpu_to_gpu", clone, raising=False)
    return install


def test_gpu_move_failure_warns_once_and_stays_on_cpu(fake_gpu, caplog: pytest.LogCaptureFixture) -> None:
    def no_kernel(*_args):
        raise RuntimeError("CUDA error 209 no kernel image is available for execution on the device")
    fake_gpu(no_kernel)
    x, q = clustered(200, 16, seed=1, n_queries=3)
    with caplog.at_level(logging.WARNING, logger="index.gpu"):
        first = Gallery.create(16, "flat")
        second = Gallery.create(16, "ivf_flat", train_size=100)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no kernel image" in warnings[0].getMessage()
    assert first.device == "cpu"
    first.add(x, meta(np.ones(200)))
    np.testing.assert_array_equal(first.search(q, 5)[1], brute_force(x, q, 5)[1])
    second.add(x, meta(np.ones(200)))  # trains, then the GPU copy fails at the first search: CPU answers
    assert second.search(q, 5)[1].shape == (3, 5) and second.device == "cpu"


def test_index_type_without_gpu_version_stays_on_cpu(fake_gpu, caplog: pytest.LogCaptureFixture) -> None:
    fake_gpu(lambda _res, _dev, index, _opts: index)  # FAISS's cloner returns a CPU copy for such types
    with caplog.at_level(logging.WARNING, logger="index.gpu"):
        gallery = Gallery.create(8, "flat")
    assert gallery.device == "cpu" and "no GPU version" in caplog.text


def test_explicit_gpu_without_gpu_is_an_error() -> None:
    if gpu.gpu_count():
        pytest.skip("a GPU is present")
    with pytest.raises(GalleryError, match="FAISS sees no GPU"):
        Gallery.create(8, device="gpu")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("kind, options", [("flat", {}), ("flat", {"gpu_fp16": True}), ("flat_fp16", {}),
                                           ("ivf_flat", {"train_size": 500})])
def test_gpu_search_matches_cpu_and_saves_a_cpu_index(kind: str, options: dict, tmp_path) -> None:
    x, q = clustered(3000, 64, seed=4, n_queries=20)
    cameras = np.arange(3000) % 3 + 1
    on_gpu = Gallery.create(64, kind, device="gpu", **options)
    on_cpu = Gallery.create(64, kind, device="cpu", **{k: v for k, v in options.items() if k != "gpu_fp16"})
    for g in (on_gpu, on_cpu):
        g.add(x, meta(cameras))
    assert on_gpu.device == "gpu"
    _, ids_gpu = on_gpu.search(q, 10)
    _, ids_cpu = on_cpu.search(q, 10)
    assert np.mean(ids_gpu == ids_cpu) >= 0.95  # fp16 / different summation order swap near-ties
    _, filtered = on_gpu.search(q, 10, cameras=2)
    assert np.all(filtered >= 0) and np.all(cameras[filtered] == 2)
    on_gpu.remove(np.arange(100))
    assert not np.isin(on_gpu.search(q, 10)[1], np.arange(100)).any()
    on_gpu.save(tmp_path / "g")
    reloaded = Gallery.load(tmp_path / "g", device="cpu")
    assert reloaded.device == "cpu" and len(reloaded) == 2900
