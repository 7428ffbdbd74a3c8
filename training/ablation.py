"""``python -m training ablation``: baseline, DFE w/o L_c, DFE w/o L_d and DFE on the same data and seeds.

    python -m training ablation --config configs/synthetic.yaml --data-root DIR --output-dir DIR \\
        --seeds 0,1,2 [--epochs N] [--publish] [any other train option]

Like the paper's Figure 6: each variant is trained and evaluated with ``python -m training train``
(every unknown option is passed through to it) once per seed, into ``DIR/<variant>_seed<s>/``; the
table reports mean ± sample standard deviation over the seeds of R1, mAP and mINP in percent.
Runs whose ``final_metrics.json`` already exists are reused (``--force`` retrains), so an
interrupted ablation continues where it stopped. ``--publish`` copies ``ablation.md`` and
``ablation.json`` to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from training.errors import UserError

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("baseline", "no_lc", "no_ld", "dfe")
LABELS: dict[str, str] = {"baseline": "baseline (L_id)", "no_lc": "DFE w/o L_c", "no_ld": "DFE w/o L_d",
                          "dfe": "DFE"}
METRICS: tuple[tuple[str, str], ...] = (("r1", "R1"), ("mAP", "mAP"), ("mINP", "mINP"))
PUBLISH_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training ablation", description=__doc__.split("\n\n")[0],
                                epilog="Other options are passed to `python -m training train`.",
                                allow_abbrev=False)  # else --seed / --variant would match --seeds / --variants
    p.add_argument("--output-dir", required=True, type=Path, help="one sub-folder per run, plus the tables")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list out of {', '.join(VARIANTS)}")
    p.add_argument("--force", action="store_true", help="retrain runs that already have final_metrics.json")
    p.add_argument("--publish", action="store_true", help="copy ablation.md/json to benchmarks/results/")
    return p


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise UserError(f"{option} is empty: expected comma-separated integers, e.g. 0,1,2")
    return values


def run_one(variant: str, seed: int, out: Path, train_argv: list[str], force: bool) -> dict:
    """Train + evaluate one (variant, seed) unless its results exist; returns its final metrics."""
    from training.train import main as train_main

    metrics_file = out / "final_metrics.json"
    if metrics_file.is_file() and not force:
        log.info("reusing %s", metrics_file)
    else:
        argv = [*train_argv, "--variant", variant, "--seed", str(seed), "--output-dir", str(out), "--eval"]
        log.info("ablation run %s seed %d: python -m training train %s", variant, seed, shlex.join(argv))
        tic = time.perf_counter()
        rc = train_main(argv)
        if rc != 0:
            raise RuntimeError(f"training {variant} seed {seed} exited with {rc}")
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - tic:.1f}\n")
    return json.loads(metrics_file.read_text())


def summarize(runs: dict[str, dict[int, dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant: {seed: final_metrics}}`` → ``{setting: {variant: {metric, metric_std, per_seed}}}``."""
    table: dict[str, dict[str, dict]] = {}
    for variant, by_seed in runs.items():
        settings = next(iter(by_seed.values())).keys()
        for setting in settings:
            row: dict = {"seeds": sorted(by_seed)}
            for key, _ in METRICS:
                values = np.array([by_seed[s][setting][key] for s in sorted(by_seed)])
                row[key] = float(values.mean())
                row[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
                row[f"{key}_per_seed"] = [float(v) for v in values]
            table.setdefault(setting, {})[variant] = row
    return table


def to_markdown(table: dict[str, dict[str, dict]], command: str) -> str:
    """Markdown tables (one per evaluation setting), values in percent, mean ± std over seeds."""
    lines = ["# Ablation: loss variants (paper Fig. 6)", "", f"Command: `{command}`", ""]
    for setting, rows in table.items():
        n = len(next(iter(rows.values()))["seeds"])
        lines += [f"## {setting} (mean ± std over {n} seed{'s' if n > 1 else ''}, %)", "",
                  "| variant | " + " | ".join(label for _, label in METRICS) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        for variant, row in rows.items():
            cells = [f"{100 * row[k]:.2f} ± {100 * row[k + '_std']:.2f}" for k, _ in METRICS]
            lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
        if "baseline" in rows and "dfe" in rows:
            deltas = ", ".join(f"{label} {100 * (rows['dfe'][k] - rows['baseline'][k]):+.2f}" for k, label in METRICS)
            lines += ["", f"DFE − baseline: {deltas} points."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the ablation; writes ``ablation.md`` and ``ablation.json`` into ``--output-dir``."""
    args, train_argv = build_parser().parse_known_args(argv)
    seeds = _int_list(args.seeds, "--seeds")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"--variants {args.variants!r}: valid variants are {', '.join(VARIANTS)}")
    for forbidden in ("--variant", "--seed", "--output-dir", "--resume"):
        if forbidden in train_argv:
            raise UserError(f"{forbidden} is set by the ablation itself; remove it from the command line")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    runs = {v: {s: run_one(v, s, args.output_dir / f"{v}_seed{s}", train_argv, args.force) for s in seeds}
            for v in variants}
    table = summarize(runs)
    command = "python -m training ablation " + shlex.join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(table, command)
    (args.output_dir / "ablation.md").write_text(md)
    (args.output_dir / "ablation.json").write_text(json.dumps({"command": command, "seeds": seeds,
                                                               "results": table}, indent=2) + "\n")
    print(md)
    if args.publish:
        PUBLISH_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("ablation.md", "ablation.json"):
            shutil.copyfile(args.output_dir / name, PUBLISH_DIR / name)
        log.info("published ablation tables to %s", PUBLISH_DIR)
    return 0
