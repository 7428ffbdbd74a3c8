"""Training options side by side over seeds: protocol metrics, the modality gap, and paired differences.

    python -m benchmarks.gap_table --group "full recipe=runs/a_s0,runs/a_s1,runs/a_s2" \\
        --group "without channel aug=runs/b_s0,runs/b_s1,runs/b_s2" --against "full recipe" --out gap_leave_one_out

Each run is a ``python -m training train`` output folder (``final_metrics.json`` with the SYSU
all-search single-shot metrics and the ``modality_gap`` table, ``args.yaml`` with the seed). Per group
the table has mean ± sample std over its runs; with ``--against``, each other group's difference to
that group is taken *per seed* (runs matched by ``args.yaml``'s seed) and summarised the same way, so
the seed-to-seed spread the two share cancels. An option "counts" when it moves test
IR->RGB in the same direction on every one of at least three seeds; the ``sign`` column says so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml

from benchmarks import _machine

#: (label, getter) of each column; values are fractions, shown in percent (AUC and mmd as they are).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("SYSU R1", "protocol", "r1"), ("SYSU mAP", "protocol", "mAP"), ("SYSU mINP", "protocol", "mINP"),
    ("test IR->RGB", "test_ir_to_rgb", "r1"), ("test RGB->RGB", "test_rgb_to_rgb", "r1"),
    ("test IR->IR", "test_ir_to_ir", "r1"), ("train IR->RGB", "train_ir_to_rgb", "r1"),
    ("xm_auc", "alignment", "xm_auc"), ("mmd", "alignment", "mmd"))
SIGN_COLUMN = "test IR->RGB"


def read_run(folder: Path) -> tuple[int, dict[str, float], dict]:
    """(seed, {column: value}, args) of one finished run."""
    metrics_file = folder / "final_metrics.json"
    if not metrics_file.is_file():
        raise SystemExit(f"{metrics_file} not found: is {folder} a finished `python -m training train` run?")
    final = json.loads(metrics_file.read_text())
    args = yaml.safe_load((folder / "args.yaml").read_text()) if (folder / "args.yaml").is_file() else {}
    protocol = next((v for k, v in final.items() if k.startswith("sysu_all_single")), None) or next(
        v for k, v in final.items() if k != "modality_gap")
    gap = final["modality_gap"]
    row = {}
    for label, where, key in COLUMNS:
        row[label] = float(protocol[key] if where == "protocol" else gap[where][key])
    return int(args.get("seed", 0)), row, args


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v),
            "values": [float(x) for x in v]}


def _cell(label: str, s: dict[str, float], signed: bool = False) -> str:
    scale, digits = (1.0, 3) if label in ("xm_auc", "mmd") else (100.0, 1)
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{fmt.format(scale * s['mean'])} ± {scale * s['std']:.{digits}f}"


def summarize(groups: dict[str, list[Path]], against: str | None) -> dict:
    runs = {name: {seed: row for seed, row, _ in map(read_run, folders)} for name, folders in groups.items()}
    out: dict = {"groups": {}, "paired": {}}
    for name, by_seed in runs.items():
        out["groups"][name] = {"seeds": sorted(by_seed),
                               **{label: _stats([r[label] for r in by_seed.values()]) for label, _, _ in COLUMNS}}
    if against is not None:
        if against not in runs:
            raise SystemExit(f"--against {against!r} is not one of the groups: {', '.join(runs)}")
        base = runs[against]
        for name, by_seed in runs.items():
            common = sorted(set(by_seed) & set(base))
            if name == against or not common:
                continue
            out["paired"][name] = {"seeds": common, **{
                label: _stats([by_seed[s][label] - base[s][label] for s in common]) for label, _, _ in COLUMNS}}
    return out


def to_markdown(summary: dict, against: str | None, note: str) -> str:
    labels = [label for label, _, _ in COLUMNS]
    lines = [note, "", "Mean ± sample std over seeds; rank-1, mAP, mINP in %.", "",
             "| group | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---:|" * len(labels)]
    for name, g in summary["groups"].items():
        cells = " | ".join(_cell(k, g[k]) for k in labels)
        lines.append(f"| {name} | {','.join(map(str, g['seeds']))} | {cells} |")
    if summary["paired"]:
        lines += ["", f"Paired difference against **{against}** (same seed), points:", "",
                  "| group − " + against + " | seeds | " + " | ".join(labels) + f" | {SIGN_COLUMN} sign |",
                  "|---|---|" + "---:|" * (len(labels) + 1)]
        for name, d in summary["paired"].items():
            vals = d[SIGN_COLUMN]["values"]
            sign = ("all +" if all(v > 0 for v in vals) else "all −" if all(v < 0 for v in vals) else "mixed")
            sign += f" ({len(vals)} seeds)"
            lines.append(f"| {name} | {','.join(map(str, d['seeds']))} | " +
                         " | ".join(_cell(k, d[k], signed=True) for k in labels) + f" | {sign} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = _machine.benchmark_parser("gap_table", __doc__)
    p.add_argument("--group", action="append", required=True, metavar="LABEL=DIR[,DIR...]",
                   help="runs of one configuration, one per seed (repeatable)")
    p.add_argument("--against", default=None, help="the group the others are compared with, seed by seed")
    p.add_argument("--out", default="gap_table", help="results name under benchmarks/results/")
    p.add_argument("--note", default="", help="a sentence put above the table (the budget, the data)")
    args = p.parse_args(argv)
    groups: dict[str, list[Path]] = {}
    for item in args.group:
        label, sep, folders = item.partition("=")
        if not sep or not folders:
            raise SystemExit(f"--group {item!r}: expected LABEL=DIR[,DIR...]")
        groups[label] = [Path(f) for f in folders.split(",") if f]
    summary = summarize(groups, args.against)
    md = to_markdown(summary, args.against, args.note)
    _machine.write_results(args.out, {"groups": {k: [str(f) for f in v] for k, v in groups.items()}, **summary}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
