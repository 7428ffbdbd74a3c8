"""serving.indexing / serving.indexing.crawl / serving.indexing.demo_hint: the batch gallery-indexing job end to end."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.embedders import Embedder, load_embedder
from serving.indexing import gallery_metadata, index_images, main
from serving.indexing.crawl import crawl_generic, crawl_sysu, read_manifest
from serving.indexing.demo_hint import hint
from serving.indexing.demo_hint import main as demo_hint_main
from xmreid.errors import UserError

RGB_CAMERAS = (1, 2, 4, 5)


def _ids(root: Path, name: str) -> list[int]:
    return [int(t) for t in (root / "exp" / name).read_text().replace("\n", ",").split(",") if t.strip()]


def _all_metadata(gallery) -> list[dict]:
    return gallery_metadata(gallery)


@pytest.fixture(scope="module")
def embedder(tiny_onnx: Path) -> Embedder:
    return load_embedder(tiny_onnx)


@pytest.fixture
def small_tree(sysu_root: Path, tmp_path: Path) -> Path:
    """Two test identities of the synthetic tree, cameras 1 and 2 and 3 (IR), plus a corrupt and an empty JPEG."""
    root = tmp_path / "sysu"
    pids = sorted(_ids(sysu_root, "test_id.txt"))[:2]
    shutil.copytree(sysu_root / "exp", root / "exp")
    for cam in (1, 2, 3):
        for pid in pids:
            shutil.copytree(sysu_root / f"cam{cam}" / f"{pid:04d}", root / f"cam{cam}" / f"{pid:04d}")
    good = (root / f"cam1/{pids[0]:04d}/0001.jpg").read_bytes()
    (root / f"cam1/{pids[0]:04d}/0098.jpg").write_bytes(good[: len(good) // 2])  # truncated mid-scan
    (root / f"cam2/{pids[1]:04d}/0099.jpg").write_bytes(b"")
    return root


def _good_images(root: Path, cams: tuple[int, ...]) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for c in cams for p in (root / f"cam{c}").rglob("*.jpg")
                  if p.stat().st_size > 0 and not p.name.startswith("009"))


def test_tiny_gallery_holds_the_test_identities_rgb_images(tiny_gallery: Path, sysu_root: Path,
                                                           tiny_onnx: Path, embedder: Embedder) -> None:
    from index import Gallery

    fingerprint = hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    gallery = Gallery.load(tiny_gallery, fingerprint=fingerprint)
    test_ids = set(_ids(sysu_root, "test_id.txt"))
    expected = {p.relative_to(sysu_root).as_posix() for cam in RGB_CAMERAS for pid in test_ids
                for p in (sysu_root / f"cam{cam}" / f"{pid:04d}").glob("*.jpg")}
    # 12 synthetic identities, 4 images per identity per camera: every test id in each of the 4 RGB cameras.
    assert len(gallery) == len(expected) == len(test_ids) * len(RGB_CAMERAS) * 4
    metadata = _all_metadata(gallery)
    assert {m["source"] for m in metadata} == expected
    for m in metadata:
        cam, pid = m["source"].split("/")[:2]
        assert m["camera"] == int(cam[3:]) and m["camera"] in RGB_CAMERAS
        assert m["person_label"] == int(pid) and m["person_label"] in test_ids
        assert m["timestamp"] is None
    # The stored vector of an image is that image's descriptor: searching with it finds it first.
    from training.data.images import read_image

    probe = sorted(metadata, key=lambda m: m["source"])[5]
    query = embedder.embed(read_image(sysu_root / probe["source"], embedder.height, embedder.width)[None])
    scores, ids = gallery.search(query, 1)
    assert gallery.get(ids[0])[0]["source"] == probe["source"] and scores[0, 0] == pytest.approx(1.0, abs=1e-4)


def test_end_to_end_skips_bad_files_then_resumes_without_duplicates(small_tree: Path, tmp_path: Path,
                                                                    tiny_onnx: Path, capsys) -> None:
    from index import Gallery

    out = tmp_path / "gallery"
    rc = main(["--model", str(tiny_onnx), "--images", str(small_tree), "--gallery", str(out), "--split", "test",
               "--batch-size", "3", "--workers", "2", "--save-every", "1", "--no-progress"])
    assert rc == 0
    report = capsys.readouterr().out
    bad_truncated = next(small_tree.glob("cam1/*/0098.jpg")).relative_to(small_tree).as_posix()
    bad_empty = next(small_tree.glob("cam2/*/0099.jpg")).relative_to(small_tree).as_posix()
    assert f"skipped {bad_truncated}: truncated_image" in report
    assert f"skipped {bad_empty}: empty_file" in report
    good = _good_images(small_tree, (1, 2))  # default cameras of a SYSU tree: RGB only, so no cam3
    assert f"indexed {len(good)} image(s)" in report
    gallery = Gallery.load(out)
    assert sorted(m["source"] for m in _all_metadata(gallery)) == good

    again = index_images(tiny_onnx, small_tree, out, split="test", show_progress=False)
    assert (again.indexed, again.already_indexed, again.gallery_size) == (0, len(good), len(good))
    assert sorted(s for s, _ in again.skipped) == sorted([bad_truncated, bad_empty])  # still reported


class _DiesAfter(Embedder):
    """Wraps an embedder and raises on the n-th call, like a process killed mid-run."""

    def __init__(self, inner: Embedder, calls: int) -> None:
        super().__init__()
        self.inner, self.calls = inner, calls
        for name in ("name", "height", "width", "dim", "fingerprint", "path"):
            setattr(self, name, getattr(inner, name))

    def _run(self, batch_nchw: np.ndarray) -> np.ndarray:
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("killed")
        return self.inner.embed(np.ascontiguousarray(batch_nchw.transpose(0, 2, 3, 1)))


def test_a_crashed_run_keeps_saved_batches_and_a_rerun_completes(small_tree: Path, tmp_path: Path,
                                                                 embedder: Embedder) -> None:
    from index import Gallery

    out = tmp_path / "gallery"
    with pytest.raises(RuntimeError, match="killed"):
        index_images(_DiesAfter(embedder, calls=2), small_tree, out, cameras=[1, 2, 3], batch_size=4,
                     save_every=1, workers=1, show_progress=False)
    # Two batches of 4 were embedded and saved before the crash: the first 8 files in crawl order,
    # less the truncated one among them.
    first_two_batches = [it.source for it in crawl_sysu(small_tree, [1, 2, 3])[:8]]
    saved = [s for s in first_two_batches if not s.endswith(("0098.jpg", "0099.jpg"))]
    assert len(saved) == 7 and sorted(m["source"] for m in _all_metadata(Gallery.load(out))) == sorted(saved)
    done = index_images(embedder, small_tree, out, cameras=[1, 2, 3], batch_size=4, show_progress=False)
    good = _good_images(small_tree, (1, 2, 3))
    assert done.already_indexed == len(saved) and done.indexed == len(good) - len(saved)
    sources = [m["source"] for m in _all_metadata(Gallery.load(out))]
    assert sorted(sources) == good and len(set(sources)) == len(sources)


def test_csv_manifest(small_tree: Path, tmp_path: Path, embedder: Embedder) -> None:
    from index import Gallery

    files = sorted(small_tree.glob("cam1/*/000[1-3].jpg"))[:3]
    lines = ["path,camera,person_label,timestamp,site"]
    lines += [f"{f.relative_to(small_tree).as_posix()},11,p{i},2024-05-01T12:00:0{i},north" for i, f in enumerate(files)]
    lines.append("missing/nothere.jpg,11,,1700000000,south")
    lines.append(f"{files[0].relative_to(small_tree).as_posix()},11,p0,,north")  # listed twice
    lines.append(f"{files[0].resolve()},12,,,")  # absolute path, another camera: excluded by --cameras
    manifest = tmp_path / "gallery.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "gallery"
    summary = index_images(embedder, small_tree, out, manifest=manifest, cameras=[11], show_progress=False)
    assert summary.indexed == len(files) == 3
    reasons = dict(summary.skipped)
    assert reasons["missing/nothere.jpg"].startswith("cannot read file")
    assert "more than once" in reasons[files[0].relative_to(small_tree).as_posix()]
    rows = sorted(_all_metadata(Gallery.load(out)), key=lambda m: m["source"])
    assert [m["person_label"] for m in rows] == ["p0", "p1", "p2"]
    assert rows[1]["timestamp"] == pytest.approx(1714564801.0)  # 2024-05-01T12:00:01 UTC
    assert all(m["camera"] == 11 and m["extra"] == {"site": "north"} for m in rows)

    items = read_manifest(manifest, small_tree)
    assert items[-1].source == files[0].resolve().relative_to(small_tree.resolve()).as_posix()
    assert items[3].person_label is None and items[3].timestamp == 1700000000.0
    bad = tmp_path / "bad.csv"
    bad.write_text("file,cam\nx.jpg,1\n")
    with pytest.raises(UserError, match="lacks column"):
        read_manifest(bad, small_tree)
    bad.write_text("path,camera\nx.jpg,left\n")
    with pytest.raises(UserError, match=r"bad.csv:2: camera 'left'"):
        read_manifest(bad, small_tree)


def test_generic_camera_folders(small_tree: Path, tmp_path: Path, embedder: Embedder) -> None:
    from index import Gallery

    root = tmp_path / "site"
    jpeg = next(small_tree.glob("cam1/*/0001.jpg")).read_bytes()
    for rel in ["gate07/2024-05-01/a.jpg", "gate07/b.JPG", "door3/c.jpg", "lobby/d.jpg", "e.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg)
    items, skipped = crawl_generic(root)
    assert [(i.source, i.camera) for i in items] == [("door3/c.jpg", 3), ("gate07/2024-05-01/a.jpg", 7),
                                                     ("gate07/b.JPG", 7)]
    assert sorted(s for s, _ in skipped) == ["e.jpg", "lobby/d.jpg"]
    summary = index_images(embedder, root, tmp_path / "g", cameras=[7], show_progress=False)
    assert summary.indexed == 2 and {m["camera"] for m in _all_metadata(Gallery.load(tmp_path / "g"))} == {7}
    with pytest.raises(UserError, match="needs a SYSU-MM01 tree"):
        index_images(embedder, root, tmp_path / "g2", split="test", show_progress=False)


def test_user_mistakes_are_user_errors(tiny_gallery: Path, tiny_checkpoint: Path, sysu_root: Path,
                                       tiny_onnx: Path, tmp_path: Path) -> None:
    copy = tmp_path / "gallery"
    shutil.copytree(tiny_gallery, copy)
    with pytest.raises(UserError, match="new --gallery directory"):  # another model's descriptors
        index_images(tiny_checkpoint, sysu_root, copy, backend="torch", show_progress=False)
    with pytest.raises(UserError, match="comma-separated integers"):
        main(["--model", str(tiny_onnx), "--images", str(sysu_root), "--gallery", str(copy), "--cameras", "1,x"])
    with pytest.raises(UserError, match="not a directory"):
        main(["--model", str(tiny_onnx), "--images", str(tmp_path / "nope"), "--gallery", str(copy)])
    with pytest.raises(UserError, match="--batch-size"):
        index_images(tiny_onnx, sysu_root, copy, batch_size=0, show_progress=False)


def test_demo_hint(sysu_root: Path, tmp_path: Path, capsys) -> None:
    text = hint(sysu_root, "0.0.0.0", 8123)
    curl = next(line.strip() for line in text.splitlines() if line.strip().startswith("curl"))
    assert curl.endswith("'http://127.0.0.1:8123/search?top_k=5'")
    path = Path(curl.split("image=@")[1].split(" ")[0])
    assert path.is_file() and path.parts[-3] in {"cam3", "cam6"}
    pid = int(path.parts[-2])
    assert pid == min(_ids(sysu_root, "test_id.txt"))
    assert f"person_label == {pid}" in text
    assert demo_hint_main(["--images", str(sysu_root), "--port", "9000"]) == 0
    assert "127.0.0.1:9000/search" in capsys.readouterr().out
    with pytest.raises(UserError, match="not a SYSU-MM01 tree"):
        hint(tmp_path, "localhost", 8000)


def test_track_ids_from_a_manifest_column_a_folder_level_and_a_sysu_tracks_file(small_tree: Path, tmp_path: Path,
                                                                                 embedder: Embedder) -> None:
    from index import Gallery
    from training.data.synthetic import write_tracks

    files = sorted(small_tree.glob("cam1/*/000[1-3].jpg"))[:3]
    manifest = tmp_path / "tracks.csv"
    manifest.write_text("path,camera,track_id\n" + "".join(
        f"{f.relative_to(small_tree).as_posix()},1,{t}\n" for f, t in zip(files, ["7", "7", "t-2"])))
    assert [i.track_id for i in read_manifest(manifest, small_tree)] == [7, 7, "t-2"]

    root = tmp_path / "site"
    jpeg = files[0].read_bytes()
    for rel in ["gate07/track_1/a.jpg", "gate07/track_1/b.jpg", "gate07/12/c.jpg", "gate07/d.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(jpeg)
    items, skipped = crawl_generic(root, track_level=1)
    assert [(i.source, i.track_id) for i in items] == [("gate07/12/c.jpg", 12), ("gate07/track_1/a.jpg", "track_1"),
                                                       ("gate07/track_1/b.jpg", "track_1")]
    assert [s for s, _ in skipped] == ["gate07/d.jpg"]  # no track folder: skipped, never a silent singleton
    summary = index_images(embedder, root, tmp_path / "g", track_level=1, show_progress=False)
    assert summary.indexed == 3
    gallery = Gallery.load(tmp_path / "g")
    assert gallery.group_counts("camera_track", [(7, "track_1"), (7, 12)]) == {(7, "track_1"): 2, (7, 12): 1}
    with pytest.raises(UserError, match="--track-level must be >= 1"):
        index_images(embedder, root, tmp_path / "g3", track_level=0, show_progress=False)
    with pytest.raises(UserError, match="a SYSU-MM01 tree a tracks.csv"):
        index_images(embedder, small_tree, tmp_path / "g4", track_level=1, show_progress=False)

    pids = sorted(int(p.name) for p in (small_tree / "cam1").iterdir())
    write_tracks(small_tree, "sysu", max(pids), 4, 2)  # every cam/pid of the ids; the tree holds a subset
    lines = (small_tree / "tracks.csv").read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if (small_tree / line.split(",")[0]).is_file()]
    (small_tree / "tracks.csv").write_text("\n".join(kept) + "\n")
    crawled = crawl_sysu(small_tree, cameras=[1])
    assert crawled and all(i.track_id == (i.person_label * 10 + 1) * 1000 + (int(i.path.stem) - 1) // 2
                           for i in crawled if int(i.path.stem) <= 4)


def test_index_with_a_recall_target_tunes_and_saves_it(tiny_onnx, sysu_root, tmp_path, capsys) -> None:
    import json

    from index import Gallery

    gallery_dir = tmp_path / "g"
    rc = main(["--model", str(tiny_onnx), "--images", str(sysu_root), "--gallery", str(gallery_dir),
               "--kind", "hnsw", "--target-recall", "0.9", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tuned: ef_search=" in out and "target 0.900" in out
    tuning = json.loads((gallery_dir / "manifest.json").read_text())["backend_state"]["tuning"]
    assert tuning["target_recall"] == 0.9 and tuning["met"] and tuning["recall"] >= 0.9
    loaded = Gallery.load(gallery_dir)
    assert loaded.stats()["tuning"]["value"] == loaded.stats()["options"]["ef_search"] == tuning["value"]
    loaded.close()


def test_recall_target_refusals(tiny_onnx, sysu_root, tmp_path) -> None:
    from xmreid.errors import UserError

    base = ["--model", str(tiny_onnx), "--images", str(sysu_root), "--no-progress"]
    with pytest.raises(UserError, match="needs an approximate --kind"):
        main([*base, "--gallery", str(tmp_path / "a"), "--target-recall", "0.9"])  # flat: exact
    with pytest.raises(UserError, match=r"must be in \(0, 1\]"):
        main([*base, "--gallery", str(tmp_path / "b"), "--kind", "hnsw", "--target-recall", "1.5"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any indexing
    # ivf_flat below its train_size (1000) searches exactly: indexed and saved, but nothing to tune
    with pytest.raises(UserError, match="indexed and saved .* could not tune it: .*not trained yet"):
        main([*base, "--gallery", str(tmp_path / "c"), "--kind", "ivf_flat", "--target-recall", "0.9"])
    assert (tmp_path / "c" / "manifest.json").is_file()


def test_gallery_tune_command(tiny_onnx, sysu_root, tmp_path, capsys) -> None:
    from serving.indexing.gallery_cli import main as gallery_main

    gallery_dir = tmp_path / "g"
    assert main(["--model", str(tiny_onnx), "--images", str(sysu_root), "--gallery", str(gallery_dir),
                 "--kind", "hnsw", "--no-progress"]) == 0
    capsys.readouterr()
    assert gallery_main(["tune", str(gallery_dir), "--target-recall", "0.95", "--k", "5"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(("ok: ", "warning: ")) and "held-out recall@5" in line and "target 0.950" in line
