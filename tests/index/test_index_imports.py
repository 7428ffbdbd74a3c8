"""What importing ``index`` costs: the exception types come without FAISS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _run(code: str, repo_root: Path) -> subprocess.CompletedProcess:
    # A fresh interpreter: this one imported FAISS long ago. cwd: the checkout's ``index``, not an installed one.
    return subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)


def test_index_errors_does_not_import_faiss(repo_root: Path) -> None:
    done = _run("import index.errors, sys; assert 'faiss' not in sys.modules, 'faiss was imported'", repo_root)
    assert done.returncode == 0, done.stderr


def test_the_public_names_still_import_from_index(repo_root: Path) -> None:
    done = _run("import index; from index import Gallery, KINDS, EXACT_KINDS, GalleryError; "
                "assert Gallery.__module__ == 'index.gallery' and 'flat' in KINDS and index.EXACT_KINDS == EXACT_KINDS; "
                "from index import *", repo_root)
    assert done.returncode == 0, done.stderr
