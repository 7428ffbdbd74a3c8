"""Schemathesis against the server's own OpenAPI schema, in-process (ASGI), on the tiny model.

Every operation the schema documents gets a bounded number of generated requests, valid ones (positive
mode: schema-conforming parameters and random bytes as uploads) and invalid ones (negative mode: wrong
types, missing fields, out-of-range values). Checks on every answer: no 5xx, a documented status code,
the documented content type, a body that matches the documented schema (``ErrorBody`` for errors).
The server has an API key, which schemathesis sends through the schema's ``ApiKey`` security scheme, so
POST/DELETE /gallery are really exercised (on a private gallery copy), and negative cases that drop the key
must be refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ci_policy import require

schemathesis = require("schemathesis", reason="schemathesis is not installed (pip install schemathesis)")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.generation.modes import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

API_KEY = "fuzz-key-0123456789"
MAX_EXAMPLES = 25  # per operation and mode: 7 operations x 2 modes x 25 = 350 requests, ~20 s on 2 cores
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tiny_onnx: Path, tiny_gallery: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app's schema loaded by schemathesis from ``/openapi.json``, bound to the app itself (no socket)."""
    import shutil

    from serving.app import create_app
    from serving.core.config import Settings

    gallery = Path(shutil.copytree(tiny_gallery, tmp_path_factory.mktemp("fuzz") / "gallery"))
    app = create_app(Settings(model=tiny_onnx, gallery=gallery, save_on_mutation=True, max_batch_size=4,
                              max_wait_ms=1.0, api_key=API_KEY,
                              allowed_hosts=["testserver"]))  # the Host schemathesis' in-process client sends
    # schemathesis sends the key through the schema's own ApiKey security scheme, so positive cases are
    # authorised and negative ones that drop or corrupt it must be refused.
    config = SchemathesisConfig.from_dict({"auth": {"openapi": {"ApiKey": {"api_key": API_KEY}}}})
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    yield schema
    # schemathesis keeps an app's lifespan running for the whole process; stop ours (batcher, threads) now.
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


def operations(schema) -> list:
    ops = [result.ok() for result in schema.get_all_operations()]
    assert ops, "the schema documents no operation"
    return ops


def _image_body(path: str, jpeg: bytes) -> dict | None:
    """A multipart body with a real crop for an upload route, so generated parameters meet a decodable image."""
    if path == "/search":
        return {"image": jpeg}
    if path == "/search/batch":
        return {"images": [jpeg, jpeg]}
    if path == "/gallery":
        return {"images": [jpeg], "metadata": json.dumps([{"camera": 1, "source": "fuzz/a.jpg"}])}
    return None


def fuzz(schema, mode: GenerationMode, jpeg: bytes | None = None) -> dict[str, dict[int, int]]:
    """Run ``MAX_EXAMPLES`` generated requests per operation through :data:`CHECKS`; return status counts.

    With ``jpeg``, only the upload routes run, each with a real image body and generated parameters.
    """
    tried: dict[str, dict[int, int]] = {}
    for operation in operations(schema):
        label = f"{operation.method.upper()} {operation.path}"
        kwargs = {}
        if jpeg is not None:
            body = _image_body(operation.path, jpeg)
            if body is None or operation.method.upper() != "POST":
                continue
            kwargs = {"body": body, "media_type": "multipart/form-data"}
        seen = tried.setdefault(label, {})

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, **kwargs))
        def run(case) -> None:
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            # Invalid input must also be *refused* (a 4xx), not silently accepted.
            case.validate_response(response, checks=CHECKS + ([negative_data_rejection] if mode.is_negative else []))

        try:
            run()
        except Unsatisfiable:
            # Nothing can be made invalid about an operation without parameters (GET /healthz).
            has_inputs = bool(list(operation.iter_parameters()) or list(operation.body))
            assert mode is GenerationMode.NEGATIVE and not has_inputs, f"no {mode} case could be generated for {label}"
    return tried


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_schema_fuzzing_no_5xx_and_responses_conform(api_schema, mode: GenerationMode) -> None:
    tried = fuzz(api_schema, mode)
    # The fuzzing reached every documented operation.
    expected = {"POST /search", "POST /search/batch", "POST /gallery", "DELETE /gallery/{item_id}",
                "GET /gallery/stats", "GET /healthz", "GET /readyz", "GET /metrics"}
    assert expected <= set(tried), sorted(tried)
    assert not any(status >= 500 for counts in tried.values() for status in counts), tried
    print(f"schemathesis {mode}: {tried}")


@pytest.mark.slow
def test_schema_fuzzing_with_real_images_reaches_success_answers(api_schema, ir_queries) -> None:
    """Generated query parameters with a real crop: the 200/201 answers are checked against their schemas."""
    tried = fuzz(api_schema, GenerationMode.POSITIVE, jpeg=ir_queries[0].path.read_bytes())
    assert set(tried) == {"POST /search", "POST /search/batch", "POST /gallery"}, sorted(tried)
    assert not any(status >= 500 for counts in tried.values() for status in counts), tried
    # Valid parameters with a real image must succeed at least sometimes, else only refusals were checked.
    assert tried["POST /search"].get(200, 0) > 0 and tried["POST /gallery"].get(201, 0) > 0, tried
    print(f"schemathesis positive + real image: {tried}")
