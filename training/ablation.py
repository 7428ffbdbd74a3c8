"""``python -m training ablation``: baseline, DFE w/o L_c, DFE w/o L_d and DFE (the paper's L_d and a
scale-invariant form) on the same data and seeds.

    python -m training ablation --config configs/X.yaml --data-root DIR --output-dir DIR \\
        --seeds 0,1,2 [--regdb-root DIR [--regdb-config configs/Y.yaml] [--regdb-preset sysu]] [--publish] \\
        [any other train option]

Like the paper's Figure 6: each variant is trained and evaluated with ``python -m training train``
(every unknown option is passed through to it) once per seed, into ``DIR/<dataset>/<variant>_seed<s>/``.
The variants are those of :data:`VARIANTS`: the paper's four, whose L_d is always eq. 14 (``--ld-form
paper``), and ``dfe_<form>``, full DFE with L_d in another form of ``training.losses.LD_FORMS``.
``--data-root`` is trained with the config's dataset and loss preset (SYSU-MM01: 1:1:1); with
``--regdb-root`` the same variants and seeds also run on a RegDB-layout tree with RegDB's 1:11:2
weights (``--regdb-preset sysu``: the paper's fallback 1:1:1; ``--regdb-config`` may give that layout its
own schedule), so one command produces both layouts' tables. Per layout the report has:

* R1, mAP and mINP of each evaluation setting, mean ± sample standard deviation over the seeds;
* the paired difference of each variant against the baseline, and against DFE w/o L_d (same seed, same
  data: the pairing removes the seed-to-seed spread they share), mean ± sample std;
* the modality-gap table of ``training.gap`` per variant (test IR->RGB, RGB->RGB, IR->IR, train
  IR->RGB rank-1; the cross-modal AUC and the modality distance ``mmd``), mean ± std.

Runs whose ``final_metrics.json`` already exists are reused and a run stopped after one of its epoch
checkpoints is resumed from it (``--force`` trains again), so an interrupted ablation continues where it
stopped, and ablations given disjoint ``--seeds`` or ``--variants`` and one ``--output-dir`` can run side by
side and be summed up by one more; a run trained with other arguments (another config, step count, ...) is
refused rather than reused. The report says when, on what machine and with how many threads the runs
trained. ``--publish`` copies ``ablation.md`` and ``ablation.json`` to ``benchmarks/results/``
(``--publish-name`` renames them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from xmreid.errors import UserError

log = logging.getLogger(__name__)

#: ablation variant -> (``--variant``, ``--ld-form``) of the train command.
VARIANTS: dict[str, tuple[str, str]] = {
    "baseline": ("baseline", "paper"), "no_lc": ("no_lc", "paper"), "no_ld": ("no_ld", "paper"),
    "dfe": ("dfe", "paper"), "dfe_standard": ("dfe", "standard"), "dfe_unit": ("dfe", "unit"),
    "dfe_spread": ("dfe", "spread"), "dfe_bn": ("dfe", "bn")}
#: What ``--variants`` defaults to: the paper's four and DFE with the BatchNorm-normalised form of L_d (the
#: standardised form diverges on this recipe: benchmarks/results/ld_mechanism.md).
DEFAULT_VARIANTS: tuple[str, ...] = ("baseline", "no_lc", "no_ld", "dfe", "dfe_bn")
LABELS: dict[str, str] = {"baseline": "baseline (L_id)", "no_lc": "DFE w/o L_c", "no_ld": "DFE w/o L_d",
                          "dfe": "DFE (paper L_d)", "dfe_standard": "DFE (standardised L_d)",
                          "dfe_unit": "DFE (unit L_d)", "dfe_spread": "DFE (spread L_d)",
                          "dfe_bn": "DFE (BatchNorm-normalised L_d)"}
#: Paired differences are reported against each of these that ran (variant minus reference, same seed).
REFERENCES: tuple[str, ...] = ("baseline", "no_ld")
METRICS: tuple[tuple[str, str], ...] = (("r1", "R1"), ("mAP", "mAP"), ("mINP", "mINP"))
GAP_COLUMNS: tuple[tuple[str, str, str], ...] = (  # (gap setting or "alignment", key, label)
    ("test_ir_to_rgb", "r1", "test IR->RGB"), ("test_rgb_to_rgb", "r1", "test RGB->RGB"),
    ("test_ir_to_ir", "r1", "test IR->IR"), ("train_ir_to_rgb", "r1", "train IR->RGB"),
    ("alignment", "xm_auc", "xm_auc"), ("alignment", "mmd", "mmd"))
GAP_KEY = "modality_gap"  # where ``train`` writes the gap table in final_metrics.json
#: Train arguments that say how fast a run goes, where it is written or whether it was resumed, not what it
#: learns: a finished or interrupted run is taken up whatever they were. (A resumed run reproduces the
#: uninterrupted one; another thread count may change the last bits of a convolution's sums, so such a run is
#: an equivalent draw, not a bit-identical one, and the report names the thread counts.)
NOT_COMPARED: frozenset[str] = frozenset({"output_dir", "no_progress", "threads", "workers", "cache_images",
                                          "resume"})
PATH_ARGS: frozenset[str] = frozenset({"config", "data_root", "resume"})
PUBLISH_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training ablation", description=__doc__.split("\n\n")[0],
                                epilog="Other options are passed to `python -m training train`.",
                                allow_abbrev=False)  # else --seed / --variant would match --seeds / --variants
    p.add_argument("--output-dir", required=True, type=Path, help="one sub-folder per run, plus the tables")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list out of {', '.join(VARIANTS)}")
    p.add_argument("--regdb-root", type=Path, default=None,
                   help="also run every variant and seed on this RegDB-layout tree with RegDB's 1:11:2 weights")
    p.add_argument("--regdb-config", type=Path, default=None,
                   help="config for the RegDB runs (default: --config); its dataset is forced to regdb")
    p.add_argument("--regdb-preset", default="regdb", choices=("regdb", "sysu"),
                   help="loss weights of the RegDB runs: regdb (1:11:2, the paper's) or sysu (1:1:1, its fallback)")
    p.add_argument("--force", action="store_true", help="retrain runs that already have final_metrics.json")
    p.add_argument("--publish", action="store_true", help="copy ablation.md/json to benchmarks/results/")
    p.add_argument("--publish-name", default="ablation", help="file stem of the published tables")
    return p


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not values:
        raise UserError(f"{option} is empty: expected comma-separated integers, e.g. 0,1,2")
    return values


def stale_args(run: Path, argv: list[str]) -> list[str]:
    """How the finished run in ``run`` was trained differently from ``argv``, one ``name: was -> now`` per
    argument; empty when the run can stand for ``argv``. An option newer than the run counts at its default,
    paths compare resolved, and :data:`NOT_COMPARED` are not compared."""
    from training.config import load_yaml, plain
    from training.train_options import build_parser, parse_args

    if not (run / "args.yaml").is_file():
        return ["args.yaml: missing"]
    was, now, parser = load_yaml(run / "args.yaml"), plain(vars(parse_args(argv))), build_parser()
    stale = []
    for name in sorted(now.keys() - NOT_COMPARED):
        old, new = was.get(name, plain(parser.get_default(name))), now[name]
        same = (Path(old).resolve() == Path(new).resolve() if name in PATH_ARGS and None not in (old, new)
                else old == new)
        if not same:
            stale.append(f"{name}: {old!r} -> {new!r}")
    return stale


def run_one(variant: str, seed: int, out: Path, train_argv: list[str], force: bool) -> dict:
    """Train + evaluate one (variant, seed) unless a run with the same arguments finished there; a run
    interrupted after a checkpoint is resumed from it. Returns the run's final metrics.

    Raises:
        UserError: ``out`` holds a run trained with other arguments (and not ``force``).
    """
    from training.train import main as train_main

    train_variant, ld_form = VARIANTS[variant]
    # Every run trains its configured steps: the demo config's wall-clock budget would make the number of
    # steps, and so the comparison, depend on the machine and its load.
    argv = [*train_argv, "--variant", train_variant, "--ld-form", ld_form, "--seed", str(seed), "--output-dir",
            str(out), "--time-budget-s", "0", "--eval"]
    metrics_file, checkpoint = out / "final_metrics.json", out / "last.pt"
    started = not force and (metrics_file.is_file() or checkpoint.is_file())
    stale = stale_args(out, argv) if started else []
    if stale:
        raise UserError(f"{out} holds a run trained with other arguments ({'; '.join(stale)}): pass --force "
                        "to train it again, or give another --output-dir")
    if started and metrics_file.is_file():
        log.info("reusing %s", metrics_file)
        return json.loads(metrics_file.read_text())
    if started:
        argv += ["--resume", str(checkpoint)]
        (out / "wall_seconds.txt").unlink(missing_ok=True)  # only uninterrupted runs are timed
    log.info("ablation run %s seed %d: python -m training train %s", variant, seed, shlex.join(argv))
    tic = time.perf_counter()
    rc = train_main(argv)
    if rc != 0:
        raise RuntimeError(f"training {variant} seed {seed} exited with {rc}")
    if not started:
        (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - tic:.1f}\n")
    return json.loads(metrics_file.read_text())


def provenance(runs: list[Path]) -> str:
    """Where, when and how the runs trained, for the report: days, machine, threads, wall time per run."""
    from training.config import load_yaml
    from xmreid.machine import cpu_model, usable_cores

    days = sorted({dt.datetime.fromtimestamp((r / "final_metrics.json").stat().st_mtime, dt.timezone.utc)
                   .date().isoformat() for r in runs})
    threads = sorted({int(load_yaml(r / "args.yaml").get("threads", 0)) for r in runs})
    walls = [float((r / "wall_seconds.txt").read_text()) for r in runs if (r / "wall_seconds.txt").is_file()]
    text = (f"{len(runs)} runs, finished {days[0]}" + (f" to {days[-1]}" if len(days) > 1 else "")
            + f"; tables written on {cpu_model()} ({usable_cores()} usable cores); threads per run: "
            + ", ".join("one per core" if t == 0 else str(t) for t in threads))
    if walls:
        text += (f"; wall time per run: median {float(np.median(walls)):.0f} s, {min(walls):.0f}-{max(walls):.0f} s"
                 f" ({len(walls)} timed)")
    return text


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "per_seed": [float(x) for x in v]}


def summarize(runs: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """``{variant: {seed: final_metrics}}`` of one layout → its tables.

    Returns:
        ``{"settings": {setting: {variant: {metric, metric_std, metric_per_seed, seeds}}},
        "paired": {setting: {variant: {metric: {mean, std, per_seed}}}}`` (variant − baseline, same
        seed; only when the baseline ran), ``"gap": {variant: {label: {mean, std, per_seed}}}``.
    """
    table: dict[str, dict[str, dict]] = {}
    paired_vs: dict[str, dict[str, dict[str, dict]]] = {ref: {} for ref in REFERENCES if ref in runs}
    gap: dict[str, dict[str, dict]] = {}
    for variant, by_seed in runs.items():
        seeds = sorted(by_seed)
        settings = [k for k in by_seed[seeds[0]] if k != GAP_KEY]
        for setting in settings:
            row: dict = {"seeds": seeds}
            for key, _ in METRICS:
                s = _stats([by_seed[s][setting][key] for s in seeds])
                row[key], row[f"{key}_std"], row[f"{key}_per_seed"] = s["mean"], s["std"], s["per_seed"]
            table.setdefault(setting, {})[variant] = row
            for ref, paired in paired_vs.items():
                common = [s for s in seeds if s in runs[ref]]
                if variant != ref and common:
                    paired.setdefault(setting, {})[variant] = {
                        key: _stats([by_seed[s][setting][key] - runs[ref][s][setting][key] for s in common])
                        for key, _ in METRICS}
        if all(GAP_KEY in by_seed[s] for s in seeds):
            gap[variant] = {label: _stats([by_seed[s][GAP_KEY][name][key] for s in seeds])
                            for name, key, label in GAP_COLUMNS}
    return {"settings": table, "paired": paired_vs.get("baseline", {}), "paired_vs": paired_vs, "gap": gap}


def _pct(s: dict, scale: float = 100.0, digits: int = 1, sign: str = "") -> str:
    """``mean ± std`` of a :func:`_stats` dict, scaled; the mean alone for one seed (it has no spread)."""
    mean = f"{scale * s['mean']:{sign}.{digits}f}"
    return mean if len(s["per_seed"]) < 2 else f"{mean} ± {scale * s['std']:.{digits}f}"


def to_markdown(tables: dict[str, dict], command: str, about: str = "") -> str:
    """Markdown report: per layout, the metric tables, the paired differences and the gap table; ``about``
    (:func:`provenance`) says where and when the runs trained."""
    lines = ["# Ablation: loss variants (paper Fig. 6)", "", f"Command: `{command}`", ""]
    if about:
        lines += [f"Runs: {about}.", ""]
    for layout, summary in tables.items():
        for setting, rows in summary["settings"].items():
            n = len(next(iter(rows.values()))["seeds"])
            over = f"mean ± std over {n} seeds" if n > 1 else "one seed"
            lines += [f"## {layout}: {setting} ({over}, %)", "",
                      "| variant | " + " | ".join(label for _, label in METRICS) + " |",
                      "|---|" + "---:|" * len(METRICS)]
            for variant, row in rows.items():
                cells = [_pct({"mean": row[k], "std": row[k + "_std"], "per_seed": row[k + "_per_seed"]}, digits=2)
                         for k, _ in METRICS]
                lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
            for ref, paired in summary.get("paired_vs", {"baseline": summary["paired"]}).items():
                diffs = paired.get(setting, {})
                if not diffs:
                    continue
                lines += ["", f"Paired difference against {LABELS[ref]} (same seed), points:", "",
                          f"| variant − {ref} | " + " | ".join(label for _, label in METRICS) + " |",
                          "|---|" + "---:|" * len(METRICS)]
                for variant, d in diffs.items():
                    lines.append(f"| {LABELS[variant]} | " + " | ".join(
                        _pct(d[k], digits=2, sign="+") for k, _ in METRICS) + " |")
            lines.append("")
        if summary["gap"]:
            labels = [label for _, _, label in GAP_COLUMNS]
            lines += [f"## {layout}: modality gap per variant (rank-1 %, AUC, mmd; mean ± std)", "",
                      "| variant | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
            for variant, g in summary["gap"].items():
                cells = [_pct(g[label]) if label not in ("xm_auc", "mmd") else _pct(g[label], 1.0, 3)
                         for label in labels]
                lines.append(f"| {LABELS[variant]} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the ablation; writes ``ablation.md`` and ``ablation.json`` into ``--output-dir``."""
    from training.config import load_yaml

    args, train_argv = build_parser().parse_known_args(argv)
    seeds = _int_list(args.seeds, "--seeds")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise UserError(f"--variants {args.variants!r}: valid variants are {', '.join(VARIANTS)}")
    for forbidden in ("--variant", "--ld-form", "--seed", "--output-dir", "--resume"):
        if forbidden in train_argv:
            raise UserError(f"{forbidden} is set by the ablation itself; remove it from the command line")
    layouts: dict[str, list[str]] = {}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--dataset", default=None)
    known, _ = pre.parse_known_args(train_argv)
    main_dataset = known.dataset or (load_yaml(known.config).get("dataset") if known.config else None) or "sysu"
    layouts[main_dataset] = train_argv
    if args.regdb_root is not None:
        if main_dataset == "regdb":
            raise UserError("--regdb-root given, but the main run is already RegDB; drop one of them")
        regdb_argv = _replace_option(train_argv, "--data-root", str(args.regdb_root))
        if args.regdb_config is not None:
            regdb_argv = _replace_option(regdb_argv, "--config", str(args.regdb_config))
        layouts["regdb"] = [*regdb_argv, "--dataset", "regdb", "--loss-preset", args.regdb_preset]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    tables, run_dirs = {}, []
    for layout, layout_argv in layouts.items():
        run_dirs += [args.output_dir / layout / f"{v}_seed{s}" for v in variants for s in seeds]
        runs = {v: {s: run_one(v, s, args.output_dir / layout / f"{v}_seed{s}", layout_argv, args.force)
                    for s in seeds} for v in variants}
        tables[layout] = summarize(runs)
    command = "python -m training ablation " + shlex.join(argv if argv is not None else sys.argv[1:])
    md = to_markdown(tables, command, provenance(run_dirs))
    (args.output_dir / "ablation.md").write_text(md)
    (args.output_dir / "ablation.json").write_text(json.dumps({"command": command, "seeds": seeds,
                                                               "results": tables}, indent=2) + "\n")
    print(md)
    if args.publish:
        PUBLISH_DIR.mkdir(parents=True, exist_ok=True)
        for suffix in (".md", ".json"):
            shutil.copyfile(args.output_dir / f"ablation{suffix}", PUBLISH_DIR / f"{args.publish_name}{suffix}")
        log.info("published ablation tables to %s", PUBLISH_DIR)
    return 0


def _replace_option(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced (both ``--opt v`` and ``--opt=v``), or appended."""
    out, i, found = [], 0, False
    while i < len(argv):
        a = argv[i]
        if a == option and i + 1 < len(argv):
            out += [option, value]
            i, found = i + 2, True
            continue
        if a.startswith(option + "="):
            out.append(f"{option}={value}")
            found = True
        else:
            out.append(a)
        i += 1
    return out if found else [*out, option, value]
