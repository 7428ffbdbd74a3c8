"""Fixtures for driving the operator page in a real headless Chromium against a real uvicorn server.

The browser is Debian's ``chromium`` package driven by Playwright from PyPI (never ``playwright install``,
which downloads its own browser build from the internet). Without either, every test here is skipped with
the reason. The server is ``python -m serving serve`` in a subprocess on a free loopback port, on the
session's tiny model and gallery, with ``--image-root`` set so thumbnails can be read.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ci_policy import require

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("XMREID_CHROMIUM", "/usr/bin/chromium")
# Quiet, offline, container-friendly: no sandbox (no user namespaces in CI containers), no GPU, and none of
# the background traffic (updates, sync, safe browsing) that would try to reach the internet.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
UPLOAD_LIMIT = 32 * 1024  # the live server's max upload; the test crops are ~5 KB, the "too large" file is more


@dataclass(frozen=True)
class LiveServer:
    base: str
    process: subprocess.Popen
    upload_limit: int | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Poll /readyz until it answers 200; fail with the server's stderr if it dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready in time")


@contextmanager
def serve(model: Path, gallery: Path, *extra: str) -> Iterator[LiveServer]:
    """Run ``python -m serving serve`` on a free loopback port until the block ends."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XMREID_API_KEY": "", "XMREID_ALLOW_UNAUTHENTICATED_CHANGES": "true"}
    cmd = [sys.executable, "-m", "serving", "serve", "--model", str(model), "--gallery", str(gallery),
           "--port", str(port), "--log-level", "warning", "--no-save", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(base, proc)
        limit = extra[extra.index("--max-upload-bytes") + 1] if "--max-upload-bytes" in extra else None
        yield LiveServer(base=base, process=proc, upload_limit=int(limit) if limit else None)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def chromium_executable() -> str | None:
    """``$XMREID_CHROMIUM`` (default /usr/bin/chromium) if it is an executable, else ``chromium`` on PATH."""
    if os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") if "XMREID_CHROMIUM" not in os.environ else None


@contextmanager
def launch_chromium(executable: str | None = None) -> Iterator[Any]:
    """A headless Chromium from the system package, through Playwright's sync API."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable or chromium_executable(),
                                             args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The headless browser of one test module, or a skip that says what is missing.

    Module scope, not session: while Playwright's sync API is running it keeps its asyncio loop marked as
    running in the main thread, and any later test that calls ``asyncio.run`` would fail. Closing it when
    the module ends gives the loop back.
    """
    require("playwright.sync_api", reason="Playwright is not installed (pip install playwright; "
                                          "the browser itself comes from Debian's chromium package)")
    executable = chromium_executable()
    if executable is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set XMREID_CHROMIUM)")
    with launch_chromium(executable) as instance:
        yield instance


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser tab (own cookies and cache) at a desktop size."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()


@pytest.fixture
def start_server(browser: Any) -> Any:
    """``start_server(model, gallery, *options)``: a context manager running another live server."""
    return serve


@pytest.fixture(scope="module")
def live_server(browser: Any, tiny_onnx: Path, tiny_gallery: Path, sysu_root: Path) -> Iterator[LiveServer]:
    """The tiny model and gallery behind a real uvicorn, thumbnails read from the synthetic SYSU tree."""
    with serve(tiny_onnx, tiny_gallery, "--image-root", str(sysu_root),
               "--max-upload-bytes", str(UPLOAD_LIMIT)) as server:
        yield server
