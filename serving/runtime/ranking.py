"""What a search does after the model: fuse a track, rank the gallery, group the ranking, re-rank it.

A plain search (one crop, no grouping, no re-ranking) keeps its own hot path
(:func:`serving.runtime.state.Runtime.search_image`); everything else lands here, in a worker thread, under one
shared hold of the gallery (:meth:`serving.runtime.durable.DurableGallery.reading`).

* **Track queries** (:func:`fuse`): the crops of one person seen by one camera are embedded together and
  fused into one descriptor. ``mean`` averages the L2-normalised descriptors and re-normalises (the usual
  set-to-set pooling of video re-ID: the noise of single frames averages out); ``max`` takes the
  element-wise maximum of the normalised descriptors and re-normalises. ``benchmarks/track_queries.py``
  measures both.
* **Grouping** (``group_by``): :func:`index.grouping.search_groups`, which searches as wide as it takes to
  fill ``top_k`` groups.
* **Re-ranking** (``rerank``): the query's top-``rerank_n`` exact neighbourhood is re-ranked with
  k-reciprocal encoding (:func:`index.reranking.rerank_neighbourhood`), each query on its own. Only that
  neighbourhood can appear in the answer, so ``rerank_n`` must be at least ``top_k``; with ``group_by``, the
  groups are those of the re-ranked neighbourhood (fewer than ``top_k`` when it holds fewer). It needs the
  gallery's stored vectors, so an approximate index (whose vectors are compressed or not kept) is
  refused rather than re-ranked on approximations (see :func:`check_rerank`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.grouping import Group, group_ranking, is_singleton, search_groups
from index.reranking import rerank_neighbourhood
from index.validate import unit_rows
from serving.runtime.durable import DurableGallery
from serving.runtime.hits import hit_dict

FUSIONS: tuple[str, ...] = ("mean", "max")
#: The largest neighbourhood a query may re-rank: k-reciprocal encoding costs O(N²) memory and time
#: (1000 items: a 1001 x 1001 float32 matrix, ~4 MB, about a tenth of a second).
MAX_RERANK_N = 1000
DEFAULT_RERANK_N = 100
#: Index kinds whose stored vectors are the descriptors themselves (index.registry.EXACT_KINDS).
RERANK_KINDS: tuple[str, ...] = ("flat", "flat_fp16")


@dataclass(frozen=True)
class QueryOptions:
    """A checked search request (the route validated every field).

    Attributes:
        top_k: results (or groups) wanted.
        cameras: the camera filter, or None for all.
        group_by: ``none``, ``person`` or ``camera_track``.
        rerank: re-rank the top-``rerank_n`` neighbourhood.
        rerank_n: neighbourhood size for ``rerank``.
    """

    top_k: int
    cameras: tuple[int, ...] | None = None
    group_by: str = "none"
    rerank: bool = False
    rerank_n: int = DEFAULT_RERANK_N


@dataclass
class QueryAnswer:
    """One query's answer: hits (best first), groups (with ``group_by``), and where the time went."""

    hits: list[dict[str, Any]]
    groups: list[dict[str, Any]] | None = None
    search_s: float = 0.0
    rerank_s: float | None = None


#: Rows scaled to unit L2 norm (float32); a zero row stays zero: the project's one normalisation.
normalise = unit_rows


def fuse(vectors: np.ndarray, method: str = "mean") -> np.ndarray:
    """One descriptor for a track of crops (module docstring).

    Args:
        vectors: ``[n, dim]`` descriptors of the track's crops (any scale).
        method: ``mean`` or ``max``.

    Returns:
        ``[dim]`` float32, L2-normalised.

    Raises:
        ValueError: an empty track or an unknown method (the message lists the valid ones).
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"a track needs [n >= 1, dim] descriptors, got shape {x.shape}")
    if method not in FUSIONS:
        raise ValueError(f"unknown fusion {method!r}; valid: {', '.join(FUSIONS)}")
    unit = normalise(x)
    pooled = unit.mean(axis=0) if method == "mean" else unit.max(axis=0)
    return normalise(pooled[None])[0]


def check_rerank(gallery: Any) -> str | None:
    """Why ``gallery`` cannot be re-ranked (one sentence for the client), or None when it can."""
    kind = getattr(gallery, "kind", None)
    if kind not in RERANK_KINDS or not hasattr(gallery, "vectors"):
        return (f"rerank=true needs an exact index ({', '.join(RERANK_KINDS)}) whose stored vectors are the "
                f"descriptors; this gallery is {kind!r}, whose vectors are approximate or not kept. Search "
                f"without rerank, or serve an exact copy of the gallery")
    return None


def answer(durable: DurableGallery, vectors: np.ndarray, options: QueryOptions) -> list[QueryAnswer]:
    """Rank the gallery for each query vector with ``options`` (blocking: run it in a thread).

    Args:
        durable: the served gallery.
        vectors: ``[Q, dim]`` query descriptors (normalised here).
        options: the checked request.

    Returns:
        One :class:`QueryAnswer` per query, in order.

    Raises:
        GalleryDamaged: the gallery is (found) damaged.
    """
    q = normalise(np.atleast_2d(vectors))
    cameras = None if options.cameras is None else list(options.cameras)
    with durable.reading() as gallery:
        if options.rerank:
            return [_reranked(gallery, row, options, cameras) for row in q]
        started = time.perf_counter()
        if options.group_by == "none":
            scores, ids = gallery.search(q, options.top_k, cameras=cameras)
            found = sorted({int(i) for i in ids.ravel() if i >= 0})
            meta = dict(zip(found, gallery.get(found))) if found else {}
            answers = [QueryAnswer(_hits(row_s, row_i, meta)) for row_s, row_i in zip(scores, ids)]
        else:
            answers = [QueryAnswer(*_grouped_body(groups, options.group_by))
                       for groups in search_groups(gallery, q, options.top_k, options.group_by, cameras)]
        elapsed = time.perf_counter() - started
    for a in answers:
        a.search_s = elapsed
    return answers


def _reranked(gallery: Any, query: np.ndarray, options: QueryOptions, cameras: list[int] | None) -> QueryAnswer:
    started = time.perf_counter()
    scores, ids = gallery.search(query[None], options.rerank_n, cameras=cameras)
    keep = ids[0] >= 0
    row_s, row_i = scores[0][keep], ids[0][keep]
    meta = dict(zip(row_i.tolist(), gallery.get(row_i))) if row_i.size else {}
    neighbours = gallery.vectors(row_i) if row_i.size else None
    searched = time.perf_counter()
    if neighbours is None:
        return QueryAnswer([], [] if options.group_by != "none" else None, searched - started, 0.0)
    distance = rerank_neighbourhood(query, neighbours)
    order = np.argsort(distance, kind="stable")  # ties keep the cosine order
    row_s, row_i, distance = row_s[order], row_i[order], distance[order]
    reranked = time.perf_counter()
    if options.group_by == "none":
        hits = _hits(row_s[:options.top_k], row_i[:options.top_k], meta, distance)
        return QueryAnswer(hits, None, searched - started, reranked - searched)
    groups = group_ranking(row_s, row_i, meta, options.group_by, options.top_k)
    keyed = [g.key for g in groups if not is_singleton(g.key)]
    counts = gallery.group_counts(options.group_by, keyed, cameras) if keyed else {}
    for g in groups:
        g.count = 1 if is_singleton(g.key) else int(counts.get(g.key, g.found))
    by_id = dict(zip(row_i.tolist(), distance.tolist()))
    hits, body = _grouped_body(groups, options.group_by, by_id)
    return QueryAnswer(hits, body, searched - started + (time.perf_counter() - reranked), reranked - searched)


def _hits(scores: np.ndarray, ids: np.ndarray, meta: dict[int, dict[str, Any]],
          distance: np.ndarray | None = None) -> list[dict[str, Any]]:
    hits = []
    for j, (score, gid) in enumerate(zip(scores.tolist(), ids.tolist())):
        if gid < 0:
            continue
        hit = hit_dict(len(hits) + 1, int(gid), float(score), meta[int(gid)])
        if distance is not None:
            hit["rerank_distance"] = float(distance[j])
        hits.append(hit)
    return hits


def group_label(key: Any, group_by: str) -> str:
    """The group's ``key`` string of the API (``person:7``, ``camera_track:3/12``, ``item:41``)."""
    if is_singleton(key):
        return f"item:{key[1]}"
    if group_by == "person":
        return f"person:{key}"
    return f"camera_track:{key[0]}/{key[1]}"


def _grouped_body(groups: list[Group], group_by: str,
                  distance: dict[int, float] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(results, groups)`` of the API: the best crop of each group, and the groups with their members."""
    def hit(rank: int, gid: int, score: float, item: dict[str, Any]) -> dict[str, Any]:
        out = hit_dict(rank, gid, score, item)
        if distance is not None:
            out["rerank_distance"] = float(distance[gid])
        return out

    results, body = [], []
    for rank, g in enumerate(groups, start=1):
        members = [hit(i, gid, score, item) for i, (gid, score, item) in enumerate(g.members, start=1)]
        best = dict(members[0], rank=rank)
        results.append(best)
        single = is_singleton(g.key)
        body.append({"rank": rank, "key": group_label(g.key, group_by),  # SearchGroup's fields, in its order
                     "person_label": None if single or group_by != "person" else g.key,
                     "camera": None if single or group_by != "camera_track" else g.key[0],
                     "track_id": None if single or group_by != "camera_track" else g.key[1],
                     "score": g.score, "count": g.count, "best": best, "members": members})
    return results, body
