"""``GET /gallery/{id}/thumbnail``, the source resolver behind it, and the HTML pages.

Every traversal case puts a *real, readable JPEG* at the place the attack points to, so a resolver that
let it through would answer 200 with that image: the tests would fail, not pass by accident.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from serving.core.paths import SourceNotFoundError, UnsafeSourceError, check_relative, resolve_source

JPEG_MAGIC = b"\xff\xd8\xff"


def write_jpeg(path: Path, height: int = 40, width: int = 20, seed: int = 0) -> np.ndarray:
    """A smooth random-colour JPEG (smooth so JPEG error stays small in content comparisons)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return image


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable image"
    return image


def assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# ----------------------------------------------------------------------------- the resolver (no server)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ with an image, a sibling 'root-private/' and an 'outside/' folder, each holding a real JPEG."""
    root = tmp_path / "root"
    write_jpeg(root / "cam1" / "0001" / "a.jpg")
    write_jpeg(tmp_path / "root-private" / "secret.jpg", seed=1)
    write_jpeg(tmp_path / "outside" / "secret.jpg", seed=2)
    return {"root": root, "base": tmp_path}


def test_relative_source_inside_the_root_resolves_to_its_real_path(tree) -> None:
    root = tree["root"]
    assert resolve_source("cam1/0001/a.jpg", [root]) == Path(os.path.realpath(root / "cam1/0001/a.jpg"))
    # Windows separators in a stored source mean the same relative path.
    assert resolve_source("cam1\\0001\\a.jpg", [root]).name == "a.jpg"


@pytest.mark.parametrize("source", ["../outside/secret.jpg", "../../etc/passwd", "cam1/../../outside/secret.jpg",
                                    "cam1/../cam1/0001/a.jpg", "..\\outside\\secret.jpg"])
def test_dot_dot_is_refused_even_when_it_would_stay_inside(tree, source: str) -> None:
    with pytest.raises(UnsafeSourceError, match=r"\.\."):
        resolve_source(source, [tree["root"]])


def test_absolute_sources_are_refused_even_when_they_point_into_the_root(tree) -> None:
    inside = str(tree["root"] / "cam1" / "0001" / "a.jpg")
    for source in (inside, "/etc/passwd", str(tree["base"] / "outside" / "secret.jpg"), "C:\\Windows\\win.ini",
                   "\\\\server\\share\\x.jpg"):
        with pytest.raises(UnsafeSourceError, match="absolute"):
            resolve_source(source, [tree["root"]])


@pytest.mark.parametrize("source", ["", "   ", "cam1/a\x00.jpg"])
def test_empty_or_nul_sources_are_refused(tree, source: str) -> None:
    with pytest.raises(UnsafeSourceError):
        check_relative(source)


def test_symlinks_leaving_the_root_are_refused(tree) -> None:
    root, base = tree["root"], tree["base"]
    (root / "escape.jpg").symlink_to(base / "outside" / "secret.jpg")           # a file link out
    (root / "linkdir").symlink_to(base / "outside", target_is_directory=True)  # a folder link out
    # A prefix sibling: "/x/root-private" starts with "/x/root" as a string but is not inside it.
    (root / "prefix.jpg").symlink_to(base / "root-private" / "secret.jpg")
    for source in ("escape.jpg", "linkdir/secret.jpg", "prefix.jpg"):
        with pytest.raises(UnsafeSourceError, match="outside the image roots"):
            resolve_source(source, [root])


def test_symlinks_within_the_root_and_a_symlinked_root_are_followed(tree) -> None:
    root, base = tree["root"], tree["base"]
    (root / "alias.jpg").symlink_to(root / "cam1" / "0001" / "a.jpg")
    assert resolve_source("alias.jpg", [root]) == Path(os.path.realpath(root / "cam1/0001/a.jpg"))
    linked_root = base / "root-link"
    linked_root.symlink_to(root, target_is_directory=True)
    assert resolve_source("cam1/0001/a.jpg", [linked_root]) == Path(os.path.realpath(root / "cam1/0001/a.jpg"))


def test_missing_files_folders_and_no_roots_are_not_found(tree) -> None:
    root = tree["root"]
    for source, roots in (("cam1/0001/gone.jpg", [root]), ("cam1/0001", [root]), ("cam1/0001/a.jpg", []),
                          ("cam1/0001/a.jpg", [tree["base"] / "no-such-root"])):
        with pytest.raises(SourceNotFoundError):
            resolve_source(source, roots)


def test_a_path_changing_while_it_is_resolved_is_not_found(tree, monkeypatch) -> None:
    """realpath raises when a component stops being a link between its lstat and readlink (EINVAL) or vanishes
    (ENOENT): a race with whoever swaps the folder, answered as a missing file (404), never a 500."""
    import errno

    def racing(path, *args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument", path)

    monkeypatch.setattr(os.path, "realpath", racing)
    with pytest.raises(SourceNotFoundError):
        resolve_source("cam1/0001/a.jpg", [tree["root"]])


def test_several_roots_are_tried_in_order(tree, tmp_path: Path) -> None:
    second = tmp_path / "second"
    write_jpeg(second / "only-here.jpg")
    found = resolve_source("only-here.jpg", [tree["root"], second])
    assert found == Path(os.path.realpath(second / "only-here.jpg"))


# ----------------------------------------------------------------------------- the endpoint


@pytest.fixture
def crafted(tmp_path: Path, serving_embedder, make_client):
    """A server over an in-memory gallery whose metadata holds good, missing, broken and hostile sources."""
    from index import Gallery

    root = tmp_path / "images"
    base = tmp_path
    originals = {"ok": write_jpeg(root / "cam1" / "ok.jpg", 60, 30, seed=3),
                 "big": write_jpeg(root / "cam2" / "big.jpg", 1200, 600, seed=4)}
    write_jpeg(base / "outside" / "secret.jpg", seed=5)
    (root / "escape.jpg").symlink_to(base / "outside" / "secret.jpg")
    (root / "linkdir").symlink_to(base / "outside", target_is_directory=True)
    (root / "notimage.jpg").write_text("this is not a jpeg")
    sources = {"ok": "cam1/ok.jpg", "big": "cam2/big.jpg", "dotdot": "../outside/secret.jpg",
               "passwd": "../../../../../../etc/passwd", "absolute": str(base / "outside" / "secret.jpg"),
               "abs_inside": str(root / "cam1" / "ok.jpg"), "escape": "escape.jpg", "linkdir": "linkdir/secret.jpg",
               "missing": "cam1/gone.jpg", "notimage": "notimage.jpg", "none": None}
    gallery = Gallery.create(int(serving_embedder.dim), fingerprint=serving_embedder.fingerprint)
    vectors = np.random.default_rng(0).standard_normal((len(sources), int(serving_embedder.dim))).astype(np.float32)
    meta = [{"camera": 1, **({"source": s} if s is not None else {})} for s in sources.values()]
    ids = dict(zip(sources, (int(i) for i in gallery.add(vectors, meta))))

    def client(**settings):
        settings.setdefault("image_roots", [root])
        return make_client(embedder=serving_embedder, gallery_obj=gallery, **settings)

    return {"ids": ids, "client": client, "originals": originals, "root": root}


def test_thumbnail_is_a_jpeg_of_the_item_no_larger_than_asked(crafted) -> None:
    client = crafted["client"]()
    ok, big = crafted["ids"]["ok"], crafted["ids"]["big"]
    r = client.get(f"/gallery/{ok}/thumbnail")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and r.content.startswith(JPEG_MAGIC)
    # Smaller than the default 256: sent at its own size, not enlarged; same pixels up to JPEG error.
    thumb = decode(r.content)
    assert thumb.shape == crafted["originals"]["ok"].shape
    assert np.abs(thumb.astype(int) - crafted["originals"]["ok"].astype(int)).mean() < 4.0

    # Tolerances: JPEG error (quality 85, chroma subsampled) dominates; at 16x8 every pixel is an edge.
    for size, expected, tolerance in ((None, (256, 128), 3.0), (100, (100, 50), 3.0), (16, (16, 8), 10.0)):
        params = {} if size is None else {"size": size}
        r = client.get(f"/gallery/{big}/thumbnail", params=params)
        assert r.status_code == 200, r.text
        thumb = decode(r.content).astype(int)
        assert thumb.shape[:2] == expected
        # The right image, shrunk: compare with a plain full-resolution INTER_AREA resize of the original
        # (the server may decode at 1/2..1/8 scale first), and check another image is far further away.
        reference = cv2.resize(crafted["originals"]["big"], expected[::-1], interpolation=cv2.INTER_AREA)
        other = cv2.resize(crafted["originals"]["ok"], expected[::-1], interpolation=cv2.INTER_AREA)
        error = np.abs(thumb - reference).mean()
        assert error < tolerance
        assert np.abs(thumb - other).mean() > 3 * error


def test_configured_max_side_bounds_the_default_and_the_range(crafted) -> None:
    client = crafted["client"](thumbnail_max_side=48)
    big = crafted["ids"]["big"]
    r = client.get(f"/gallery/{big}/thumbnail")
    assert r.status_code == 200
    assert max(decode(r.content).shape[:2]) == 48
    for bad in (49, 15, 0, -3):
        body = assert_error(client.get(f"/gallery/{big}/thumbnail", params={"size": bad}), 422, "invalid_size")
        assert "between 16 and 48" in body["detail"]


def test_gallery_files_obey_the_pixel_limits_but_not_the_upload_byte_limit(crafted) -> None:
    big = crafted["ids"]["big"]
    assert (crafted["root"] / "cam2" / "big.jpg").stat().st_size > 1024
    # Uploads may be capped small; the operator's own (larger) gallery files are still shown...
    assert crafted["client"](max_upload_bytes=1024).get(f"/gallery/{big}/thumbnail").status_code == 200
    # ...but a decompression bomb in an image folder is refused like one in an upload.
    body = assert_error(crafted["client"](max_pixels=100_000).get(f"/gallery/{big}/thumbnail"), 404,
                        "unreadable_image")
    assert "1200" in body["detail"] or "600x1200" in body["detail"]


def test_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(tmp_path: Path) -> None:
    import errno
    from pathlib import PurePosixPath

    from serving.api.thumbnails import open_source

    write_jpeg(tmp_path / "outside.jpg")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "resolved.jpg").symlink_to(tmp_path / "outside.jpg")
    with pytest.raises(OSError) as info:
        open_source(tmp_path / "root", PurePosixPath("resolved.jpg"))
    assert info.value.errno == errno.ELOOP


def test_caching_headers_and_conditional_get(crafted) -> None:
    client = crafted["client"]()
    url = f"/gallery/{crafted['ids']['ok']}/thumbnail"
    first = client.get(url)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert "max-age=" in first.headers["cache-control"] and "private" in first.headers["cache-control"]
    assert client.get(url).headers["etag"] == etag  # stable for an unchanged file
    assert client.get(url, params={"size": 32}).headers["etag"] != etag  # another size, another tag
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        not_modified = client.get(url, headers={"If-None-Match": header})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert not_modified.headers["etag"] == etag
    assert client.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
    # A changed file gets a new tag, so a browser's cached copy is replaced.
    path = crafted["root"] / "cam1" / "ok.jpg"
    write_jpeg(path, 60, 30, seed=9)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag


@pytest.mark.parametrize("name", ["dotdot", "passwd", "absolute", "abs_inside", "escape", "linkdir"])
def test_hostile_sources_in_metadata_are_refused_with_403(crafted, name: str) -> None:
    client = crafted["client"]()
    r = client.get(f"/gallery/{crafted['ids'][name]}/thumbnail")
    body = assert_error(r, 403, "source_outside_image_roots")
    assert str(crafted["root"]) not in body["detail"]  # no server paths in answers
    assert JPEG_MAGIC not in r.content and b"root:" not in r.content


@pytest.mark.parametrize("name, error", [("missing", "source_not_found"), ("notimage", "unreadable_image"),
                                             ("none", "no_source")])
def test_unusable_items_are_404_json(crafted, name: str, error: str) -> None:
    client = crafted["client"]()
    assert_error(client.get(f"/gallery/{crafted['ids'][name]}/thumbnail"), 404, error)


def test_unknown_ids_and_a_server_without_roots_are_404_json(crafted) -> None:
    client = crafted["client"]()
    assert_error(client.get("/gallery/987654/thumbnail"), 404, "not_found")
    rootless = crafted["client"](image_roots=[])
    assert_error(rootless.get(f"/gallery/{crafted['ids']['ok']}/thumbnail"), 404, "no_image_roots")


@pytest.mark.parametrize("path", ["/gallery/..%2F..%2F..%2Fetc%2Fpasswd/thumbnail", "/gallery/%2e%2e/thumbnail",
                                  "/gallery/0%2F..%2F..%2Fetc%2Fpasswd/thumbnail", "/gallery/-1/thumbnail",
                                  "/gallery/..%5C..%5Cetc%5Cpasswd/thumbnail", "/gallery/1e3/thumbnail",
                                  "/gallery/99999999999999999999999/thumbnail"])
def test_traversal_through_the_url_never_reads_a_file(crafted, path: str) -> None:
    client = crafted["client"]()
    r = client.get(path)
    # Ids are integers: anything else never reaches the file system. It is either no route (404) or a
    # path-parameter validation error (422), always in the API's JSON error shape.
    assert r.status_code in (404, 422), (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    assert set(r.json()) >= {"error", "detail"}
    assert b"root:" not in r.content and JPEG_MAGIC not in r.content


def test_thumbnails_of_the_indexed_gallery_come_from_its_image_root(make_client, tiny_gallery, sysu_root) -> None:
    from index import Gallery

    gallery = Gallery.load(tiny_gallery)
    first = int(gallery.ids()[0])
    (item,) = gallery.get([first])
    client = make_client(image_roots=[sysu_root])
    r = client.get(f"/gallery/{first}/thumbnail", params={"size": 64})
    assert r.status_code == 200, r.text
    original = cv2.imread(str(sysu_root / item["source"]), cv2.IMREAD_COLOR)
    thumb = decode(r.content)
    assert max(thumb.shape[:2]) <= 64
    h, w = original.shape[:2]
    scale = min(1.0, 64 / max(h, w))
    assert thumb.shape[:2] == (min(64, round(h * scale)), min(64, round(w * scale)))


# ----------------------------------------------------------------------------- the pages


def test_pages_and_assets_are_served_with_a_strict_policy(make_client) -> None:
    client = make_client()
    for path, marker in (("/", 'id="search-form"'), ("/gallery", 'id="camera-table"')):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert marker in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    for asset in ("app.js", "common.js", "gallery.js", "style.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and r.content, asset
    # POST /gallery (the API) and GET /gallery (the page) share a path but not a method.
    assert client.post("/gallery", data={"metadata": "[]"}).headers["content-type"].startswith("application/json")
    assert client.get("/gallery/stats").json()["size"] > 0


def test_page_scripts_never_write_html(repo_root: Path) -> None:
    # Gallery metadata is client input; the pages must only ever put it on screen as text.
    for script in (repo_root / "serving" / "static").glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{script.name} uses {sink}"
    for page in (repo_root / "serving" / "static").glob("*.html"):
        assert "<script>" not in page.read_text() and " on" + "click=" not in page.read_text()


# -- the image root recorded by the indexer (issue 22) --------------------------------------------------------


def test_indexed_gallery_shows_thumbnails_without_image_root(tiny_gallery, sysu_root, make_client, caplog) -> None:
    """``python -m serving index --images DIR`` records DIR; ``serve`` without --image-root reads from it."""
    import json as _json
    import logging

    manifest = _json.loads((tiny_gallery / "manifest.json").read_text())
    assert manifest["notes"]["image_root"] == str(sysu_root.resolve())
    with caplog.at_level(logging.INFO, logger="serving.runtime.state"):
        client = make_client(image_roots=[])
    assert any("indexed from" in r.getMessage() and str(sysu_root.resolve()) in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    first = int(client.app.state.runtime.gallery.ids()[0])
    r = client.get(f"/gallery/{first}/thumbnail")
    assert r.status_code == 200, r.text
    assert r.content.startswith(JPEG_MAGIC)


def test_recorded_root_is_still_a_confinement(crafted, serving_embedder, make_client) -> None:
    from index import Gallery

    gallery = Gallery.create(int(serving_embedder.dim), fingerprint=serving_embedder.fingerprint)
    gallery.set_note("image_root", str(crafted["root"]))
    vectors = np.ones((2, int(serving_embedder.dim)), np.float32)
    ok, dotdot = (int(i) for i in gallery.add(vectors, [{"camera": 1, "source": "cam1/ok.jpg"},
                                                        {"camera": 1, "source": "../outside/secret.jpg"}]))
    client = make_client(embedder=serving_embedder, gallery_obj=gallery, image_roots=[])
    assert client.get(f"/gallery/{ok}/thumbnail").status_code == 200
    assert_error(client.get(f"/gallery/{dotdot}/thumbnail"), 403, "source_outside_image_roots")


def test_recorded_root_that_is_gone_is_no_image_roots(serving_embedder, make_client, tmp_path) -> None:
    from index import Gallery

    gallery = Gallery.create(int(serving_embedder.dim), fingerprint=serving_embedder.fingerprint)
    gallery.set_note("image_root", str(tmp_path / "moved-away"))
    (item,) = gallery.add(np.ones((1, int(serving_embedder.dim)), np.float32), [{"camera": 1, "source": "a.jpg"}])
    client = make_client(embedder=serving_embedder, gallery_obj=gallery, image_roots=[])
    assert_error(client.get(f"/gallery/{int(item)}/thumbnail"), 404, "no_image_roots")


def test_notes_survive_save_and_load(tmp_path) -> None:
    from index import Gallery

    gallery = Gallery.create(4)
    gallery.set_note("image_root", "/data/cams")
    gallery.add(np.ones((1, 4), np.float32), [{"camera": 1}])
    gallery.save(tmp_path / "g")
    gallery.close()
    reopened = Gallery.load(tmp_path / "g", read_only=True)
    assert reopened.notes == {"image_root": "/data/cams"}
    with pytest.raises(TypeError, match="strings"):
        reopened.set_note("image_root", 3)  # type: ignore[arg-type]
