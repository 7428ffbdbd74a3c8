"""The modality-gap table: does the descriptor cross the modality gap for people it has never seen?

The protocol metrics (``training.protocols``) answer one question with one number. When that number
is near chance they do not say *why*. A model can fail across modalities while working within one
(it learned one code for colour and another for infrared), or fail everywhere (it learned nothing),
or work on the training identities only (it tied the two codes together per training label, through
the shared classifier, and nothing ties them for a new person). This module tells these apart:

===================  ==============================================================
``test_ir_to_rgb``   infrared queries vs RGB gallery, test identities: the task
``test_rgb_to_rgb``  RGB vs RGB (other RGB cameras), test identities
``test_ir_to_ir``    infrared vs infrared (the other IR camera), test identities
``train_ir_to_rgb``  infrared vs RGB on as many *training* identities as the test split has
===================  ==============================================================

Each setting takes the first :data:`IMAGES_PER_CAMERA` images (sorted by path) of every
(identity, camera); a query is ranked against every gallery image of the other modality or, within
a modality, against the gallery images of the *other* cameras of that modality (cross-camera
re-identification, as the within-modality benchmarks define it; with a single camera per modality,
as in RegDB, against the other images of that camera). Rank-1 and mAP use cosine similarity on
the full list, so chance rank-1 is about ``1 / identities``.

The alignment measures are computed on the test identities' descriptors (L2-normalised), and
move smoothly while rank-1 is still noise:

* ``xm_pos`` / ``xm_neg``: mean cosine of same-person / different-person RGB-IR pairs;
  ``xm_margin`` is their difference.
* ``xm_auc``: the probability that a random same-person RGB-IR pair is more similar than a random
  different-person pair (ROC AUC; 0.5 = no cross-modal identity information, 1 = separable).
* ``rgb_auc``: the same within RGB (across cameras), the reference the cross-modal AUC should reach.
* ``mmd``: squared distance between the mean RGB and the mean infrared descriptor (the linear
  maximum mean discrepancy, Gretton et al., JMLR 2012): how far apart the two modalities sit as a
  whole, the offset that the distribution loss L_d exists to remove.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from training.data.records import Record
from training.features import l2_normalize

log = logging.getLogger(__name__)

#: Images taken from every (identity, camera) group.
IMAGES_PER_CAMERA = 4
#: setting name -> (split, query modality, gallery modality)
GAP_SETTINGS: dict[str, tuple[str, str, str]] = {
    "test_ir_to_rgb": ("test", "ir", "rgb"),
    "test_rgb_to_rgb": ("test", "rgb", "rgb"),
    "test_ir_to_ir": ("test", "ir", "ir"),
    "train_ir_to_rgb": ("train", "ir", "rgb"),
}
#: Printed column labels, in table order.
GAP_LABELS: dict[str, str] = {"test_ir_to_rgb": "test IR->RGB", "test_rgb_to_rgb": "test RGB->RGB",
                              "test_ir_to_ir": "test IR->IR", "train_ir_to_rgb": "train IR->RGB"}
ALIGNMENT_KEYS: tuple[str, ...] = ("xm_pos", "xm_neg", "xm_margin", "xm_auc", "rgb_auc", "mmd")


def gap_subset(records: Sequence[Record], per_camera: int = IMAGES_PER_CAMERA,
               max_ids: int | None = None, seed: int = 0) -> list[Record]:
    """The images a gap setting uses: the first ``per_camera`` of every (identity, camera).

    Args:
        records: A split's records (both modalities).
        per_camera: Images kept per (identity, camera), the first ones by path.
        max_ids: Keep at most this many identities (a seeded draw), so that the training-identity
            figure is measured at the same chance level as the test figure.
        seed: Seed of that draw.

    Returns:
        The kept records sorted by (pid, camid, path).
    """
    groups: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for r in records:
        groups[(r.pid, r.camid)].append(r)
    pids = sorted({pid for pid, _ in groups})
    if max_ids is not None and len(pids) > max_ids:
        pids = sorted(np.random.default_rng(seed).choice(pids, size=max_ids, replace=False).tolist())
    keep = set(pids)
    out: list[Record] = []
    for key in sorted(groups):
        if key[0] in keep:
            out.extend(sorted(groups[key], key=lambda r: r.path)[:per_camera])
    return out


def _rank1_map(sim: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """Rank-1 and mAP on the full list; ``valid[q, g]`` False removes a gallery item for query q."""
    sim = np.where(valid, sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    match = (g_pids[order] == q_pids[:, None]) & np.take_along_axis(valid, order, axis=1)
    has = match.any(axis=1)
    if not has.any():
        return float("nan"), float("nan")
    match = match[has]
    hits = np.cumsum(match, axis=1)
    precision = hits / np.arange(1, match.shape[1] + 1)
    ap = (precision * match).sum(axis=1) / match.sum(axis=1)
    return float(match[:, 0].mean()), float(ap.mean())


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC of scores ``pos`` against ``neg`` (Mann-Whitney U with mid-ranks for ties)."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.arange(1, scores.size + 1)
    # mid-ranks for tied scores
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def setting_metrics(feats: np.ndarray, records: Sequence[Record], query_mod: str,
                    gallery_mod: str) -> dict[str, float]:
    """Rank-1 and mAP of one setting on precomputed descriptors (rows of ``feats`` match ``records``)."""
    mods = np.array([r.modality for r in records])
    cams = np.array([r.camid for r in records])
    pids = np.array([r.pid for r in records])
    qi, gi = np.flatnonzero(mods == query_mod), np.flatnonzero(mods == gallery_mod)
    if qi.size == 0 or gi.size == 0:
        raise ValueError(f"gap setting {query_mod}->{gallery_mod}: {qi.size} query and {gi.size} gallery images")
    x = l2_normalize(feats)
    sim = x[qi] @ x[gi].T
    valid = qi[:, None] != gi[None, :]
    if query_mod == gallery_mod and np.unique(cams[gi]).size > 1:
        valid &= cams[qi][:, None] != cams[gi][None, :]  # cross-camera within a modality
    r1, mAP = _rank1_map(sim, pids[qi], pids[gi], valid)
    return {"r1": r1, "mAP": mAP, "queries": int(qi.size), "gallery": int(gi.size),
            "ids": int(np.unique(pids[qi]).size)}


def alignment(feats: np.ndarray, records: Sequence[Record]) -> dict[str, float]:
    """Cross-modal alignment of one split's descriptors (see the module docstring for the keys)."""
    x = l2_normalize(feats)
    mods = np.array([r.modality for r in records])
    cams = np.array([r.camid for r in records])
    pids = np.array([r.pid for r in records])
    rgb, ir = np.flatnonzero(mods == "rgb"), np.flatnonzero(mods == "ir")
    if rgb.size == 0 or ir.size == 0:
        raise ValueError(f"alignment needs both modalities, got {rgb.size} RGB and {ir.size} IR descriptors")
    sim = x[rgb] @ x[ir].T
    same = pids[rgb][:, None] == pids[ir][None, :]
    pos, neg = sim[same], sim[~same]
    rr = x[rgb] @ x[rgb].T
    other_cam = cams[rgb][:, None] != cams[rgb][None, :]
    rr_same = (pids[rgb][:, None] == pids[rgb][None, :]) & other_cam
    rr_diff = (pids[rgb][:, None] != pids[rgb][None, :]) & other_cam
    gap = x[rgb].mean(axis=0) - x[ir].mean(axis=0)
    xm_pos, xm_neg = float(pos.mean()) if pos.size else float("nan"), float(neg.mean())
    return {"xm_pos": xm_pos, "xm_neg": xm_neg, "xm_margin": xm_pos - xm_neg, "xm_auc": roc_auc(pos, neg),
            "rgb_auc": roc_auc(rr[rr_same], rr[rr_diff]), "mmd": float(gap @ gap)}


def modality_gap(embed: Callable[[list[str]], np.ndarray], train: Sequence[Record],
                 test: Sequence[Record], seed: int = 0) -> dict[str, dict[str, float]]:
    """The gap table and the test alignment of a model.

    Args:
        embed: ``paths -> [N, D]`` descriptors (e.g. ``training.features.extract_features`` bound to
            a model).
        train: Training records; ``train_ir_to_rgb`` draws as many identities as the test split has.
        test: Test records.
        seed: Seed of the training-identity draw.

    Returns:
        ``{setting: {"r1", "mAP", "queries", "gallery", "ids"}}`` for each of :data:`GAP_SETTINGS`,
        plus ``"alignment": {...}`` (:data:`ALIGNMENT_KEYS`) on the test identities.
    """
    test_sub = gap_subset(test)
    n_ids = len({r.pid for r in test_sub})
    subsets = {"test": test_sub, "train": gap_subset(train, max_ids=n_ids, seed=seed)}
    feats = {split: embed([r.path for r in recs]) for split, recs in subsets.items()}
    out: dict[str, dict[str, float]] = {}
    for name, (split, q_mod, g_mod) in GAP_SETTINGS.items():
        out[name] = setting_metrics(feats[split], subsets[split], q_mod, g_mod)
    out["alignment"] = alignment(feats["test"], subsets["test"])
    return out


def model_gap(model, train: Sequence[Record], test: Sequence[Record], batch_size: int = 64,
              progress: bool = False) -> dict[str, dict[str, float]]:
    """:func:`modality_gap` of a DFE model (descriptors as serving computes them, no flip)."""
    from training.features import extract_features

    return modality_gap(lambda paths: extract_features(model, paths, batch_size=batch_size, progress=progress),
                        train, test)


def format_gap(gap: dict[str, dict[str, float]]) -> str:
    """The gap table and the alignment line, as printed by ``evaluate`` and ``train``."""
    names = [n for n in GAP_SETTINGS if n in gap]
    head = "modality gap (rank-1 / mAP %)  " + "  ".join(f"{GAP_LABELS[n]:>15}" for n in names)
    row = " " * len("modality gap (rank-1 / mAP %)  ") + "  ".join(
        f"{100 * gap[n]['r1']:>6.1f} / {100 * gap[n]['mAP']:>5.1f}" for n in names)
    ids = gap[names[0]]["ids"] if names else 0
    lines = [head, row, f"  ({ids} identities per setting: chance rank-1 ~ {100 / max(ids, 1):.1f} %)"]
    a = gap.get("alignment")
    if a:
        lines.append("alignment (test): " + ", ".join(
            f"{k} {a[k]:.3f}" if k != "mmd" else f"{k} {a[k]:.4f}" for k in ALIGNMENT_KEYS))
    return "\n".join(lines)


def flat_gap(gap: dict[str, dict[str, float]]) -> dict[str, float]:
    """One flat row (``test_ir_to_rgb_r1``, ..., ``xm_auc``, ...) for CSV learning curves."""
    row = {f"{n}_{m}": round(float(gap[n][m]), 5) for n in GAP_SETTINGS if n in gap for m in ("r1", "mAP")}
    row.update({k: round(float(v), 5) for k, v in gap.get("alignment", {}).items()})
    return row
