"""Opening a gallery file beneath its image root: no symbolic link on the way, no escape, even in a race."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from serving.core import beneath
from serving.core.beneath import EscapeError, open_beneath

MODES = [pytest.param(True, id="openat2"), pytest.param(False, id="walk")]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cam1" / "0001").mkdir(parents=True)
    outside.mkdir()
    (root / "cam1" / "0001" / "a.jpg").write_bytes(b"inside")
    (outside / "a.jpg").write_bytes(b"SECRET")
    return root, outside


def _read(root: Path, relative: str, use: bool) -> bytes:
    fd = open_beneath(root, relative, use_openat2=use)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


@pytest.mark.parametrize("use", MODES)
def test_a_plain_path_opens(tree, use: bool) -> None:
    root, _ = tree
    assert _read(root, "cam1/0001/a.jpg", use) == b"inside"


@pytest.mark.parametrize("use", MODES)
def test_links_anywhere_on_the_way_are_refused(tree, use: bool) -> None:
    root, outside = tree
    (root / "cam2").symlink_to(outside, target_is_directory=True)
    (root / "cam1" / "0001" / "link.jpg").symlink_to(outside / "a.jpg")
    (root / "cam1" / "0001" / "inner.jpg").symlink_to(root / "cam1" / "0001" / "a.jpg")  # even inside the root
    for relative in ("cam2/a.jpg", "cam1/0001/link.jpg", "cam1/0001/inner.jpg"):
        with pytest.raises(EscapeError):
            _read(root, relative, use)


@pytest.mark.parametrize("use", MODES)
def test_bad_paths_and_non_files(tree, use: bool) -> None:
    root, _ = tree
    for relative in ("../outside/a.jpg", "/etc/passwd", ""):
        with pytest.raises(EscapeError):
            _read(root, relative, use)
    with pytest.raises(FileNotFoundError):
        _read(root, "cam1/0001/none.jpg", use)
    with pytest.raises(IsADirectoryError):
        _read(root, "cam1/0001", use)
    os.mkfifo(root / "cam1" / "0001" / "fifo.jpg")  # must not hang in open()
    with pytest.raises(IsADirectoryError, match="not a regular file"):
        _read(root, "cam1/0001/fifo.jpg", use)


def test_the_kernel_call_is_used_where_it_exists() -> None:
    if beneath._syscall is None:
        pytest.skip("not Linux: only the walk exists")  # never on CI (Linux)
    root = Path(__file__).parent
    fd = open_beneath(root, Path(__file__).name, use_openat2=True)
    os.close(fd)


@pytest.mark.parametrize("use", MODES)
def test_a_folder_swapped_for_a_link_in_a_race_never_serves_outside(tree, use: bool) -> None:
    """One thread swaps ``cam1`` for a link to the outside folder and back; reads never see the secret."""
    root, outside = tree
    (outside / "0001").mkdir()
    (outside / "0001" / "a.jpg").write_bytes(b"SECRET")
    real, parked, link = root / "cam1", root / "cam1.real", root / "cam1.link"
    link.symlink_to(outside, target_is_directory=True)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(real, parked)
            os.rename(link, real)
            os.rename(real, link)
            os.rename(parked, real)

    thread = threading.Thread(target=swap)
    thread.start()
    seen = {"inside": 0, "refused": 0, "other": 0}
    try:
        for _ in range(3000):
            try:
                data = _read(root, "cam1/0001/a.jpg", use)
            except EscapeError:
                seen["refused"] += 1
            except OSError:  # the folder was mid-rename (missing, or a link found after the walk's own check)
                seen["other"] += 1
            else:
                assert data == b"inside", "a file outside the root was served"
                seen["inside"] += 1
    finally:
        stop.set()
        thread.join()
    assert seen["inside"] > 0
