"""How hard is the synthetic data? Trivial matchers, a shape descriptor and an attribute oracle.

The synthetic generator must not be easy: identity is meant to cross modalities only through
patterns, proportions and accessories, never through colour or brightness. This script measures,
on the test identities of generated SYSU-MM01- or RegDB-layout sets, with the *same* splits and metrics the
trained models are measured with:

* the modality-gap table of ``training.gap`` (test IR->RGB, RGB->RGB, IR->IR; train IR->RGB) and
  its cross-modal AUC;
* the dataset's protocol (``training.protocols``): SYSU-MM01 all-search single-shot over 10 gallery
  draws, or RegDB (trial 1) thermal -> visible;

for these matchers (cosine similarity on each feature):

* ``raw_pixels``: the grey person-centre crop downsampled to 32 x 10, mean-removed;
* ``grey_histogram``: a 32-bin grey-level histogram of that crop, square-rooted (cosine is then
  the Bhattacharyya coefficient);
* ``hog``: HOG with unsigned gradients at 96 x 32, a hand-made contrast-polarity-invariant shape
  descriptor: a sign that the cross-modal cues are there to learn;
* ``oracle``: the generator's own modality-invariant attributes of the pictured person (garment
  pattern kind, frequency and orientation, body proportions, sleeve and lower-garment type, hat,
  bag and its side and size, hair), standardised. It reads the person's description, not the
  pixels, so it is the ceiling the data allows: it says whether the invariant cues identify every
  person uniquely. ``oracle_shape`` uses only proportions and accessories, ``oracle_pattern`` only
  the garment patterns, to show what each family of cues carries.

The contract the generator keeps (docs and tests): the raw-pixel and grey-histogram matchers stay
within 3x chance IR->RGB rank-1 on every data setting the project trains on.

Usage::

    python -m benchmarks.trivial_matcher                     # generates the demo data (120 ids)
    python -m benchmarks.trivial_matcher --data-root data/synthetic_sysu --data-root data/synthetic_regdb
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from benchmarks import _machine
from training.data import build_dataset
from training.data._identity import BAGS, LOWERS, PATTERNS, Identity, make_identity
from training.data.images import read_image
from training.data.synthetic import MARKER, generate
from training.gap import GAP_SETTINGS, modality_gap
from training.protocols import evaluate_regdb_features, evaluate_sysu_features, split_sysu, sysu_galleries

TRIALS = 10
H, W = 192, 64
#: The contract: trivial matchers stay within this factor of chance, IR->RGB rank-1.
TRIVIAL_BOUND = 3.0
TRIVIAL = ("raw_pixels", "grey_histogram")


def _centre(img: np.ndarray) -> np.ndarray:
    """Grey image cut to where the detector-style crop puts the person (rows 8-92%, columns 19-81%).

    Cutting away most of the background is the one thing a trivial matcher can do to look at the person.
    """
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = g.shape
    return g[round(0.08 * h):round(0.92 * h), round(0.19 * w):round(0.81 * w)]


def feat_pixels(img: np.ndarray) -> np.ndarray:
    """Grey person-centre crop downsampled to 32 x 10, mean-removed (cosine = correlation)."""
    v = cv2.resize(_centre(img), (10, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0
    return v - v.mean()


def feat_histogram(img: np.ndarray) -> np.ndarray:
    """32-bin grey-level histogram of the person-centre crop, square-rooted (unit length)."""
    h = np.bincount(_centre(img).ravel() // 8, minlength=32).astype(np.float32)
    return np.sqrt(h / h.sum())


_HOG = cv2.HOGDescriptor((32, 96), (16, 16), (8, 8), (8, 8), 9)  # unsigned gradients (default)


def feat_hog(img: np.ndarray) -> np.ndarray:
    """HOG of the grey image at 96 x 32 (unsigned gradients ignore which side is brighter)."""
    g = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (32, 96), interpolation=cv2.INTER_AREA)
    return _HOG.compute(g).ravel()


PIXEL_FEATURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "raw_pixels": feat_pixels, "grey_histogram": feat_histogram, "hog": feat_hog}


def _one_hot(value: str, values: tuple[str, ...]) -> list[float]:
    return [float(value == v) for v in values]


def _pattern_attrs(p: Identity) -> list[float]:
    out: list[float] = []
    for g in (p.upper_g, p.lower_g):
        plain = g.pattern == "plain"
        # Orientation is a line direction (period pi), so encode 2*theta; plain garments have none.
        waves = (0.0, 0.0, 0.0) if plain else (float(np.log(g.freq)), float(np.cos(2 * g.theta)),
                                                 float(np.sin(2 * g.theta)))
        out += [*_one_hot(g.pattern, PATTERNS), *waves]
    return out


def _shape_attrs(p: Identity) -> list[float]:
    return [p.height, p.head, p.shoulder, p.hip, p.leg, p.top_extra, p.sleeve, float(p.hat), float(p.long_hair),
            p.bag_size if p.bag != "none" else 0.0, *_one_hot(p.lower, LOWERS), *_one_hot(p.bag, BAGS)]


ORACLES: dict[str, Callable[[Identity], list[float]]] = {
    "oracle": lambda p: _pattern_attrs(p) + _shape_attrs(p),
    "oracle_shape": _shape_attrs,
    "oracle_pattern": _pattern_attrs,
}


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-6)


def matcher_embedders(root: Path, records) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """``name -> (paths -> features)`` for every matcher (oracles need the generator's seed)."""
    seed = json.loads((root / MARKER).read_text())["seed"]
    pid_of = {r.path: r.pid for r in records}

    def pixels(fn):
        return lambda paths: np.stack([fn(read_image(p, H, W)) for p in paths]).astype(np.float32)

    def oracle(fn):
        # Standardised over the whole split's people, so every attribute weighs the same.
        people = sorted(set(pid_of.values()))
        table = _standardise(np.array([fn(make_identity(seed, pid)) for pid in people], dtype=np.float64))
        row = {pid: table[i] for i, pid in enumerate(people)}
        return lambda paths: np.stack([row[pid_of[p]] for p in paths]).astype(np.float32)

    out = {name: pixels(fn) for name, fn in PIXEL_FEATURES.items()}
    out.update({name: oracle(fn) for name, fn in ORACLES.items()})
    return out


def evaluate_root(root: Path) -> dict:
    """Every matcher on one dataset: the gap table and the dataset's protocol.

    SYSU layout: all-search single-shot, 10 gallery draws. RegDB layout (trial 1): thermal -> visible,
    every test image (the RegDB protocol has no draws). Either way the row keeps the keys of
    ``protocol`` (``r1``, ``r1_std``, ``r10``, ``mAP``, ``mINP``).
    """
    layout = json.loads((root / MARKER).read_text())["layout"]
    data = build_dataset(layout, root, **({"trial": 1} if layout == "regdb" else {}))
    results = {}
    for name, embed in matcher_embedders(root, [*data.train, *data.test]).items():
        gap = modality_gap(embed, data.train, data.test)
        if layout == "sysu":
            queries, pool = split_sysu(data.test, "all")
            galleries = sysu_galleries(pool, "all", "single", TRIALS, seed=0)
            metrics = evaluate_sysu_features(embed([r.path for r in queries]), queries, embed([r.path for r in pool]),
                                             pool, galleries).metrics
        else:
            records = sorted(data.test, key=lambda r: (r.pid, r.camid, r.path))
            metrics = evaluate_regdb_features(embed([r.path for r in records]), records)["thermal_to_visible"].metrics
        results[name] = {"gap": gap, "protocol": {k: metrics[k] for k in ("r1", "r1_std", "r10", "mAP", "mINP")}}
    n_ids = len({r.pid for r in data.test})
    return {"root": str(root), "layout": layout, "test_ids": n_ids, "train_ids": len({r.pid for r in data.train}),
            "chance_rank1": 1.0 / n_ids, "protocol": "SYSU all-search single-shot (10 draws)" if layout == "sysu"
            else "RegDB trial 1, thermal -> visible", "results": results}


def _markdown(reports: list[dict]) -> str:
    lines = [("Cosine similarity on each feature. Gap columns: rank-1 %, the splits of `training.gap` (4 images per "
             "identity and camera); protocol: SYSU all-search single-shot with 10 gallery draws (R1 ± std, mAP), or "
             "RegDB trial 1 thermal -> visible."), ""]
    for rep in reports:
        chance = 100 * rep["chance_rank1"]
        people = rep["data"]["ids"] + (rep["data"].get("extra_train_ids") or 0)
        lines += [(f"### {rep['layout']} layout, {people} identities ({rep['test_ids']} test, "
                  f"{rep['train_ids']} train; chance rank-1 {chance:.1f} %; protocol: {rep['protocol']})"), "",
                  "| matcher | " + " | ".join(GAP_SETTINGS)
                  + " | xm_auc | protocol R1 | protocol mAP | IR->RGB / chance |",
                  "|---|" + "---:|" * (len(GAP_SETTINGS) + 4)]
        for name, r in rep["results"].items():
            gap, sysu = r["gap"], r["protocol"]
            cells = [f"{100 * gap[s]['r1']:.1f}" for s in GAP_SETTINGS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {gap['alignment']['xm_auc']:.3f} | "
                         f"{100 * sysu['r1']:.1f} ± {100 * sysu['r1_std']:.1f} | {100 * sysu['mAP']:.1f} | "
                         f"{gap['test_ir_to_rgb']['r1'] / rep['chance_rank1']:.2f}x |")
        worst = max(rep["results"][n]["gap"]["test_ir_to_rgb"]["r1"] / rep["chance_rank1"] for n in TRIVIAL)
        verdict = "holds" if worst <= TRIVIAL_BOUND else "BROKEN"
        lines += ["", (f"Contract (raw pixels and grey histogram IR->RGB rank-1 <= {TRIVIAL_BOUND:.0f}x chance): "
                      f"{verdict} (worst {worst:.2f}x)."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = _machine.benchmark_parser("trivial_matcher", __doc__)
    parser.add_argument("--data-root", type=Path, action="append", default=None,
                        help="existing SYSU-layout synthetic set (repeatable; default: generate --ids sets)")
    parser.add_argument("--ids", type=int, action="append", default=None,
                        help="identities of a SYSU-layout set to generate (repeatable; default: 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="trivial_matcher", help="results name under benchmarks/results/")
    args = parser.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory(prefix="trivial_matcher_") as tmp:
        sets = [(root, None) for root in args.data_root or []]
        if not sets:
            sets = [(Path(tmp) / f"sysu_{n}", n) for n in (args.ids or [120])]
        for root, ids in sets:
            t0 = time.perf_counter()
            if ids is not None:
                generate(root, layout="sysu", ids=ids, seed=args.seed, show_progress=False)
            params = json.loads((root / MARKER).read_text())
            rep = evaluate_root(root)
            rep["data"] = params if ids is None else {**params, "root": "(generated, temporary)"}
            rep["root"] = rep["data"].get("root", str(root))
            rep["seconds"] = round(time.perf_counter() - t0, 1)
            reports.append(rep)
    md = _markdown(reports)
    _machine.write_results(args.out, {"reports": reports},
                           md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
