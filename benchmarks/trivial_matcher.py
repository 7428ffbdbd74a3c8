"""How hard is the synthetic data? Trivial nearest-neighbour matchers, cross- and within-modality.

The synthetic generator must not be easy: identity is meant to cross modalities only through
patterns, proportions and accessories, never through colour or brightness. This script measures
raw-pixel and grey-histogram nearest neighbour (plus HOG with unsigned gradients, a hand-made
contrast-polarity-invariant descriptor, as a sign that the cross-modal cues are there to learn) on the
test identities of a generated SYSU-MM01-layout set:

* IR -> RGB: SYSU-MM01 all-search style: queries are all test images of IR cameras 3 and 6; the
  gallery is one random image per identity per RGB camera (1, 2, 4, 5), camera 2 dropped for
  camera-3 queries (they share a location); 10 seeded gallery draws, averaged.
* RGB -> RGB: queries are all test images of one RGB camera, the gallery one random image per
  identity from each *other* RGB camera, over every RGB camera as query camera; same draws.

CMC is computed here directly (rank of the first correct identity among distinct gallery items).

Usage::

    python -m benchmarks.trivial_matcher            # generates 300 ids (60 test ids) in a temp folder
    python -m benchmarks.trivial_matcher --data-root data/synthetic_sysu
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from training.data import build_dataset
from training.data.images import read_image
from training.data.synthetic import generate

RESULTS = Path(__file__).resolve().parent / "results"
TRIALS = 10
H, W = 192, 64


def _centre(img: np.ndarray) -> np.ndarray:
    """Grey image cut to where the detector-style crop puts the person (rows 8-92%, columns 19-81%).

    Cutting away most of the background is the one thing a trivial matcher can do to look at the person.
    """
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    return g[round(0.08 * h):round(0.92 * h), round(0.19 * w):round(0.81 * w)]


def feat_pixels(img: np.ndarray) -> np.ndarray:
    """Grey person-centre crop downsampled to 32 x 10, as a vector in 0..1 (Euclidean distance)."""
    return cv2.resize(_centre(img), (10, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0


def feat_histogram(img: np.ndarray) -> np.ndarray:
    """32-bin grey-level histogram of the person-centre crop, square-rooted (Hellinger distance)."""
    h = np.bincount(_centre(img).ravel() // 8, minlength=32).astype(np.float32)
    return np.sqrt(h / h.sum())


_HOG = cv2.HOGDescriptor((32, 96), (16, 16), (8, 8), (8, 8), 9)  # unsigned gradients (default)


def feat_hog(img: np.ndarray) -> np.ndarray:
    """HOG of the grey image at 96 x 32 (unsigned gradients ignore which side is brighter)."""
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 96), interpolation=cv2.INTER_AREA)
    return _HOG.compute(g).ravel()


FEATURES = {"raw_pixels": feat_pixels, "grey_histogram": feat_histogram, "hog": feat_hog}


def cmc(dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, ranks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """CMC at ``ranks`` for distances ``[Q, G]``; each query's gallery holds every identity once or more.

    Args:
        dist: Query-by-gallery distances.
        q_pids: ``[Q]`` query identities.
        g_pids: ``[G]`` gallery identities.
        ranks: Which ranks to report.

    Returns:
        ``{"rank1": ..., ...}`` in percent.
    """
    order = np.argsort(dist, axis=1, kind="stable")
    hits = g_pids[order] == q_pids[:, None]
    # Rank of the first correct gallery item, counted over distinct identities ahead of it.
    first = np.empty(len(q_pids), int)
    for i, row in enumerate(order):
        seen, k = set(), 0
        for j in row:
            if g_pids[j] == q_pids[i]:
                break
            if g_pids[j] not in seen:
                seen.add(g_pids[j])
                k += 1
        first[i] = k
    assert hits.any(axis=1).all()
    return {f"rank{r}": float(np.mean(first < r) * 100) for r in ranks}


def _distances(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def evaluate(test, feats: np.ndarray, seed: int = 0) -> dict:
    """IR->RGB and RGB->RGB CMC of one feature over 10 single-shot gallery draws."""
    pids = np.array([r.pid for r in test])
    cams = np.array([r.camid for r in test])
    out = {}
    for task in ("ir_to_rgb", "rgb_to_rgb"):
        scores = []
        for trial in range(TRIALS):
            rng = np.random.default_rng([seed, trial])
            # One random image per (identity, RGB camera).
            pick = {}
            for (pid, cam) in sorted({(p, c) for p, c in zip(pids, cams) if c in (1, 2, 4, 5)}):
                idx = np.flatnonzero((pids == pid) & (cams == cam))
                pick[pid, cam] = int(rng.choice(idx))
            q_cams = (3, 6) if task == "ir_to_rgb" else (1, 2, 4, 5)
            for qc in q_cams:
                q = np.flatnonzero(cams == qc)
                if task == "ir_to_rgb":
                    g_cams = (1, 4, 5) if qc == 3 else (1, 2, 4, 5)
                else:
                    g_cams = tuple(c for c in (1, 2, 4, 5) if c != qc)
                g = np.array([i for (p, c), i in pick.items() if c in g_cams])
                r = cmc(_distances(feats[q], feats[g]), pids[q], pids[g])
                scores.append((len(q), r))
        total = sum(n for n, _ in scores)
        out[task] = {k: sum(n * r[k] for n, r in scores) / total for k in scores[0][1]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=None, help="existing SYSU-layout set (default: generate)")
    parser.add_argument("--ids", type=int, default=300, help="identities to generate (20%% become test ids)")
    parser.add_argument("--images-per-camera", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "trivial_matcher")
    args = parser.parse_args(argv)
    tmp = None
    if args.data_root is None:
        tmp = tempfile.TemporaryDirectory(prefix="trivial_matcher_")
        t0 = time.perf_counter()
        root = generate(Path(tmp.name) / "sysu", layout="sysu", ids=args.ids, seed=args.seed,
                        images_per_camera=args.images_per_camera, difficulty=args.difficulty, show_progress=False)
        gen_s = time.perf_counter() - t0
    else:
        root, gen_s = args.data_root, None
    test = build_dataset("sysu", root).test
    images = [read_image(r.path, H, W) for r in test]
    results = {}
    for name, fn in FEATURES.items():
        results[name] = evaluate(test, np.stack([fn(im) for im in images]), seed=args.seed)
    n_ids = len({r.pid for r in test})
    report = {
        "command": "python -m benchmarks.trivial_matcher " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "python": platform.python_version()},
        "data": {"root": str(root) if tmp is None else "(generated, temporary)", "ids": args.ids,
                 "images_per_camera": args.images_per_camera, "seed": args.seed, "difficulty": args.difficulty,
                 "test_ids": n_ids, "test_images": len(test), "generate_seconds": gen_s},
        "protocol": f"single-shot galleries, {TRIALS} draws averaged; IR->RGB SYSU all-search (cam2 dropped "
                    "for cam3 queries); RGB->RGB gallery from the other RGB cameras",
        "chance_rank1": 100.0 / n_ids,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Trivial matchers on synthetic data", "",
        f"Command: `{report['command'].strip()}`  ", f"Date: {report['date']}  ",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}  ",
        f"Data: {n_ids} test identities, {len(test)} test images (seed {args.seed}, difficulty {args.difficulty})  ",
        f"Protocol: {report['protocol']}. Chance rank-1: {report['chance_rank1']:.1f}%", "",
        "| matcher | IR->RGB rank-1 | rank-5 | rank-10 | RGB->RGB rank-1 | rank-5 | rank-10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        a, b = r["ir_to_rgb"], r["rgb_to_rgb"]
        lines.append(f"| {name} | {a['rank1']:.1f} | {a['rank5']:.1f} | {a['rank10']:.1f} | "
                     f"{b['rank1']:.1f} | {b['rank5']:.1f} | {b['rank10']:.1f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
