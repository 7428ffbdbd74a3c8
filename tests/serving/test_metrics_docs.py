"""``/metrics`` has the standard collectors and the serving gauges (issue 22); ``/docs`` needs no CDN; the
sample Grafana dashboard in docs/ is valid JSON and asks only for metrics the server exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana_dashboard.json"
JPEG = "image/jpeg"
_NAME = re.compile(r"^[a-z_:][a-z0-9_:]*$")


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_metrics_expose_process_queue_inflight_and_batches(make_client, ir_queries) -> None:
    client = make_client(max_queue=77)
    files = {"image": ("q.jpg", ir_queries[0].path.read_bytes(), JPEG)}
    assert client.post("/search", files=files).status_code == 200
    samples = _samples(client.get("/metrics").text)
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info",
                 "python_gc_collections_total", "xmreid_batch_queue_depth", "xmreid_batch_queue_limit",
                 "xmreid_http_requests_in_flight", "xmreid_gallery_size", "xmreid_model_batch_size_bucket",
                 "xmreid_model_calls_total", "xmreid_model_cpu_seconds_total", "xmreid_build_info",
                 "xmreid_model_info"):
        assert name in samples, name
    assert samples["process_resident_memory_bytes"][0].value > 10e6
    assert samples["xmreid_batch_queue_limit"][0].value == 77
    assert samples["xmreid_batch_queue_depth"][0].value == 0  # nothing waiting between requests
    # The scrape itself is the one request inside the app while the gauge is read.
    assert samples["xmreid_http_requests_in_flight"][0].value == 1
    assert samples["xmreid_gallery_size"][0].value == len(client.app.state.runtime.gallery)
    model = samples["xmreid_model_info"][0]
    assert model.labels["backend"] == "onnxruntime" and model.value == 1
    assert sum(s.value for s in samples["xmreid_model_batch_size_count"]) >= 1
    # Prometheus naming: one prefix for ours, snake case, counters end in _total.
    for name in samples:
        assert _NAME.match(name), name


def test_queue_depth_gauge_reads_the_batcher(make_client) -> None:
    client = make_client()
    runtime = client.app.state.runtime
    runtime.batcher._queue.extend([object()] * 3)
    try:
        samples = _samples(client.get("/metrics").text)
        assert samples["xmreid_batch_queue_depth"][0].value == 3
    finally:
        runtime.batcher._queue.clear()


def test_docs_pages_reference_no_external_urls(make_client) -> None:
    client = make_client()
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        csp = r.headers["content-security-policy"]  # the browser asks nothing of any other origin
        assert "default-src 'none'" in csp and "https:" not in csp and "*" not in csp
        external = re.findall(r"""(?:src|href)\s*=\s*["'](https?:)?//""", r.text)
        assert not external, f"{page} loads from outside: {external}"
        assert "https://" not in r.text and "http://" not in r.text, page
        for asset in re.findall(r"""(?:src|href)\s*=\s*["'](/docs-assets/[^"']+)""", r.text):
            a = client.get(asset)
            assert a.status_code == 200 and len(a.content) > 100, asset
    assert client.get("/docs-assets/swagger-ui-bundle.js").headers["content-type"].startswith(
        ("application/javascript", "text/javascript"))
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/openapi.json").json()["info"]["version"] == client.app.version


def test_grafana_dashboard_uses_only_exposed_metrics(make_client, ir_queries) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    client = make_client()
    client.post("/search", files={"image": ("q.jpg", ir_queries[0].path.read_bytes(), JPEG)})
    exposed = set(_samples(client.get("/metrics").text))
    functions = {"sum", "rate", "by", "le", "histogram_quantile", "label_values", "irate", "avg"}
    for expr in [*exprs, dashboard["templating"]["list"][1]["query"]]:
        # Metric names are the identifiers followed by a selector `{` (every query here selects by job).
        for name in re.findall(r"([a-z_:][a-z0-9_:]*)\{", expr):
            assert name in exposed or name in functions, f"{name} (in {expr}) is not exposed"
