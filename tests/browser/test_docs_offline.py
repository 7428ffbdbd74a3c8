"""Issue 22 in a real browser: ``/docs`` and ``/redoc`` render with every non-loopback request blocked, and the
operator page shows thumbnails of a gallery indexed with ``--images DIR`` when serve gets no ``--image-root``.

Set ``XMREID_SCREENSHOT_DOCS=path.png`` to keep the Swagger UI screenshot.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

# The live-server helper of this folder's conftest.py, loaded under its own name (a plain `import conftest`
# would be ambiguous: tests/conftest.py is a conftest too).
_spec = importlib.util.spec_from_file_location("_browser_conftest", Path(__file__).with_name("conftest.py"))
assert _spec is not None and _spec.loader is not None
_helpers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _helpers  # dataclasses look their module up there
_spec.loader.exec_module(_helpers)
serve = _helpers.serve

pytestmark = pytest.mark.slow

LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
THUMBS_LOADED_JS = """() => {
    const imgs = [...document.querySelectorAll('#results .thumb img')];
    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def rootless_server(browser: Any, tiny_onnx: Path, tiny_gallery: Path):
    """The tiny model and gallery behind a real uvicorn, with no --image-root."""
    with serve(tiny_onnx, tiny_gallery) as server:
        yield server


def _offline(page: Any) -> list[str]:
    """Abort every request that is not to a loopback host; return the list of those attempted."""
    blocked: list[str] = []

    def handle(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    page.route("**/*", handle)
    return blocked


def test_swagger_ui_renders_with_the_network_blocked(page, rootless_server, tmp_path) -> None:
    blocked = _offline(page)
    page.goto(rootless_server.base + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path")
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.innerText.trim())")
    assert "/search" in paths and "/gallery/{item_id}" in [p.replace("\u200b", "") for p in paths], paths
    assert page.inner_text(".swagger-ui .info .title").startswith("xmreid retrieval server")
    shot = tmp_path / "docs.png"
    page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    if os.environ.get("XMREID_SCREENSHOT_DOCS"):
        shutil.copy(shot, os.environ["XMREID_SCREENSHOT_DOCS"])
    assert blocked == [], f"/docs tried to load from outside: {blocked}"


def test_redoc_renders_with_the_network_blocked(page, rootless_server) -> None:
    blocked = _offline(page)
    page.goto(rootless_server.base + "/redoc")
    page.wait_for_selector("redoc h1, .redoc-wrap h1")
    assert "xmreid retrieval server" in page.inner_text("h1")
    assert page.locator("text=/search").count() > 0
    assert blocked == [], f"/redoc tried to load from outside: {blocked}"


def test_operator_page_shows_thumbnails_without_image_root(page, rootless_server, sysu_root) -> None:
    from serving.indexing.demo_hint import pick_query

    query, _, _ = pick_query(sysu_root)
    page.goto(rootless_server.base + "/")
    page.wait_for_selector("#camera-list .chip")
    page.set_input_files("#file-input", str(query))
    page.click("#search-button")
    page.wait_for_selector("body[data-state='results'], body[data-state='error']")
    assert page.get_attribute("body", "data-state") == "results"
    page.wait_for_function(THUMBS_LOADED_JS)
