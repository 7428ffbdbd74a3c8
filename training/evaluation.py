"""Ranking metrics for visible-infrared re-ID: CMC, mAP and mINP as published papers compute them.

Published SYSU-MM01 and RegDB numbers come from ``eval_sysu`` / ``eval_regdb`` in the public
cross-modal re-ID baseline of Ye et al. ("Deep Learning for Person Re-identification: A Survey and
Outlook", the AGW / Cross-Modal-Re-ID-baseline code, file ``eval_metrics.py``). These functions are
our own vectorised implementation of the same semantics, so our numbers are comparable with theirs:

* The gallery is ranked per query by ``argsort`` of the distance row (smaller = more similar).
* SYSU-MM01: for a query from camera 3, every gallery image from camera 2 is dropped (the two
  cameras share a location, following the dataset authors' protocol). Nothing else is dropped.
* SYSU-MM01 CMC is computed on the ranking list *reduced to unique identities* (each identity kept
  at its first occurrence), following the dataset authors' released code; mAP and mINP use the full
  kept list. RegDB CMC is the standard CMC on the full list.
* A query whose identity has no kept gallery image is skipped by every metric. (The baseline appends
  an all-zero CMC row for such queries but divides by the number of *valid* queries, which is the
  same as skipping them, so we skip them outright.) No valid query at all raises ``ValueError``.
* mINP (Ye et al.) of a query = number of true matches / rank of the hardest (last) true match.

Two documented choices where the baseline's behaviour is incidental rather than intended:

* Ties: the baseline uses NumPy's default (unstable) ``argsort``, so tied distances are ordered
  arbitrarily. We sort stably: ties are broken by gallery order, which makes results reproducible.
  For tie-free distance matrices the results are identical.
* Short galleries: the baseline shortens the CMC to the gallery size (and produces a ragged array,
  i.e. crashes, when a query's reduced list is shorter than ``max_rank``). We always return
  ``max_rank`` values, extending the curve with its last value, which is what a CMC means: a match
  found by rank r is found by every later rank.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

#: Queries are processed in blocks so that the [block, num_gallery] work arrays stay small
#: (SYSU-MM01 multi-shot is ~3.8k queries x ~3.8k gallery images).
_BLOCK = 512


def eval_sysu(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
              g_camids: np.ndarray, max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 metrics: unique-identity CMC, mAP, mINP with the camera-3 / camera-2 rule.

    Args:
        distmat: ``[num_query, num_gallery]`` distances, smaller = more similar.
        q_pids: ``[num_query]`` query identities.
        g_pids: ``[num_gallery]`` gallery identities.
        q_camids: ``[num_query]`` query cameras (SYSU numbering, IR queries are 3 or 6).
        g_camids: ``[num_gallery]`` gallery cameras.
        max_rank: Length of the returned CMC curve.

    Returns:
        ``(cmc, mAP, mINP)``: ``cmc`` float64 ``[max_rank]`` with ``cmc[k]`` the fraction of valid
        queries whose identity is among the first ``k + 1`` distinct identities of the kept ranking;
        ``mAP`` and ``mINP`` floats in [0, 1], averaged over the valid queries.

    Raises:
        ValueError: On malformed inputs, or when no query has a valid gallery match.
    """
    distmat, q_pids, g_pids = _check(distmat, q_pids, g_pids, max_rank)
    q_camids = _check_vector(q_camids, distmat.shape[0], "q_camids")
    g_camids = _check_vector(g_camids, distmat.shape[1], "g_camids")
    # Gallery columns grouped by identity, used to find each identity's first kept occurrence.
    g_order = np.argsort(g_pids, kind="stable")
    identities, starts = np.unique(g_pids[g_order], return_index=True)

    ranks, aps, inps = [], [], []
    for lo in range(0, distmat.shape[0], _BLOCK):
        sl = slice(lo, lo + _BLOCK)
        order = np.argsort(distmat[sl], axis=1, kind="stable")            # [b, G] gallery index by rank
        # Drop camera-2 gallery images for camera-3 queries (same location, dataset protocol).
        keep = ~((q_camids[sl, None] == 3) & (g_camids[order] == 2))       # [b, G] in ranked order
        match = g_pids[order] == q_pids[sl, None]                          # [b, G] in ranked order
        ap, inp, valid = _ap_inp(match, keep)
        aps.append(ap)
        inps.append(inp)
        ranks.append(_unique_identity_rank(order, keep, q_pids[sl], g_order, identities, starts)[valid])
    return _finish(np.concatenate(ranks), np.concatenate(aps), np.concatenate(inps), max_rank)


def eval_regdb(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
               max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """RegDB metrics: standard CMC, mAP, mINP over the full gallery (nothing is dropped).

    The baseline's "same identity and same camera" filter never fires on RegDB because queries
    and gallery come from different cameras (visible vs thermal), so every gallery image is kept.

    Args:
        distmat: ``[num_query, num_gallery]`` distances, smaller = more similar.
        q_pids: ``[num_query]`` query identities.
        g_pids: ``[num_gallery]`` gallery identities.
        max_rank: Length of the returned CMC curve.

    Returns:
        ``(cmc, mAP, mINP)``: ``cmc`` float64 ``[max_rank]`` with ``cmc[k]`` the fraction of valid
        queries with a true match within the first ``k + 1`` gallery images; ``mAP`` and ``mINP``
        floats in [0, 1], averaged over the valid queries.

    Raises:
        ValueError: On malformed inputs, or when no query has a valid gallery match.
    """
    distmat, q_pids, g_pids = _check(distmat, q_pids, g_pids, max_rank)
    ranks, aps, inps = [], [], []
    for lo in range(0, distmat.shape[0], _BLOCK):
        sl = slice(lo, lo + _BLOCK)
        order = np.argsort(distmat[sl], axis=1, kind="stable")            # [b, G]
        match = g_pids[order] == q_pids[sl, None]                          # [b, G]
        keep = np.ones_like(match)
        ap, inp, valid = _ap_inp(match, keep)
        aps.append(ap)
        inps.append(inp)
        # Standard CMC: 0-based position of the first true match in the full ranking.
        ranks.append(np.argmax(match, axis=1)[valid])
    return _finish(np.concatenate(ranks), np.concatenate(aps), np.concatenate(inps), max_rank)


def _ap_inp(match: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average precision and INP of each query on its kept ranking list.

    Args:
        match: ``[b, G]`` bool, ranked gallery item has the query's identity.
        keep: ``[b, G]`` bool, ranked gallery item survives the camera filter.

    Returns:
        ``(ap [v], inp [v], valid [b])`` where ``valid`` marks queries with at least one kept match
        and ``ap`` / ``inp`` hold the values of those ``v`` valid queries only.
    """
    hit = match & keep                                                     # true matches, kept
    kept_pos = np.cumsum(keep, axis=1)                                     # 1-based rank in kept list
    hits_so_far = np.cumsum(hit, axis=1)                                   # matches up to each rank
    num_rel = hit.sum(axis=1)                                              # [b] matches per query
    valid = num_rel > 0
    if not valid.any():
        return np.empty(0), np.empty(0), valid
    hit, kept_pos, hits_so_far, num_rel = hit[valid], kept_pos[valid], hits_so_far[valid], num_rel[valid]
    # AP = mean over the true matches of precision at their rank (precision = hits / kept rank).
    precision = np.where(hit, hits_so_far / np.maximum(kept_pos, 1), 0.0)
    ap = precision.sum(axis=1) / num_rel
    # INP = matches / kept rank of the last true match (last True = first True of the reversed row).
    last = hit.shape[1] - 1 - np.argmax(hit[:, ::-1], axis=1)
    inp = num_rel / kept_pos[np.arange(len(last)), last]
    return ap, inp, valid


def _unique_identity_rank(order: np.ndarray, keep: np.ndarray, q_pids: np.ndarray, g_order: np.ndarray,
                          identities: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """0-based rank of each query's identity in its kept ranking reduced to unique identities.

    The reduced list keeps each identity at its first occurrence (SYSU-MM01 authors' CMC), so the
    query identity's rank is the number of identities whose first kept occurrence comes earlier.

    Args:
        order: ``[b, G]`` gallery indices by rank.
        keep: ``[b, G]`` kept flags in ranked order.
        q_pids: ``[b]`` query identities.
        g_order: ``[G]`` gallery indices grouped by identity (stable argsort of ``g_pids``).
        identities: ``[U]`` sorted distinct gallery identities.
        starts: ``[U]`` start of each identity's group in ``g_order``.

    Returns:
        ``[b]`` int ranks; queries with no kept match get a meaningless value (filtered by caller).
    """
    b, g = order.shape
    big = g + 1
    # Kept position of every gallery image, back in gallery-index space ("big" = dropped).
    pos_ranked = np.where(keep, np.cumsum(keep, axis=1) - 1, big)
    pos = np.empty_like(pos_ranked)
    np.put_along_axis(pos, order, pos_ranked, axis=1)
    # First kept occurrence of each identity: minimum position over its gallery images. [b, U]
    first = np.minimum.reduceat(pos[:, g_order], starts, axis=1)
    own_col = np.clip(np.searchsorted(identities, q_pids), 0, len(identities) - 1)
    own = first[np.arange(b), own_col]                                     # [b] query identity
    # Identities appearing (first) before the query identity in the kept list.
    return (first < own[:, None]).sum(axis=1)


def _finish(first_ranks: np.ndarray, aps: np.ndarray, inps: np.ndarray,
            max_rank: int) -> tuple[np.ndarray, float, float]:
    """Average per-query results over the valid queries into ``(cmc [max_rank], mAP, mINP)``."""
    if len(first_ranks) == 0:
        raise ValueError("no query has a valid match in the gallery (no query identity appears among the "
                         "kept gallery images); check that query and gallery share identities")
    # cmc[k] = fraction of valid queries whose first (unique-identity) match is at 0-based rank <= k.
    cmc = (first_ranks[None, :] <= np.arange(max_rank)[:, None]).mean(axis=1)
    return cmc.astype(np.float64), float(np.mean(aps)), float(np.mean(inps))


def _check(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
           max_rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert the common inputs (named errors instead of broadcasting surprises)."""
    distmat = np.asarray(distmat)
    if distmat.ndim != 2 or distmat.shape[0] == 0 or distmat.shape[1] == 0:
        raise ValueError(f"distmat must be a non-empty 2-D [num_query, num_gallery] array, got shape {distmat.shape}")
    if not np.issubdtype(distmat.dtype, np.number):
        raise ValueError(f"distmat must be numeric, got dtype {distmat.dtype}")
    if np.isnan(distmat).any():
        raise ValueError("distmat contains NaN; distances must be comparable to rank the gallery")
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
    q_pids = _check_vector(q_pids, distmat.shape[0], "q_pids")
    g_pids = _check_vector(g_pids, distmat.shape[1], "g_pids")
    return distmat, q_pids, g_pids


def _check_vector(values: np.ndarray, length: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) to match distmat, got {values.shape}")
    return values
