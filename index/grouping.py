"""Search results grouped by person, or by camera track: one entry per group instead of one per crop.

A gallery holds many crops of each person (SYSU-MM01: ten per camera), so a plain top-10 often shows one
person ten times. SYSU-MM01's own protocol computes CMC on the ranking reduced to unique identities for
that reason; :func:`search_groups` gives an operator the same reduced list, with each group's best crop.

Groups and their keys (``group_by``):

* ``person``: items with the same ``person_label``;
* ``camera_track``: items with the same ``(camera, track_id)``: one pass of one person past one camera.

An item without the key (no label, no track id) is a group of its own (key ``("item", id)``), so grouping
never hides a result.

**How wide the search is.** The ranking is scanned best first and each group is placed where its first
(best) member appears, so the first ``k`` distinct keys of a ranking that holds them are exactly the ``k``
groups whose best members score highest, with each group's score equal to its best member's (for an exact
index). The search therefore only has to be long enough to contain ``k`` distinct keys. The first search
asks for about twice the items ``k`` average groups hold (``2 * k * items / groups``, from the metadata's
group counts under the same camera filter, at least ``k``); a row still short of
``min(k, groups)`` groups is searched again four times wider, until it is complete or the search covers
every allowed item: the same widening as :func:`index.backends.search_wider`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The ``group_by`` values a search accepts; ``none`` is the plain ranked list.
GROUP_MODES: tuple[str, ...] = ("none", "person", "camera_track")
#: Most members listed per group (the group's ``count`` still says how many it holds).
MAX_MEMBERS = 20


@dataclass
class Group:
    """One group of a grouped ranking.

    Attributes:
        key: ``person_label``, ``(camera, track_id)``, or ``("item", id)`` for an item without the key.
        score: the best member's score (the first member's).
        members: ``(id, score, metadata)`` of the group's items found by the search, best first (at most
            ``max_members``).
        found: how many of the group's items the search saw (``len(members)`` before the cap).
        count: items the group holds in the gallery under the search's camera filter (set by
            :func:`search_groups`; ``found`` until then).
    """

    key: Any
    score: float
    members: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    found: int = 0
    count: int = 0


def group_key(item: dict[str, Any], group_by: str) -> Any:
    """The key of ``item`` (a ``Gallery.get`` row) under ``group_by`` (see the module docstring)."""
    if group_by == "person":
        label = item.get("person_label")
        return ("item", int(item["id"])) if label is None else label
    if group_by == "camera_track":
        track = item.get("track_id")
        return ("item", int(item["id"])) if track is None else (item.get("camera"), track)
    raise ValueError(f"unknown group_by {group_by!r}; valid values: person, camera_track")


def is_singleton(key: Any) -> bool:
    """Whether ``key`` is the own group of an item without the grouping key."""
    return isinstance(key, tuple) and len(key) == 2 and key[0] == "item"


def group_ranking(scores: np.ndarray, ids: np.ndarray, meta: dict[int, dict[str, Any]], group_by: str, k: int,
                  max_members: int = MAX_MEMBERS) -> list[Group]:
    """Reduce one ranked row to its first ``k`` groups, each at the place of its best member.

    Args:
        scores: ``[n]`` scores, best first (``-inf`` padding where ``ids`` is ``-1``).
        ids: ``[n]`` gallery ids, ``-1`` padding.
        meta: ``{id: Gallery.get row}`` for every id of the row.
        group_by: ``person`` or ``camera_track``.
        k: groups wanted.
        max_members: members kept per group.

    Returns:
        At most ``k`` groups in ranking order; members of those groups found anywhere in the row are
        collected (a member may rank below the ``k``-th group's first member).
    """
    groups: dict[Any, Group] = {}
    order: list[Any] = []
    for score, gid in zip(scores.tolist(), ids.tolist()):
        if gid < 0:
            continue
        item = meta[int(gid)]
        key = group_key(item, group_by)
        group = groups.get(key)
        if group is None:
            if len(order) >= k:
                continue  # a group past the k-th: not shown, and its members do not matter
            group = groups[key] = Group(key=key, score=float(score))
            order.append(key)
        group.found += 1
        if len(group.members) < max_members:
            group.members.append((int(gid), float(score), item))
    for key in order:
        groups[key].count = groups[key].found
    return [groups[key] for key in order]


def first_fetch(k: int, groups: int, items: int) -> int:
    """Items the first search asks for: about twice what ``k`` average groups hold, at least ``k``."""
    if items <= 0:
        return k
    return min(items, max(k, math.ceil(2 * k * items / max(1, groups))))


def search_groups(gallery: Any, queries: np.ndarray, k: int, group_by: str, cameras: Any = None,
                  max_members: int = MAX_MEMBERS) -> list[list[Group]]:
    """Top-``k`` groups per query, searching as wide as it takes (module docstring).

    Args:
        gallery: an ``index.Gallery`` (``search``, ``get``, ``group_totals``, ``group_counts``).
        queries: ``[Q, dim]`` descriptors.
        k: groups per query.
        group_by: ``person`` or ``camera_track``.
        cameras: the camera filter (as ``Gallery.search`` takes it).
        max_members: members kept per group.

    Returns:
        Per query, its groups best first, each with ``count`` = its items in the gallery under the filter.
    """
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    n_groups, n_items = gallery.group_totals(group_by, cameras)
    want = min(k, n_groups)
    answers: list[list[Group] | None] = [None] * len(q)
    fetch = first_fetch(k, n_groups, n_items)
    todo = np.arange(len(q))
    while todo.size:
        scores, ids = gallery.search(q[todo], max(1, fetch), cameras)
        found = sorted({int(i) for i in ids.ravel() if i >= 0})
        meta = dict(zip(found, gallery.get(found))) if found else {}
        short = []
        for row, (row_s, row_i) in zip(todo.tolist(), zip(scores, ids)):
            answers[row] = group_ranking(row_s, row_i, meta, group_by, k, max_members)
            if len(answers[row]) < want and fetch < n_items:
                short.append(row)
        todo = np.asarray(short, dtype=np.int64)
        fetch = min(n_items, fetch * 4)
    keyed = {g.key for row in answers for g in (row or []) if not is_singleton(g.key)}
    counts = gallery.group_counts(group_by, sorted(keyed, key=repr), cameras) if keyed else {}
    for row in answers:
        for g in row or []:
            g.count = 1 if is_singleton(g.key) else int(counts.get(g.key, g.found))
    return [row or [] for row in answers]
