"""Learning curves of the modality gap: the four gap numbers and the cross-modal AUC against training steps.

    python -m benchmarks.gap_curves --run baseline=runs/a --run "channel aug"=runs/b [--out gap_curves]

Each run is a ``python -m training train ... --gap-every N`` output folder (its ``gap.csv`` has one
row per measured epoch, the last row written at the end of training). The plot has one panel per
measure (test IR->RGB, test RGB->RGB, test IR->IR and train IR->RGB rank-1, the test cross-modal
AUC) and one line per run; the Markdown table lists the final values and each run's options
(``args.yaml``), so a curve can be traced to the command that made it.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import yaml

from benchmarks import _machine

PANELS: tuple[tuple[str, str], ...] = (
    ("test_ir_to_rgb_r1", "test IR->RGB rank-1 (the task)"), ("test_rgb_to_rgb_r1", "test RGB->RGB rank-1"),
    ("test_ir_to_ir_r1", "test IR->IR rank-1"), ("train_ir_to_rgb_r1", "train IR->RGB rank-1"),
    ("xm_auc", "test cross-modal AUC"), ("mmd", "test modality distance (mmd)"))
#: Options worth showing next to a run (the recipe knobs).
RECIPE_KEYS: tuple[str, ...] = ("variant", "channel_aug", "grey_remap", "random_erasing", "triplet", "pairs_per_id",
                                "optimizer", "lr", "head_lr", "align_warmup_epochs", "epochs", "max_steps_per_epoch",
                                "seed", "data_root")


def read_run(path: Path) -> tuple[list[dict[str, float]], dict, list[dict[str, float]]]:
    """A run folder's gap curve, its resolved arguments and its loss log (``metrics.csv``, steps cumulated)."""
    curve_file = path / "gap.csv"
    if not curve_file.is_file():
        raise SystemExit(f"{curve_file} not found: train with --gap-every N to record the curve")
    with curve_file.open() as fh:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    args = yaml.safe_load((path / "args.yaml").read_text()) if (path / "args.yaml").is_file() else {}
    losses, steps = [], 0
    if (path / "metrics.csv").is_file():
        with (path / "metrics.csv").open() as fh:
            for row in csv.DictReader(fh):
                steps += int(row["steps"])
                losses.append({"steps": steps, **{k: float(row[k]) for k in ("id", "dist", "corr")}})
    return rows, args, losses


def main(argv: list[str] | None = None) -> int:
    p = _machine.benchmark_parser("gap_curves", __doc__)
    p.add_argument("--run", action="append", required=True, metavar="LABEL=DIR", help="a training run (repeatable)")
    p.add_argument("--out", default="gap_curves", help="results name under benchmarks/results/")
    p.add_argument("--title", default="Modality gap against training steps")
    args = p.parse_args(argv)
    runs = {}
    for item in args.run:
        label, sep, folder = item.partition("=")
        if not sep:
            label, folder = Path(item).name, item
        runs[label] = read_run(Path(folder))
    plt = _machine.pyplot()
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for label, (rows, _, _) in runs.items():
            ax.plot([r["steps"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=10)
    # The training losses (epoch means): the identity loss flat at ln(C) per term is the "nothing learned yet"
    # phase; L_d + L_c near 0 in that phase is the collapse a constant descriptor gives.
    for ax, (title, fn) in zip(axes.flat[len(PANELS):], (
            ("identity loss (12 CE terms; flat = not learning)", lambda r: r["id"]),
            ("alignment losses L_d + L_c (unweighted)", lambda r: r["dist"] + r["corr"]))):
        for label, (_, _, losses) in runs.items():
            ax.plot([r["steps"] for r in losses], [fn(r) for r in losses], marker="o", ms=3, label=label)
        ax.set_title(title, fontsize=10)
    for ax in axes.flat:
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    lines = ["Final values (last row of each run's gap.csv); rank-1 in %.", "",
             "| run | steps | " + " | ".join(k for k, _ in PANELS) + " |", "|---|---:|" + "---:|" * len(PANELS)]
    for label, (rows, _, _) in runs.items():
        last = rows[-1]
        cells = [f"{100 * last[k]:.1f}" if k.endswith("_r1") else f"{last[k]:.3f}" for k, _ in PANELS]
        lines.append(f"| {label} | {int(last['steps'])} | " + " | ".join(cells) + " |")
    lines += ["", "Options of each run:", "", "| run | " + " | ".join(RECIPE_KEYS) + " |",
              "|---|" + "---|" * len(RECIPE_KEYS)]
    for label, (_, run_args, _) in runs.items():
        lines.append(f"| {label} | " + " | ".join(str(run_args.get(k, "")) for k in RECIPE_KEYS) + " |")
    _machine.write_results(args.out, {label: {"curve": rows, "args": a, "losses": lo}
                                      for label, (rows, a, lo) in runs.items()},
                           "\n".join(lines), fig)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
