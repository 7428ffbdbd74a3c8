"""Prometheus metrics, one registry per app.

A registry per :func:`serving.app.create_app` call (instead of prometheus_client's global default) keeps
two apps in one process, e.g. in tests, from double-registering or mixing their counts. The standard
collectors the global registry would have carried are registered on it too (prometheus_client's
``ProcessCollector``, ``PlatformCollector`` and ``GCCollector``: ``process_resident_memory_bytes``,
``process_cpu_seconds_total``, ``process_open_fds``, ``python_info``, ``python_gc_*``), so the usual
process dashboards and alerts work unchanged.

Names follow Prometheus's conventions: one ``xmreid_`` prefix, base units (seconds, bytes), ``_total`` on
counters, and gauges that are read when scraped (``set_function``) rather than updated per request:
the queue depth, the requests in flight and the gallery size cost the hot path nothing.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from xmreid.cli import package_version

# Request latency: sub-millisecond health checks up to multi-second batch uploads.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's metrics and the registry that renders them.

    Attributes:
        registry: the app's own registry, rendered by ``GET /metrics``.
        requests: ``xmreid_http_requests_total{endpoint, method, status}``.
        latency: ``xmreid_http_request_duration_seconds{endpoint, method, status}``.
        batch_size: ``xmreid_model_batch_size``, images per model call.
        model_calls: ``xmreid_model_calls_total``.
        model_seconds: ``xmreid_model_call_duration_seconds``, timed in the model thread around the call.
        model_cpu_seconds: ``xmreid_model_cpu_seconds_total``, CPU time of the model thread during calls.
        stage_seconds: ``xmreid_stage_duration_seconds{stage}`` for decode / embed / search.
        gallery_size: ``xmreid_gallery_size``, items in the gallery.
        queue_depth: ``xmreid_batch_queue_depth``, images waiting for the model (the 503 bound is
            ``xmreid_batch_queue_limit``).
        queue_limit: ``xmreid_batch_queue_limit``, ``max_queue``: beyond it /search answers 503.
        inflight: ``xmreid_http_requests_in_flight``, requests inside the app now.
        model_info: ``xmreid_model_info{backend, fingerprint, dim, height, width}`` = 1 for the served model.
        build_info: ``xmreid_build_info{version}``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("xmreid_http_requests_total", "HTTP requests answered, by route template, "
                                "method and status", ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("xmreid_http_request_duration_seconds", "HTTP request latency",
                                 ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("xmreid_model_batch_size", "Images per model call (micro-batch size)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.model_calls = Counter("xmreid_model_calls_total", "Model (embedder) calls", registry=r)
        self.model_seconds = Histogram("xmreid_model_call_duration_seconds", "Duration of one model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.model_cpu_seconds = Counter("xmreid_model_cpu_seconds", "CPU seconds of the thread running the "
                                         "model, during model calls (all of the model's CPU when it computes "
                                         "in that thread, e.g. ONNX Runtime with one intra-op thread)", registry=r)
        self.stage_seconds = Histogram("xmreid_stage_duration_seconds", "Per-image time in each serving stage",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.gallery_size = Gauge("xmreid_gallery_size", "Items in the gallery", registry=r)
        self.queue_depth = Gauge("xmreid_batch_queue_depth", "Images waiting for the model in the micro-batch queue "
                                 "(at xmreid_batch_queue_limit, /search answers 503)", registry=r)
        self.queue_limit = Gauge("xmreid_batch_queue_limit", "Most images the micro-batch queue holds "
                                 "(max_queue)", registry=r)
        self.inflight = Gauge("xmreid_http_requests_in_flight", "HTTP requests being handled now", registry=r)
        self.model_info = Gauge("xmreid_model_info", "The served model (value 1)",
                                ["backend", "fingerprint", "dim", "height", "width"], registry=r)
        self.build_info = Info("xmreid_build", "The server's version", registry=r)
        self.build_info.info({"version": package_version()})
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # Labelled children, looked up once per label set: ``labels()`` takes a lock and builds a key tuple
        # on every call, five times per search otherwise. The label sets are bounded (route templates).
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._stage_children: dict[str, Any] = {}

    def watch_batcher(self, batcher: Any) -> None:
        """Read the queue depth and bound of ``batcher`` (a :class:`~serving.runtime.batching.MicroBatcher`) when
        scraped."""
        self.queue_depth.set_function(lambda: batcher.queue_depth)
        self.queue_limit.set(batcher.max_queue)

    def set_model(self, info: dict[str, Any]) -> None:
        """Publish the served model (``Runtime.model_info()``) as ``xmreid_model_info``."""
        self.model_info.clear()
        self.model_info.labels(str(info["name"]), str(info["fingerprint"]), str(info["dim"]), str(info["height"]),
                               str(info["width"])).set(1)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        children = self._request_children.get((endpoint, method, status))
        if children is None:
            labels = (endpoint, method, str(status))
            children = self._request_children.setdefault((endpoint, method, status), (
                self.requests.labels(*labels), self.latency.labels(*labels)))
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, size: int, seconds: float, cpu_seconds: float = 0.0) -> None:
        """Record one model call (the :class:`serving.runtime.batching.MicroBatcher` observer)."""
        self.model_calls.inc()
        self.batch_size.observe(size)
        self.model_seconds.observe(seconds)
        self.model_cpu_seconds.inc(max(0.0, cpu_seconds))

    def observe_stages(self, **seconds: float) -> None:
        """Record per-stage times, e.g. ``observe_stages(decode=0.002, embed=0.01)``."""
        for stage, value in seconds.items():
            child = self._stage_children.get(stage)
            if child is None:
                child = self._stage_children.setdefault(stage, self.stage_seconds.labels(stage))
            child.observe(value)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
