"""The SYSU-MM01 and RegDB test protocols (paper §4.1; ARCHITECTURE.md §4).

SYSU-MM01 (Wu et al., ICCV 2017): queries are every test-identity image of the infrared cameras 3
and 6; each trial draws a gallery of 1 (single-shot) or 10 (multi-shot; all if fewer) random images
per identity per RGB camera — cameras 1, 2, 4, 5 for all-search, 1, 2 for indoor-search — and the
reported numbers are the mean over 10 seeded trials, with their standard deviation as the spread.
The public cross-modal baseline queries cameras 3 and 6 in both modes; we do the same so numbers
are comparable (the paper's text says camera 3 only for indoor-search).

RegDB (Nguyen et al., 2017): a trial is one random 206/206 identity split; a model is trained on
one split, so it is evaluated on that split's test half, in both directions (visible→thermal and
thermal→visible). Ten trials means ten models; average their JSON results.

Every image's descriptor is extracted once; galleries are drawn from the cached features.
Metric dicts hold fractions in [0, 1]: ``r1, r5, r10, r20, mAP, mINP`` and the same keys with
``_std`` (population standard deviation over the trials), plus ``trials`` and ``cmc`` (mean curve).
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.data.records import Record
from training.evaluation import eval_regdb, eval_sysu
from training.features import cosine_distance, extract_features

log = logging.getLogger(__name__)

#: Gallery cameras per SYSU-MM01 search mode.
SYSU_MODES: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
#: Gallery images per identity per camera in each SYSU-MM01 shot setting.
SYSU_SHOTS: dict[str, int] = {"single": 1, "multi": 10}
SYSU_QUERY_CAMS: tuple[int, ...] = (3, 6)
#: Ranks reported in the metric dicts.
RANKS: tuple[int, ...] = (1, 5, 10, 20)
#: k-reciprocal re-ranking parameters of Zhong et al. (CVPR 2017), their Market-1501 defaults.
RERANK_PARAMS: dict[str, float] = {"k1": 20, "k2": 6, "lambda_value": 0.3}


@dataclass
class ProtocolResult:
    """One protocol's outcome.

    Attributes:
        metrics: Mean and spread over trials (see the module docstring for the keys).
        per_trial: ``(cmc [max_rank], mAP, mINP)`` of every trial.
        example: Trial 0's ``(distmat [Q, G], query records, gallery records)``, for pictures.
    """

    metrics: dict[str, float | int | list[float]]
    per_trial: list[tuple[np.ndarray, float, float]] = field(repr=False)
    example: tuple[np.ndarray, list[Record], list[Record]] = field(repr=False)


# --------------------------------------------------------------------------------------------- SYSU


def _choice(value: str, valid: dict, what: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid values: {', '.join(valid)}")


def split_sysu(test: Sequence[Record], mode: str = "all") -> tuple[list[Record], list[Record]]:
    """SYSU-MM01 test records → ``(queries, gallery pool)``.

    Args:
        test: The test-identity records of every camera.
        mode: ``"all"`` or ``"indoor"`` (decides the gallery cameras).

    Returns:
        Queries (cameras 3 and 6) and the pool of candidate gallery images (the mode's RGB cameras),
        each sorted by (pid, camid, path) so draws do not depend on the parser's order.
    """
    _choice(mode, SYSU_MODES, "SYSU-MM01 mode")
    key = lambda r: (r.pid, r.camid, r.path)  # noqa: E731
    queries = sorted((r for r in test if r.camid in SYSU_QUERY_CAMS), key=key)
    pool = sorted((r for r in test if r.camid in SYSU_MODES[mode]), key=key)
    return queries, pool


def draw_sysu_gallery(pool: Sequence[Record], mode: str, shot: str, seed: int) -> np.ndarray:
    """One trial's gallery: indices into ``pool``, the files the community evaluation code picks.

    The public cross-modal baseline (``process_gallery_sysu`` in the AGW / CAJ ``data_manager.py``,
    whose galleries published SYSU-MM01 numbers use) seeds Python's ``random`` with the trial
    number, walks the test identities in sorted order and, for each, the mode's RGB cameras in the
    order 1, 2, 4, 5, and takes ``random.choice`` of that folder's sorted file list. We make the same
    calls on a private ``random.Random(seed)`` in the same order, so trial ``t`` (``seed = t``) draws
    the very same files and our single-shot numbers compare exactly with published ones.

    Multi-shot there takes ``np.random.choice(files, 10, replace=False)`` from NumPy's *global*
    stream, which the baseline never seeds per trial, so its multi-shot galleries depend on
    everything the process drew before and cannot be reproduced file for file. We draw the 10 from
    ``np.random.RandomState(seed)`` in the same walk order (all files when a folder has 10 or fewer,
    where the baseline would fail).

    Args:
        pool: Candidate gallery records (as from :func:`split_sysu`: sorted by pid, camera, path).
        mode: ``"all"`` (cameras 1, 2, 4, 5) or ``"indoor"`` (1, 2).
        shot: ``"single"`` (1 image per identity per camera) or ``"multi"`` (10, or all if fewer).
        seed: The trial's seed; the same seed draws the same gallery.

    Returns:
        Sorted int64 indices of the drawn records.
    """
    _choice(mode, SYSU_MODES, "SYSU-MM01 mode")
    _choice(shot, SYSU_SHOTS, "shot setting")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, r in enumerate(pool):
        if r.camid in SYSU_MODES[mode]:
            groups[(r.pid, r.camid)].append(i)
    for members in groups.values():
        members.sort(key=lambda i: pool[i].path)  # the baseline's sorted(os.listdir(...)) order
    py_rng, np_rng = random.Random(seed), np.random.RandomState(seed)
    picked: list[int] = []
    for pid in sorted({pid for pid, _ in groups}):
        for cam in SYSU_MODES[mode]:  # the baseline's camera loop order, not sorted-by-number
            members = groups.get((pid, cam))
            if not members:
                continue  # the baseline skips a camera folder that does not exist
            if shot == "single":
                picked.append(py_rng.choice(members))
            else:
                k = min(SYSU_SHOTS[shot], len(members))
                picked.extend(np_rng.choice(members, size=k, replace=False).tolist())
    return np.sort(np.asarray(picked, dtype=np.int64))


def sysu_galleries(pool: Sequence[Record], mode: str, shot: str, trials: int, seed: int) -> list[np.ndarray]:
    """The galleries of ``trials`` trials; trial ``t`` uses seed ``seed + t``."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    return [draw_sysu_gallery(pool, mode, shot, seed + t) for t in range(trials)]


def evaluate_sysu_features(q_feats: np.ndarray, queries: Sequence[Record], pool_feats: np.ndarray,
                           pool: Sequence[Record], galleries: Sequence[np.ndarray],
                           rerank: bool = False) -> ProtocolResult:
    """Run the SYSU-MM01 trials on precomputed descriptors.

    Args:
        q_feats: ``[Q, D]`` query descriptors (rows match ``queries``).
        queries: Query records (their pid and camid are used).
        pool_feats: ``[P, D]`` descriptors of the pool (only rows named by ``galleries`` are read).
        pool: Pool records.
        galleries: Index arrays into ``pool``, one per trial.
        rerank: Apply k-reciprocal re-ranking to each trial's distances.

    Returns:
        The :class:`ProtocolResult`.
    """
    q_pids = np.array([r.pid for r in queries])
    q_cams = np.array([r.camid for r in queries])
    per_trial, example = [], None
    for t, idx in enumerate(galleries):
        gallery = [pool[i] for i in idx]
        g_pids = np.array([r.pid for r in gallery])
        g_cams = np.array([r.camid for r in gallery])
        dist = _distances(q_feats, pool_feats[idx], rerank)
        per_trial.append(eval_sysu(dist, q_pids, g_pids, q_cams, g_cams))
        if t == 0:
            example = (dist, list(queries), gallery)
        log.debug("SYSU trial %d: R1 %.4f mAP %.4f", t, per_trial[-1][0][0], per_trial[-1][1])
    return ProtocolResult(summarize(per_trial), per_trial, example)


def evaluate_sysu(model, test: Sequence[Record], mode: str = "all", shot: str = "single", trials: int = 10,
                  seed: int = 0, rerank: bool = False, batch_size: int = 64, progress: bool = False,
                  cache: dict[str, np.ndarray] | None = None) -> ProtocolResult:
    """SYSU-MM01 protocol for a model: extract each needed image once, then run the trials.

    Args:
        model: A DFE (see :func:`training.features.extract_features`).
        test: The dataset's test records (all cameras).
        mode: ``"all"`` or ``"indoor"``.
        shot: ``"single"`` or ``"multi"``.
        trials: Number of gallery draws (10 in the protocol).
        seed: Seed of trial 0.
        rerank: k-reciprocal re-ranking.
        batch_size: Images per forward pass.
        progress: Show progress bars.
        cache: Optional ``{path: descriptor}`` shared between calls (e.g. all-search and
            indoor-search of one model) so that no image is embedded twice.

    Returns:
        The :class:`ProtocolResult`.
    """
    queries, pool = split_sysu(test, mode)
    if not queries or not pool:
        raise ValueError(f"SYSU-MM01 test split has {len(queries)} query images (cams 3, 6) and {len(pool)} "
                         f"gallery images (cams {SYSU_MODES[mode]}); both must be non-empty")
    galleries = sysu_galleries(pool, mode, shot, trials, seed)
    needed = np.unique(np.concatenate(galleries))  # union over trials: each image embedded once
    embed = _embedder(model, batch_size, progress, cache)
    q_feats = embed([r.path for r in queries])
    pool_feats = np.zeros((len(pool), q_feats.shape[1]), dtype=np.float32)
    pool_feats[needed] = embed([pool[i].path for i in needed])
    return evaluate_sysu_features(q_feats, queries, pool_feats, pool, galleries, rerank)


# -------------------------------------------------------------------------------------------- RegDB

REGDB_DIRECTIONS: dict[str, tuple[str, str]] = {  # name -> (query modality, gallery modality)
    "visible_to_thermal": ("rgb", "ir"),
    "thermal_to_visible": ("ir", "rgb"),
}


def evaluate_regdb(model, test: Sequence[Record], rerank: bool = False, batch_size: int = 64,
                   progress: bool = False) -> dict[str, ProtocolResult]:
    """RegDB protocol on one trial's test half, in both directions.

    Args:
        model: A DFE.
        test: The trial's test records (visible camid 1, thermal camid 2).
        rerank: k-reciprocal re-ranking.
        batch_size: Images per forward pass.
        progress: Show progress bars.

    Returns:
        ``{"visible_to_thermal": ..., "thermal_to_visible": ...}``; each has ``trials = 1``, zero spread.
    """
    records = sorted(test, key=lambda r: (r.pid, r.camid, r.path))
    feats = _embedder(model, batch_size, progress)([r.path for r in records])
    return evaluate_regdb_features(feats, records, rerank)


def evaluate_regdb_features(feats: np.ndarray, records: Sequence[Record],
                            rerank: bool = False) -> dict[str, ProtocolResult]:
    """RegDB both directions on precomputed descriptors (rows of ``feats`` match ``records``)."""
    out = {}
    for name, (q_mod, g_mod) in REGDB_DIRECTIONS.items():
        qi = [i for i, r in enumerate(records) if r.modality == q_mod]
        gi = [i for i, r in enumerate(records) if r.modality == g_mod]
        if not qi or not gi:
            raise ValueError(f"RegDB test split needs both visible and thermal images; found {len(qi)} {q_mod} "
                             f"and {len(gi)} {g_mod}")
        dist = _distances(feats[qi], feats[gi], rerank)
        result = eval_regdb(dist, np.array([records[i].pid for i in qi]), np.array([records[i].pid for i in gi]))
        out[name] = ProtocolResult(summarize([result]), [result],
                                   (dist, [records[i] for i in qi], [records[i] for i in gi]))
    return out


# ------------------------------------------------------------------------------------------ helpers


def summarize(per_trial: Sequence[tuple[np.ndarray, float, float]]) -> dict[str, float | int | list[float]]:
    """Mean and population std over trials of rank-k, mAP and mINP (fractions in [0, 1])."""
    cmcs = np.stack([c for c, _, _ in per_trial])                     # [T, max_rank]
    values = {f"r{k}": cmcs[:, k - 1] for k in RANKS if k <= cmcs.shape[1]}
    values["mAP"] = np.array([m for _, m, _ in per_trial])
    values["mINP"] = np.array([m for _, _, m in per_trial])
    metrics: dict[str, float | int | list[float]] = {}
    for key, v in values.items():
        metrics[key] = float(v.mean())
        metrics[f"{key}_std"] = float(v.std())
    metrics["trials"] = len(per_trial)
    metrics["cmc"] = [float(x) for x in cmcs.mean(axis=0)]
    return metrics


def _distances(q_feats: np.ndarray, g_feats: np.ndarray, rerank: bool) -> np.ndarray:
    """Cosine distances, optionally refined by k-reciprocal re-ranking (Zhong et al., CVPR 2017)."""
    q_g = cosine_distance(q_feats, g_feats)
    if not rerank:
        return q_g
    from training.reranking import k_reciprocal_rerank  # only needed with the flag

    k1 = int(min(RERANK_PARAMS["k1"], max(1, len(g_feats) - 1)))  # k1 must fit the gallery
    k2 = int(min(RERANK_PARAMS["k2"], k1))
    return np.asarray(k_reciprocal_rerank(q_g, cosine_distance(q_feats, q_feats), cosine_distance(g_feats, g_feats),
                                          k1=k1, k2=k2, lambda_value=RERANK_PARAMS["lambda_value"]))


def _embedder(model, batch_size: int, progress: bool,
              cache: dict[str, np.ndarray] | None = None) -> Callable[[list[str]], np.ndarray]:
    """``paths -> [len(paths), D]`` descriptors, embedding only paths not already in ``cache``."""
    cache = {} if cache is None else cache

    def embed(paths: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(p for p in paths if p not in cache))
        if missing:
            cache.update(zip(missing, extract_features(model, missing, batch_size=batch_size, progress=progress)))
        if not paths:
            return np.zeros((0, getattr(model, "descriptor_dim", 0)), dtype=np.float32)
        return np.stack([cache[p] for p in paths])
    return embed


def results_to_json(results: dict[str, ProtocolResult]) -> dict[str, dict]:
    """``{setting: metrics}`` for JSON files."""
    return {name: res.metrics for name, res in results.items()}


TABLE_METRICS: tuple[tuple[str, str], ...] = (("r1", "R1"), ("r10", "R10"), ("r20", "R20"), ("mAP", "mAP"),
                                              ("mINP", "mINP"))


def format_table(results: dict[str, dict]) -> str:
    """Paper-style table: one row per setting, ``mean ± std`` in percent.

    Args:
        results: ``{setting name: metrics dict}`` as :func:`training.protocols.summarize` makes.

    Returns:
        The table as text.
    """
    width = max([len("setting")] + [len(name) for name in results])
    head = f"{'setting':<{width}}" + "".join(f"  {label:>14}" for _, label in TABLE_METRICS)  # cell: 14 chars
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        cells = []
        for key, _ in TABLE_METRICS:
            if key not in m:
                cells.append(f"  {'-':>14}")
                continue
            cells.append(f"  {100 * m[key]:>6.2f} ± {100 * m.get(key + '_std', 0.0):>5.2f}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    return "\n".join(lines)
