"""A gallery collection in Milvus: vectors and per-item metadata in one Milvus collection.

The ``"milvus"`` backend of :class:`index.Gallery` (``Gallery.create(..., backend="milvus", uri=...)``; the
gallery directory's pointer manifest is :mod:`index.milvus_persist`).
``uri`` is either a local ``*.db`` path (Milvus Lite: embedded, one process, for a single machine and for
tests) or a server / cluster address (``http://host:19530``), where the same code runs unchanged.

Why the metadata lives in Milvus scalar fields rather than in the SQLite table the FAISS galleries use
(argued at length in ``docs/scaling.md``): a gallery that needs Milvus is one that no longer fits one
process, and an in-memory SQLite copy of 10^8-10^9 rows on every server replica would be that bottleneck
again; with the camera and the timestamp beside the vector, camera/time filters become Milvus filter
expressions evaluated inside the search (pre-filtering by bitset, no "search wider"); and every process
that opens the collection (an indexer, several servers) sees one consistent store.

Schema (one row per gallery item)::

    id INT64 (primary, assigned by the gallery)   vector FLOAT_VECTOR[dim] (L2-normalised, metric IP)
    camera INT64            timestamp DOUBLE (nullable)     person_label VARCHAR (JSON text, nullable)
    source VARCHAR          extra JSON

``person_label`` is stored as JSON text so that ``12`` and ``"12"`` come back as the int and the str they
were. The model fingerprint, the gallery kind and the next free id are collection properties, so a
collection is checked against the model even when it is opened without its gallery directory.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from index.backends import SEARCH_PARAMS, VectorBackend, checked_search_params, pad_results
from index.errors import GalleryError
from index.milvus_options import (
    EXACT_MILVUS_KINDS,
    KIND_DEFAULTS,
    MILVUS_KINDS,
    build_params,
    is_lite_uri,
    search_params,
)

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'xmreid[milvus]' (pymilvus and, for a local .db uri, milvus-lite)"
MAX_TOPK = 16384  # Milvus answers at most this many results per query
MAX_SOURCE = 4096  # bytes of a ``source`` path/URI (VARCHAR max_length)
MAX_LABEL = 1024
_CHUNK = 1000  # rows per insert / ids per "id in [...]" expression (keeps gRPC messages well under 64 MB)
_PROP_FINGERPRINT, _PROP_KIND, _PROP_NEXT_ID, _PROP_CAMERAS = (
    "xmreid.fingerprint", "xmreid.kind", "xmreid.next_id", "xmreid.cameras")
_FIELDS = ["camera", "person_label", "source", "timestamp", "extra"]


def import_pymilvus() -> Any:
    """``pymilvus``, or a :class:`GalleryError` that names the extra to install."""
    try:
        import pymilvus
    except ImportError:
        raise GalleryError(f"backend='milvus' needs the pymilvus package, which is not installed: "
                           f"{INSTALL_HINT}") from None
    return pymilvus


def _auto_pq_m(dim: int) -> int:
    # ~16 dimensions per sub-quantizer, as the FAISS ivf_pq kind: 96 bytes per 1536-d vector.
    return next(m for m in range(max(1, dim // 16), 0, -1) if dim % m == 0)


def filter_expression(cameras: np.ndarray | None, window: tuple[float | None, float | None] | None) -> str:
    """The Milvus boolean expression for a camera set and an inclusive time window ("" for no filter).

    A window, even an open one, only matches items that have a timestamp (as for FAISS galleries):
    comparisons with a NULL field are false in Milvus, and ``(None, None)`` becomes ``is not null``.
    """
    clauses = []
    if cameras is not None:
        clauses.append(f"camera in [{', '.join(str(int(c)) for c in cameras)}]")
    if window is not None:
        lo, hi = window
        if lo is not None:
            clauses.append(f"timestamp >= {float(lo)!r}")
        if hi is not None:
            clauses.append(f"timestamp <= {float(hi)!r}")
        if lo is None and hi is None:
            clauses.append("timestamp is not null")
    return " and ".join(clauses)


def id_list(ids: np.ndarray) -> str:
    return "[" + ",".join(str(int(i)) for i in ids) + "]"


def string_list(values: list[str]) -> str:
    # JSON string literals are Milvus string literals (double quotes, backslash escapes).
    return json.dumps(values, ensure_ascii=False)


class MilvusBackend(VectorBackend):
    """One Milvus collection holding a gallery's vectors and metadata; see the module docstring.

    Build it with :meth:`create` or :meth:`open`. Thread safety: a ``MilvusClient`` is a gRPC channel and
    may be used from several threads; the gallery serialises writers.

    It is also the gallery's metadata store (the rows are scalar fields of the same collection) and commits
    each change itself; :class:`index.milvus_persist.MilvusStorage` is the gallery's side of both.
    """

    name = "milvus"

    def __init__(self, client: Any, uri: str, kind: str, dim: int, options: dict[str, Any],
                 runtime: dict[str, Any]) -> None:
        self._client = client
        self.uri = uri
        self.kind = kind
        self.dim = dim
        self.exact = kind in EXACT_MILVUS_KINDS and options["index_type"] in (None, "FLAT", "GPU_BRUTE_FORCE")
        # PQ codes (and whatever an index_type override quantises) give estimated inner products that can
        # stray a little past [-1, 1]: the gallery clips those instead of calling them damage.
        self.estimated_scores = kind == "ivf_pq" or options["index_type"] is not None
        self._options = options
        self._runtime = runtime
        self.collection = options["collection"]

    # ----------------------------------------------------------------- construction
    @staticmethod
    def connect(uri: str, runtime: dict[str, Any]) -> Any:
        """A ``MilvusClient`` for ``uri`` (starting the embedded Milvus Lite server for a ``.db`` path)."""
        pymilvus = import_pymilvus()
        if is_lite_uri(uri):
            try:
                import milvus_lite  # noqa: F401
            except ImportError:
                raise GalleryError(f"uri {uri!r} is a Milvus Lite file, which needs the milvus-lite package: "
                                   f"{INSTALL_HINT}; or give a Milvus server address") from None
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        token = runtime.get("token") or os.environ.get("MILVUS_TOKEN", "")
        try:
            return pymilvus.MilvusClient(uri=uri, token=token, timeout=runtime.get("timeout"))
        except pymilvus.MilvusException as exc:
            raise GalleryError(f"cannot connect to Milvus at {uri}: {exc.message}") from None

    @classmethod
    def create(cls, uri: str, kind: str, dim: int, fingerprint: str | None, options: dict[str, Any],
               runtime: dict[str, Any]) -> MilvusBackend:
        """Create the collection (it must not exist yet) with its vector and scalar indexes."""
        pymilvus = import_pymilvus()
        client = cls.connect(uri, runtime)
        name = options["collection"]
        if client.has_collection(name):
            raise GalleryError(f"Milvus at {uri} already has a collection {name!r}; open its gallery with "
                               f"Gallery.load, or create this one with another collection='...' name")
        data_type = pymilvus.DataType
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", data_type.INT64, is_primary=True)
        schema.add_field("vector", data_type.FLOAT_VECTOR, dim=dim)
        schema.add_field("camera", data_type.INT64, nullable=True)
        schema.add_field("timestamp", data_type.DOUBLE, nullable=True)
        schema.add_field("person_label", data_type.VARCHAR, max_length=MAX_LABEL, nullable=True)
        schema.add_field("source", data_type.VARCHAR, max_length=MAX_SOURCE, nullable=True)
        schema.add_field("extra", data_type.JSON, nullable=True)
        index_params = client.prepare_index_params()
        params = build_params(kind, options)
        # pymilvus flattens ``params`` into top-level keys, which a Milvus server reads but Milvus Lite
        # ignores; both read the older nested {"params": {...}} form, so send that.
        index_params.add_index(field_name="vector", index_type=options["index_type"] or MILVUS_KINDS[kind],
                               metric_type="IP", params={"params": params} if params else {})
        # Scalar indexes: the camera/time filters and resume-by-source lookups stay sub-linear at scale.
        for field in ("camera", "timestamp", "source"):
            index_params.add_index(field_name=field, index_type="INVERTED")
        properties = {_PROP_FINGERPRINT: fingerprint or "", _PROP_KIND: kind, _PROP_NEXT_ID: "0",
                      _PROP_CAMERAS: "[]"}
        try:
            client.create_collection(name, schema=schema, properties=properties,
                                     consistency_level=options["consistency_level"], num_shards=options["shards"])
            # sync=False: the index is built per sealed segment anyway, and waiting for each of the four
            # (empty) indexes costs a polling round trip apiece.
            client.create_index(name, index_params, sync=False)
            client.load_collection(name)
        except pymilvus.MilvusException as exc:
            if client.has_collection(name):
                client.drop_collection(name)
            raise GalleryError(f"Milvus at {uri} refused to create collection {name!r}: {exc.message}") from None
        log.info("created Milvus collection %r at %s (%s, %d-d)", name, uri,
                 options["index_type"] or MILVUS_KINDS[kind], dim)
        return cls(client, uri, kind, dim, options, runtime)

    @classmethod
    def open(cls, uri: str, kind: str, dim: int, options: dict[str, Any], runtime: dict[str, Any],
             fingerprint: str | None) -> MilvusBackend:
        """Open an existing collection and check it is the gallery the manifest describes."""
        client = cls.connect(uri, runtime)
        name = options["collection"]
        if not client.has_collection(name):
            raise GalleryError(f"Milvus at {uri} has no collection {name!r}: the gallery's data is gone or the "
                               f"uri is wrong (pass uri=... to Gallery.load if the Milvus address changed)")
        backend = cls(client, uri, kind, dim, options, runtime)
        info = client.describe_collection(name)
        vector = next((f for f in info["fields"] if f["name"] == "vector"), None)
        saved_dim = int(vector["params"]["dim"]) if vector else None
        if saved_dim != dim:
            raise GalleryError(f"Milvus collection {name!r} at {uri} holds {saved_dim}-d vectors but the gallery "
                               f"manifest says {dim}-d")
        props = info.get("properties", {})
        if props.get(_PROP_KIND, kind) != kind:
            raise GalleryError(f"Milvus collection {name!r} at {uri} is a {props[_PROP_KIND]!r} gallery, the manifest "
                               f"says {kind!r}")
        stored_fp = props.get(_PROP_FINGERPRINT) or None
        if stored_fp != fingerprint:
            raise GalleryError(f"Milvus collection {name!r} at {uri} was built with model fingerprint {stored_fp!r}, "
                               f"but its gallery manifest says {fingerprint!r}: the collection was rebuilt by "
                               f"another model; re-index the gallery")
        client.load_collection(name)
        return backend

    # ----------------------------------------------------------------- state
    @property
    def options(self) -> dict[str, Any]:
        return dict(self._options)

    @property
    def device(self) -> str:
        return "gpu" if str(self._options["index_type"] or "").upper().startswith("GPU_") else "cpu"

    def set_search_params(self, **params: Any) -> None:
        self._options.update(checked_search_params(params, SEARCH_PARAMS & set(KIND_DEFAULTS[self.kind]),
                                                   f"a milvus {self.kind!r} gallery"))

    def train(self, vectors: np.ndarray, expected_size: int | None = None) -> None:
        log.info("Milvus trains each segment's index itself when the segment is sealed; ignoring train()")

    def property(self, key: str, default: str = "") -> str:
        return self._client.describe_collection(self.collection).get("properties", {}).get(key, default)

    def next_id(self) -> int:
        """The next free id recorded in the collection (the gallery never reuses ids)."""
        return int(self.property(_PROP_NEXT_ID, "0"))

    def __len__(self) -> int:
        rows = self._client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def count(self, expr: str = "") -> int:
        rows = self._client.query(self.collection, filter=expr, output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def ids(self) -> np.ndarray:
        """Every id, sorted: a scan of the id column in id windows (O(N); for checks and small galleries).

        Windows of ``MAX_TOPK`` ids rather than a query iterator: a window never returns more rows than one
        query may, and Milvus Lite has no timestamp allocation for iterators.
        """
        found: list[int] = []
        for lo in range(0, self.next_id(), MAX_TOPK):
            rows = self._client.query(self.collection, filter=f"id >= {lo} and id < {lo + MAX_TOPK}",
                                      output_fields=["id"])
            found.extend(int(r["id"]) for r in rows)
        return np.sort(np.asarray(found, dtype=np.int64))

    def stamped_before(self, cutoff: float) -> np.ndarray:
        """Ids whose timestamp is strictly before ``cutoff``, sorted: a scan in id windows, as :meth:`ids`."""
        found: list[int] = []
        for lo in range(0, self.next_id(), MAX_TOPK):
            rows = self._client.query(self.collection, output_fields=["id"],
                                      filter=f"id >= {lo} and id < {lo + MAX_TOPK} and timestamp < {float(cutoff)!r}")
            found.extend(int(r["id"]) for r in rows)
        return np.sort(np.asarray(found, dtype=np.int64))

    def unstamped_count(self) -> int:
        """How many items have no timestamp."""
        return self.count("timestamp is null")

    def track_spans(self, cameras: np.ndarray | None = None) -> list[dict[str, Any]]:
        """No tracks: the collection stores no track ids (adding one is refused)."""
        return []

    def present(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which of ``ids`` are stored."""
        stored: set[int] = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            rows = self._client.query(self.collection, filter=f"id in {id_list(chunk)}", output_fields=["id"])
            stored.update(int(r["id"]) for r in rows)
        return np.fromiter((int(i) in stored for i in ids), dtype=bool, count=len(ids))

    # ----------------------------------------------------------------- mutation
    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray, rows: list[tuple] | None = None) -> None:
        """Insert vectors with their metadata rows (``index.metadata`` row tuples; None: vectors only).

        All-or-nothing from the caller's view: if an insert fails part-way, the rows already written are
        deleted again before the error propagates.
        """
        rows = rows if rows is not None else [(None, None, None, None, "{}", None)] * len(ids)
        _check_lengths(rows)
        # Record the new next id first: a crash after the insert must never let those ids be handed out again.
        self._set_properties({_PROP_NEXT_ID: str(int(ids[-1]) + 1)})
        cameras = {int(r[0]) for r in rows if r[0] is not None}
        known = set(json.loads(self.property(_PROP_CAMERAS, "[]")))
        if cameras - known:
            self._set_properties({_PROP_CAMERAS: json.dumps(sorted(known | cameras))})
        written = 0
        try:
            for start in range(0, len(ids), _CHUNK):
                stop = min(len(ids), start + _CHUNK)
                self._client.insert(self.collection, [_entity(int(ids[i]), vectors[i], rows[i])
                                                      for i in range(start, stop)])
                written = stop
        except BaseException:
            if written:
                self.remove_ids(ids[:written])
            raise

    def remove_ids(self, ids: np.ndarray) -> None:
        for start in range(0, len(ids), _CHUNK):
            self._client.delete(self.collection, filter=f"id in {id_list(ids[start:start + _CHUNK])}")

    def _set_properties(self, props: dict[str, str]) -> None:
        self._client.alter_collection_properties(self.collection, properties=props)

    # ----------------------------------------------------------------- queries
    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None, *,
               use_selector: bool = True, expr: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product, filtered by a Milvus expression (and/or an id list) inside Milvus."""
        if k > MAX_TOPK:
            raise GalleryError(f"k={k} is above the {MAX_TOPK} results per query that Milvus returns; ask for fewer")
        if allowed_ids is not None:
            clause = f"id in {id_list(allowed_ids)}"
            expr = f"({expr}) and {clause}" if expr else clause
        answer = self._client.search(
            self.collection, data=list(queries), limit=k, filter=expr, output_fields=[],
            search_params={"metric_type": "IP", "params": search_params(self.kind, self._options)})
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, hits in enumerate(answer):
            hits = list(hits)[:k]
            found[row, :len(hits)] = [int(h["id"]) for h in hits]
            scores[row, :len(hits)] = [float(h["distance"]) for h in hits]
        return pad_results(scores, found, k)

    def search_where(self, queries: np.ndarray, k: int, cameras: np.ndarray | None,
                     time_range: tuple[float | None, float | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` with the camera/time filter as a Milvus expression, applied inside the search."""
        if cameras is not None and cameras.size == 0:
            return np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1, dtype=np.int64)
        return self.search(queries, k, expr=filter_expression(cameras, time_range))

    def get(self, ids: Any) -> dict[int, dict[str, Any]]:
        """Rows by id as ``{id: {id, camera, person_label, source, timestamp, extra}}``; absent ids are left out."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), _CHUNK):
            rows = self._client.query(self.collection, filter=f"id in {id_list(wanted[start:start + _CHUNK])}",
                                      output_fields=["id", *_FIELDS])
            for r in rows:
                label = r.get("person_label")
                out[int(r["id"])] = {
                    "id": int(r["id"]), "camera": None if r.get("camera") is None else int(r["camera"]),
                    "person_label": None if label is None else json.loads(label), "source": r.get("source"),
                    "timestamp": None if r.get("timestamp") is None else float(r["timestamp"]),
                    "extra": dict(r.get("extra") or {}), "track_id": None}  # not stored (see _check_lengths)
        return out

    def find_sources(self, sources: Any) -> dict[str, int]:
        """``{source: id}`` for the stored ones among ``sources`` (the smallest id if one repeats)."""
        wanted = sorted({str(s) for s in sources})
        out: dict[str, int] = {}
        for start in range(0, len(wanted), _CHUNK):
            rows = self._client.query(self.collection, filter=f"source in {string_list(wanted[start:start + _CHUNK])}",
                                      output_fields=["id", "source"])
            for r in rows:
                out[r["source"]] = min(int(r["id"]), out.get(r["source"], math.inf))
        return out

    def camera_counts(self) -> dict[int, int]:
        """Items per camera: one filtered count per camera ever added (no scan of the rows)."""
        cameras = json.loads(self.property(_PROP_CAMERAS, "[]"))
        counts = {int(c): self.count(f"camera == {int(c)}") for c in cameras}
        return {c: n for c, n in counts.items() if n}

    def labelled_count(self) -> int:
        return self.count("person_label is not null")

    # ----------------------------------------------------------------- persistence
    def flush(self) -> None:
        """Seal the growing segments so the data is on disk (Lite) / in object storage (server)."""
        self._client.flush(self.collection)

    def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "trained": True,
                "milvus_uri": self.uri if is_lite_uri(self.uri) else self.uri.split("@")[-1],
                "milvus_collection": self.collection,
                "milvus_index_type": self._options["index_type"] or MILVUS_KINDS[self.kind]}

    def drop(self) -> None:
        self._client.drop_collection(self.collection)

    def close(self) -> None:
        self._client.close()


def _check_lengths(rows: list[tuple]) -> None:
    for i, row in enumerate(rows):
        _, label, source, _, _ = row[:5]
        if len(row) > 5 and row[5] is not None:  # the collection schema has no track_id field
            raise GalleryError(f"metadata[{i}]['track_id']: a milvus gallery does not store track ids; use a FAISS "
                               f"gallery for group_by=camera_track")
        if source is not None and len(source.encode("utf-8")) > MAX_SOURCE:
            raise GalleryError(f"metadata[{i}]['source'] is longer than the {MAX_SOURCE} bytes a milvus gallery stores")
        if label is not None and len(json.dumps(label)) > MAX_LABEL:
            raise GalleryError(f"metadata[{i}]['person_label'] is longer than {MAX_LABEL} characters")


def _entity(item_id: int, vector: np.ndarray, row: tuple) -> dict[str, Any]:
    camera, label, source, timestamp, extra_json = row[:5]
    return {"id": item_id, "vector": vector, "camera": camera, "timestamp": timestamp,
            "person_label": None if label is None else json.dumps(label), "source": source,
            "extra": json.loads(extra_json)}
