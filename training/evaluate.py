"""``python -m training evaluate``: the SYSU-MM01 / RegDB protocols on a checkpoint, as a paper-style table.

    python -m training evaluate --checkpoint runs/demo/last.pt --dataset sysu --data-root DIR \\
        --mode all,indoor --shot single,multi [--trials 10] [--rerank] [--out-json F] [--plots DIR]

``--mode`` and ``--shot`` take one value or a comma list; every image is embedded once for all the
settings asked for. RegDB evaluates the checkpoint's own split (``--trial``, default: the one it was
trained on) in both directions. The table shows percentages with the spread (population std) over
the gallery trials; the JSON holds fractions in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from training.protocols import format_table
from xmreid.errors import UserError

log = logging.getLogger(__name__)

RANKING_QUERIES = 4  # queries shown in the ranking-list picture
RANKING_TOP = 10


def _choices(text: str, valid: tuple[str, ...], option: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise UserError(f"{option} {text!r}: valid values are {', '.join(valid)} (or a comma list of them)")
    return list(dict.fromkeys(values))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path, help="a last.pt written by the trainer")
    p.add_argument("--dataset", required=True, choices=("sysu", "regdb"))
    p.add_argument("--data-root", required=True, type=Path, help="dataset root folder")
    p.add_argument("--mode", default="all", help="SYSU-MM01 search mode: all | indoor | all,indoor")
    p.add_argument("--shot", default="single", help="SYSU-MM01 gallery: single | multi | single,multi")
    p.add_argument("--trials", type=int, default=10, help="SYSU-MM01 random gallery draws")
    p.add_argument("--seed", type=int, default=0, help="seed of the first gallery draw")
    p.add_argument("--trial", type=int, default=None, help="RegDB split (default: the checkpoint's)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (Zhong et al., CVPR 2017)")
    p.add_argument("--out-json", type=Path, default=None, help="write the results here")
    p.add_argument("--plots", type=Path, default=None, help="write cmc.png and ranking.png into this folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--gap", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the modality-gap table and alignment (training.gap)")
    return p


def run(args: argparse.Namespace) -> dict[str, object]:
    """Evaluate per the parsed arguments; returns ``{setting: ProtocolResult}``.

    With ``args.gap`` the modality-gap table of the same model is stored on ``args.gap_result``.
    """
    from training.data import build_dataset
    from training.features import resolve_device
    from training.model import load_checkpoint
    from training.protocols import evaluate_regdb, evaluate_sysu

    if args.trials < 1 or args.batch_size < 1:
        raise UserError(f"--trials and --batch-size must be >= 1, got {args.trials} and {args.batch_size}")
    modes = _choices(args.mode, ("all", "indoor"), "--mode")
    shots = _choices(args.shot, ("single", "multi"), "--shot")
    device = resolve_device(args.device)
    model, ckpt = load_checkpoint(args.checkpoint, map_location=device)
    progress = not args.no_progress
    cache: dict[str, np.ndarray] = {}
    if args.dataset == "sysu":
        dataset = build_dataset("sysu", args.data_root)
        results = {f"sysu_{mode}_{shot}": evaluate_sysu(model, dataset.test, mode, shot, trials=args.trials,
                                                        seed=args.seed, rerank=args.rerank,
                                                        batch_size=args.batch_size, progress=progress, cache=cache)
                   for mode in modes for shot in shots}
    else:
        trial = args.trial if args.trial is not None else int(ckpt.get("config", {}).get("trial", 1) or 1)
        dataset = build_dataset("regdb", args.data_root, trial=trial)
        res = evaluate_regdb(model, dataset.test, rerank=args.rerank, batch_size=args.batch_size, progress=progress)
        results = {f"regdb_trial{trial}_{name}": r for name, r in res.items()}
    if getattr(args, "gap", False):
        from training.gap import model_gap

        args.gap_result = model_gap(model, dataset.train, dataset.test, batch_size=args.batch_size)
    return results


def write_plots(results: dict, out_dir: Path, rerank: bool = False) -> list[Path]:
    """CMC curves of every setting and a top-10 ranking list of a few queries of the first setting.

    Returns:
        The written PNG paths.
    """
    from training.visualize import plot_cmc, plot_ranking_list

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {name: np.asarray(r.metrics["cmc"]) for name, r in results.items()}
    title = "CMC" + (" (re-ranked)" if rerank else "")
    plot_cmc(curves, out_dir / "cmc.png", title)
    written = [out_dir / "cmc.png"]
    name, first = next(iter(results.items()))
    dist, queries, gallery = first.example
    g_cams = np.array([r.camid for r in gallery])
    picks = np.unique(np.linspace(0, len(queries) - 1, RANKING_QUERIES).round().astype(int))
    q_paths, g_paths, same, q_cams, g_cam_lists = [], [], [], [], []
    for qi in picks:
        q = queries[qi]
        order = np.argsort(dist[qi], kind="stable")
        if name.startswith("sysu") and q.camid == 3:
            order = order[g_cams[order] != 2]  # the protocol's camera-3 / camera-2 rule, as evaluated
        top = order[:RANKING_TOP]
        q_paths.append(q.path)
        q_cams.append(q.camid)
        g_paths.append([gallery[j].path for j in top])
        same.append([gallery[j].pid == q.pid for j in top])
        g_cam_lists.append([gallery[j].camid for j in top])
    plot_ranking_list(q_paths, g_paths, same, q_cams, g_cam_lists, out_dir / "ranking.png")
    written.append(out_dir / "ranking.png")
    return written


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint; prints the table, optionally writes JSON and pictures."""
    args = build_parser().parse_args(argv)
    results = run(args)
    metrics = {name: r.metrics for name, r in results.items()}
    print(format_table(metrics))
    gap = getattr(args, "gap_result", None)
    if gap is not None:
        from training.gap import format_gap

        print(format_gap(gap))
    if args.out_json is not None:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"checkpoint": str(args.checkpoint), "dataset": args.dataset, "data_root": str(args.data_root),
                   "rerank": args.rerank, "trials": args.trials, "seed": args.seed, "results": metrics}
        if gap is not None:
            payload["modality_gap"] = gap
        args.out_json.write_text(json.dumps(payload, indent=2) + "\n")
        log.info("wrote %s", args.out_json)
    if args.plots is not None:
        for path in write_plots(results, args.plots, args.rerank):
            log.info("wrote %s", path)
    return 0
