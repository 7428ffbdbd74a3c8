"""``python -m serving index --engine ray`` builds the gallery ``--engine local`` builds; Milvus galleries from the CLI.

The Ray test starts one private local Ray through the command itself (2 CPUs, no dashboard: ~20-30 s on
a 2-core machine), so everything it checks is packed into that one run: it resumes a gallery the local
engine started (skipping what is there, as a rerun must), adds the rest, reports the corrupt file, and
the result must equal a single local run: same ids, same metadata, same vectors up to float rounding.
"""

from __future__ import annotations

import builtins
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from ci_policy import require

from index import Gallery
from index.persist import INDEX_FILE, read_manifest
from serving.indexing import main as index_main
from xmreid.errors import UserError

# ONNX Runtime may pick different kernels for different batch compositions and thread counts; the
# descriptors are compared after the gallery's L2 normalisation, where 1e-4 is far below any
# retrieval-relevant difference (neighbouring identities differ by > 1e-2 in cosine).
VECTOR_ATOL = 1e-4


@pytest.fixture
def tree(sysu_root: Path, tmp_path: Path) -> Path:
    """Three test identities, RGB cameras 1 and 2 (24 crops), plus a truncated JPEG in camera 2."""
    root = tmp_path / "sysu"
    pids = sorted(int(t) for t in (sysu_root / "exp" / "test_id.txt").read_text().replace("\n", ",").split(",")
                  if t.strip())[:3]
    shutil.copytree(sysu_root / "exp", root / "exp")
    for cam in (1, 2):
        for pid in pids:
            shutil.copytree(sysu_root / f"cam{cam}" / f"{pid:04d}", root / f"cam{cam}" / f"{pid:04d}")
    good = (root / f"cam2/{pids[0]:04d}/0001.jpg").read_bytes()
    (root / f"cam2/{pids[0]:04d}/0099.jpg").write_bytes(good[: len(good) // 2])
    return root


def _vectors(directory: Path) -> dict[int, np.ndarray]:
    """Stored (normalised) vectors by id, read from a saved FAISS gallery's index file."""
    index = faiss.read_index(str(directory / read_manifest(directory)["data_dir"] / INDEX_FILE))
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    return {int(i): index.reconstruct(int(i)) for i in ids}


def _run(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert index_main([*args, "--no-progress"]) == 0
    return capsys.readouterr().out


def test_ray_engine_builds_the_same_gallery_as_the_local_engine(tree: Path, tiny_onnx: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    require("ray", reason="--engine ray needs the optional ray[data] extra")
    base = ["--model", str(tiny_onnx), "--images", str(tree), "--batch-size", "4"]
    local, mixed = tmp_path / "local", tmp_path / "mixed"
    _run([*base, "--gallery", str(local), "--cameras", "1,2"], capsys)
    # The local engine indexes camera 1, then Ray resumes the same gallery with cameras 1 and 2.
    _run([*base, "--gallery", str(mixed), "--cameras", "1"], capsys)
    out = _run([*base, "--gallery", str(mixed), "--cameras", "1,2", "--engine", "ray", "--ray-num-cpus", "2",
                "--ray-embedders", "1"], capsys)
    cam1, cam2 = (len([p for p in (tree / f"cam{c}").rglob("*.jpg") if p.name != "0099.jpg"]) for c in (1, 2))
    assert f"already in the gallery {cam1}" in out and f"indexed {cam2} image(s)" in out
    assert "skipped cam2/" in out and "0099.jpg" in out  # the truncated file is reported, not fatal

    want, got = Gallery.load(local), Gallery.load(mixed)
    assert len(want) == len(got) == cam1 + cam2
    np.testing.assert_array_equal(got.ids(), want.ids())
    assert got.get(got.ids()) == want.get(want.ids())  # same sources, cameras, labels, in the same id order
    want_v, got_v = _vectors(local), _vectors(mixed)
    assert want_v.keys() == got_v.keys()
    for item_id, vector in want_v.items():
        np.testing.assert_allclose(got_v[item_id], vector, atol=VECTOR_ATOL, err_msg=f"id {item_id}")


def test_ray_engine_without_ray_names_the_extra(tree: Path, tiny_onnx: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UserError, match=r"pip install 'xmreid\[ray\]'"):
        index_main(["--model", str(tiny_onnx), "--images", str(tree), "--gallery", str(tmp_path / "g"),
                    "--engine", "ray", "--no-progress"])
    assert not (tmp_path / "g").exists()


def test_local_engine_indexes_into_a_milvus_gallery(tree: Path, tiny_onnx: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    require("pymilvus", reason="--milvus-uri needs the optional pymilvus + milvus-lite extra")
    require("milvus_lite", reason="Milvus Lite (milvus-lite) is not installed")
    base = ["--model", str(tiny_onnx), "--images", str(tree), "--batch-size", "8"]
    _run([*base, "--gallery", str(tmp_path / "faiss")], capsys)
    milvus_dir = tmp_path / "milvus"
    out = _run([*base, "--gallery", str(milvus_dir), "--milvus-uri", str(milvus_dir / "milvus.db")], capsys)
    n = len(Gallery.load(tmp_path / "faiss"))
    assert f"now {n} items" in out
    out = _run([*base, "--gallery", str(milvus_dir)], capsys)  # a rerun resumes from the Milvus collection
    assert f"already in the gallery {n}" in out and "indexed 0 image(s)" in out

    want, got = Gallery.load(tmp_path / "faiss"), Gallery.load(milvus_dir)
    assert got.stats()["backend"] == "milvus" and len(got) == n
    assert got.get(got.ids()) == want.get(want.ids())
    queries = np.stack(list(_vectors(tmp_path / "faiss").values()))[:5]
    want_s, want_i = want.search(queries, n, cameras=[2])
    got_s, got_i = got.search(queries, n, cameras=[2])
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)
    got.close()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(milvus_dir / "milvus.db"))


def test_ray_options_are_checked(tree: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    from serving.indexing.ray import index_images_ray

    with pytest.raises(UserError, match="--ray-embedders"):
        index_images_ray(tiny_onnx, tree, tmp_path / "g", embedders=0)
    with pytest.raises(UserError, match="is not a directory"):
        index_images_ray(tiny_onnx, tmp_path / "missing", tmp_path / "g")


def _cuda_for_onnxruntime() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and shutil.which("nvidia-smi") is not None


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_for_onnxruntime(), reason="needs a CUDA GPU and onnxruntime-gpu (CUDA provider)")
def test_ray_engine_uses_gpu_actors_when_the_cluster_has_gpus(tree: Path, tiny_onnx: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    require("ray", reason="--engine ray needs the optional ray[data] extra")
    from serving.indexing import index_images
    from serving.indexing.ray import index_images_ray

    index_images(tiny_onnx, tree, tmp_path / "local", batch_size=4, show_progress=False)
    with caplog.at_level("INFO", logger="serving.indexing.ray"):
        summary = index_images_ray(tiny_onnx, tree, tmp_path / "ray", batch_size=4, num_cpus=2, show_progress=False)
    assert any("1 GPU(s)" in r.getMessage() and "'num_gpus': 1" in r.getMessage() for r in caplog.records)
    assert summary.indexed == len(Gallery.load(tmp_path / "local"))
    want_v, got_v = _vectors(tmp_path / "local"), _vectors(tmp_path / "ray")
    assert want_v.keys() == got_v.keys()
    for item_id, vector in want_v.items():  # CUDA vs CPU kernels: a looser bound than CPU vs CPU
        np.testing.assert_allclose(got_v[item_id], vector, atol=2e-3, err_msg=f"id {item_id}")


class _FlakyRay:
    """A stand-in for the ``ray`` module whose first local start fails as Ray's raylet wait does."""

    def __init__(self, error: str) -> None:
        self.error, self.inits, self.shutdowns = error, 0, 0

    def is_initialized(self) -> bool:
        return False

    def init(self, **_: object) -> None:
        self.inits += 1
        if self.inits == 1:
            raise Exception(self.error)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_local_ray_that_times_out_at_startup_is_started_once_more() -> None:
    from serving.indexing.ray import _start_ray

    flaky = _FlakyRay("The current node timed out during startup. This could happen because ...")
    assert _start_ray(flaky, None, 2) is True
    assert (flaky.inits, flaky.shutdowns) == (2, 1)
    other = _FlakyRay("some other failure")
    with pytest.raises(Exception, match="some other failure"):
        _start_ray(other, None, 2)
    assert (other.inits, other.shutdowns) == (1, 0)
