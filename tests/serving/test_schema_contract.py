"""The OpenAPI schema promises what the metadata store accepts (issue 22).

The schema once declared a gallery item's ``camera`` as ``int | str`` while the store (``index.metadata``)
requires an int: a client that followed the schema got a 422. This test walks every property the published
schema declares for ``POST /gallery``'s metadata, builds one value of each declared JSON type, and posts it:
each must be stored (201) and read back. It also checks that a type the schema does not declare is refused
by the schema itself, with the API's 422 body, before it reaches the store.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

JPEG = "image/jpeg"


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return components[ref.rsplit("/", 1)[-1]] if ref else schema


def _samples(prop: dict[str, Any]) -> list[Any]:
    """One value per JSON type the property schema allows (``anyOf`` branches included)."""
    branches = prop.get("anyOf", [prop])
    values: list[Any] = []
    for branch in branches:
        kind = branch.get("type")
        if kind == "integer":
            values += [7, 2**40]  # small and beyond 32 bits (SQLite stores 64)
        elif kind == "number":
            values.append(1_700_000_000.5)
        elif kind == "string":
            values.append("2024-01-02T03:04:05Z" if branch.get("format") == "date-time" else "cam1/0001/0001.jpg")
        elif kind == "object":
            values.append({"site": "north gate"})
        elif kind == "null":
            values.append(None)
        else:
            raise AssertionError(f"the contract test does not know JSON type {kind!r}: extend _samples")
    return values


def _metadata_schema(client) -> dict[str, Any]:
    """The item schema as the published OpenAPI document gives it (the form field's ``contentSchema``)."""
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/gallery"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = _resolve(body, spec["components"]["schemas"])
    field = form["properties"]["metadata"]
    assert field["type"] == "string" and field["contentMediaType"] == "application/json"
    return field["contentSchema"]["items"]


def _post(client, data: bytes, meta: list[dict[str, Any]]):
    return client.post("/gallery", files=[("images", ("q.jpg", data, JPEG))], data={"metadata": json.dumps(meta)})


def test_every_declared_metadata_type_is_stored(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy)
    schema = _metadata_schema(client)
    assert schema["properties"]["camera"]["type"] == "integer", "camera is an integer in the store"
    assert "camera" in schema.get("required", []), "the store requires a camera"
    jpeg = ir_queries[0].path.read_bytes()
    tried = 0
    for name, prop in schema["properties"].items():
        for value in _samples(prop):
            item = {"camera": 1, name: value}
            response = _post(client, jpeg, [item])
            assert response.status_code == 201, (name, value, response.json())
            (new_id,) = response.json()["ids"]
            stored = client.app.state.runtime.gallery.get([new_id])[0]
            if name == "camera":
                assert stored["camera"] == value and type(stored["camera"]) is int
            tried += 1
    assert tried >= 9  # camera x2, person_label x4, source x2, timestamp x3, extra x2: the walk really walked


def test_search_hits_declare_the_store_types(make_client) -> None:
    spec = make_client().get("/openapi.json").json()
    components = spec["components"]["schemas"]
    hit = components["SearchHit"]["properties"]
    assert {b.get("type") for b in hit["camera"].get("anyOf", [hit["camera"]])} <= {"integer", "null"}
    params = spec["paths"]["/search"]["post"]["parameters"]
    camera = next(p for p in params if p["name"] == "camera")
    branches = camera["schema"].get("anyOf", [camera["schema"]])
    assert {b["items"]["type"] for b in branches if b.get("type") == "array"} == {"integer"}


@pytest.mark.parametrize("item, field", [({"camera": "north"}, "camera"), ({}, "camera"),
                                         ({"camera": 1, "timestamp": "yesterday"}, "timestamp"),
                                         ({"camera": 2**63}, "camera")])
def test_undeclared_types_are_refused_by_the_schema(make_client, gallery_copy, ir_queries, item, field) -> None:
    client = make_client(gallery=gallery_copy)
    response = _post(client, ir_queries[0].path.read_bytes(), [item])
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_metadata" and field in body["detail"], body
