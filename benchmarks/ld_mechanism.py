"""What the distribution loss L_d minimises: per-step curves of the feature scale and of L_d's terms, per variant.

    python -m benchmarks.ld_mechanism --sysu-root data/synthetic_sysu --regdb-root data/synthetic_regdb \\
        --runs-dir runs/ld_mechanism --steps 400 --seeds 0 [--only regdb/dfe,regdb/baseline] [--threads 1]

Each run is ``python -m training train`` on the demo recipe (``configs/synthetic.yaml``, and
``configs/synthetic_regdb.yaml`` for the RegDB layout) shortened to ``--steps`` steps in 8 epochs (learning-rate
and alignment warm-ups over the first epoch, the x0.1 decay after the sixth, as the demo's 2 of 16 and 12 of 16),
with ``--probe-every`` (``training.probe``: part-feature norm, BatchNorm weights, L_d's mean and sigma terms,
the scale-invariant forms of L_d, a batch retrieval AUC) and ``--gap-every 2`` (the test modality-gap table
and cross-modal AUC every other epoch). :data:`RUNS` lists the variants: the baseline, DFE without L_d, DFE with the
paper's L_d, DFE with each scale-invariant form, on both layouts and, on RegDB, also the paper's fallback
weights 1:1:1 beside its 1:11:2. Runs whose ``final_metrics.json`` exists are reused, so the command can be
stopped and re-run; the report (JSON, Markdown, PNG in ``benchmarks/results/``) covers every finished run.

The report also holds a gradient check (:func:`gradient_check`): on one training batch, the L2 norm of the gradient
that each loss term alone sends to the K part classifiers, the part embeddings and the trunk, so it shows whether
the classifiers are updated by L_id only, as the paper's §3.5 says.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks import _machine

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"sysu": REPO / "configs" / "synthetic.yaml", "regdb": REPO / "configs" / "synthetic_regdb.yaml"}


class Run(NamedTuple):
    """One training variant: loss variant, L_d form and loss preset (alpha:beta:gamma)."""

    layout: str
    variant: str
    ld_form: str = "paper"
    preset: str | None = None  # None: the layout's own (SYSU 1:1:1, RegDB 1:11:2)

    @property
    def name(self) -> str:
        form = "" if self.ld_form == "paper" or self.variant in ("baseline", "no_ld") else f"_{self.ld_form}"
        preset = "" if self.preset in (None, self.layout) else "_w111"
        return f"{self.variant}{form}{preset}"

    @property
    def weights(self) -> str:
        preset = self.preset or self.layout
        return {"sysu": "1:1:1", "regdb": "1:11:2"}[preset]


RUNS: tuple[Run, ...] = (
    Run("sysu", "baseline"), Run("sysu", "no_ld"), Run("sysu", "dfe"), Run("sysu", "dfe", "standard"),
    Run("sysu", "dfe", "spread"), Run("sysu", "dfe", "unit"), Run("sysu", "dfe", "bn"),
    Run("regdb", "baseline"), Run("regdb", "no_ld"), Run("regdb", "dfe"), Run("regdb", "dfe", "standard"),
    Run("regdb", "dfe", "spread"), Run("regdb", "dfe", "unit"), Run("regdb", "dfe", "bn"),
    Run("regdb", "dfe", "paper", "sysu"),
    Run("regdb", "dfe", "standard", "sysu"), Run("regdb", "dfe", "spread", "sysu"),
)
EPOCHS = 8


def train_argv(run: Run, root: Path, steps: int, seed: int, out: Path, threads: int) -> list[str]:
    """The ``python -m training train`` arguments of one run."""
    per_epoch = max(1, steps // EPOCHS)
    argv = ["--config", str(CONFIGS[run.layout]), "--data-root", str(root), "--output-dir", str(out),
            "--variant", run.variant, "--ld-form", run.ld_form, "--seed", str(seed), "--epochs", str(EPOCHS),
            "--max-steps-per-epoch", str(per_epoch), "--step-size", "6", "--warmup-epochs", "1",
            "--align-warmup-epochs", "1", "--probe-every", str(max(1, steps // 80)), "--gap-every", "2",
            "--time-budget-s", "0", "--no-progress", "--eval"]
    if run.preset:
        argv += ["--loss-preset", run.preset]
    if threads:
        argv += ["--threads", str(threads)]
    return argv


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def collect(out: Path) -> dict[str, Any]:
    """A finished run folder's curves and final numbers."""
    final = json.loads((out / "final_metrics.json").read_text())
    gap = final["modality_gap"]
    protocol = {k: v for k, v in final.items() if k != "modality_gap"}
    return {"probe": _read_csv(out / "probe.csv"), "gap_curve": _read_csv(out / "gap.csv"),
            "final": {"protocol_r1": float(np.mean([v["r1"] for v in protocol.values()])),
                      "protocol_mAP": float(np.mean([v["mAP"] for v in protocol.values()])),
                      **{f"{name}_r1": gap[name]["r1"] for name in ("test_ir_to_rgb", "test_rgb_to_rgb",
                                                                    "test_ir_to_ir", "train_ir_to_rgb")},
                      "xm_auc": gap["alignment"]["xm_auc"], "mmd": gap["alignment"]["mmd"]}}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Train the missing runs, then gather every finished one."""
    from training.train import main as train_main
    from xmreid.errors import UserError

    roots = {"sysu": args.sysu_root, "regdb": args.regdb_root}
    only = {s.strip() for s in args.only.split(",") if s.strip()} if args.only else None
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results: dict[str, Any] = {"steps": args.steps, "seeds": seeds, "runs": {}}
    for run in RUNS:
        key = f"{run.layout}/{run.name}"
        if roots[run.layout] is None or (only is not None and key not in only):
            continue
        for seed in seeds:
            out = args.runs_dir / run.layout / f"{run.name}_seed{seed}"
            if not (out / "final_metrics.json").is_file():
                if args.report_only:
                    continue
                argv = train_argv(run, roots[run.layout], args.steps, seed, out, args.threads)
                log.warning("training %s seed %d", key, seed)
                if train_main(argv) != 0:
                    raise UserError(f"training {key} seed {seed} failed")
            entry = results["runs"].setdefault(key, {"layout": run.layout, "variant": run.variant,
                                                     "ld_form": run.ld_form, "weights": run.weights, "seeds": {}})
            entry["seeds"][str(seed)] = collect(out)
    if not results["runs"]:
        raise UserError("no finished runs: give --sysu-root / --regdb-root (and drop --report-only)")
    for layout in ("sysu", "regdb"):
        if roots[layout] is not None:
            ckpt = args.runs_dir / layout / f"dfe_seed{seeds[0]}" / "last.pt"
            results.setdefault("gradients", {})[layout] = gradient_check(
                CONFIGS[layout], roots[layout], ckpt if ckpt.is_file() else None)
    return results


def gradient_check(config: Path, root: Path, checkpoint: Path | None) -> dict[str, Any]:
    """L2 norm of the gradient of each loss term alone on the classifiers, the part embeddings and the trunk.

    One batch of the layout's training set (seed 0, the recipe's augmentation), the model in training mode as a
    training step runs it: ``checkpoint``'s weights, or a fresh model (seed 0) when None.
    """
    import torch

    from training.config import load_yaml
    from training.data import build_dataset
    from training.data.loader import build_train_loader
    from training.losses import correlation_loss, distribution_loss, identity_loss
    from training.model import DFE, load_checkpoint

    cfg = load_yaml(config)
    extra = {"trial": cfg.get("trial", 1)} if cfg["dataset"] == "regdb" else {}
    records = build_dataset(cfg["dataset"], root, **extra).train
    loader = build_train_loader(records, height=cfg["height"], width=cfg["width"], batch_pairs=cfg["batch_pairs"],
                                mode=cfg["dataset"], seed=0, channel_aug=cfg.get("channel_aug", 0.0),
                                remap=cfg.get("grey_remap", 0.0))
    loader.set_epoch(0)
    rgb, ir, labels = next(iter(loader))
    if checkpoint is not None:
        model = load_checkpoint(checkpoint)[0]
    else:
        torch.manual_seed(0)
        model = DFE(loader.num_classes, arch=cfg["arch"], height=cfg["height"], width=cfg["width"], pretrained=None)
    model.train()
    groups = {"classifiers": list(model.classifiers.parameters()), "embeddings": list(model.embeddings.parameters()),
              "trunk": list(model.backbone.parameters())}
    terms = {
        "L_id": lambda v, i: identity_loss(v.logits, labels) + identity_loss(i.logits, labels),
        "L_d paper": lambda v, i: distribution_loss(v.parts, i.parts, "paper"),
        "L_d standard": lambda v, i: distribution_loss(v.parts, i.parts, "standard"),
        "L_d bn": lambda v, i: distribution_loss(v.normalised, i.normalised, "bn"),
        "L_c": lambda v, i: correlation_loss(v.parts.flatten(1), i.parts.flatten(1)),
    }
    n = rgb.shape[0]
    norms: dict[str, dict[str, float]] = {}
    for name, term in terms.items():
        model.zero_grad(set_to_none=True)
        out = model(torch.cat([rgb, ir]))
        term(*out.split(n)).backward()
        norms[name] = {group: float(torch.sqrt(sum((p.grad.pow(2).sum() for p in params if p.grad is not None),
                                                   torch.zeros(())))) for group, params in groups.items()}
    model.zero_grad(set_to_none=True)
    return {"checkpoint": str(checkpoint) if checkpoint is not None else "fresh model (seed 0)", "norms": norms}


def _at(rows: list[dict[str, float]], frac: float) -> dict[str, float]:
    """The probe row nearest to ``frac`` of the run."""
    return rows[min(len(rows) - 1, max(0, round(frac * (len(rows) - 1))))] if rows else {}


def report(results: dict[str, Any]) -> str:
    """Markdown: final numbers per run, and the probe values at the start, after the warm-up and at the end."""
    lines = [(f"Runs of {results['steps']} steps (8 epochs; warm-ups over the first, x0.1 after the sixth), "
             f"seeds {results['seeds']}; means over the seeds. Protocol R1: SYSU all-search single-shot, or the mean "
             "of RegDB's two directions. `feat_norm`: mean L2 norm of a part embedding (256-d); `bn_weight`: mean "
             "|weight| of the part BatchNorms; `L_d paper` = `ld_mean` + `ld_sigma` (eq. 14 on this batch); "
             "`ld_standard`: L_d on the features standardised per part and dimension over the batch, and "
             "`ld_spread`: L_d divided by the batch's pooled feature variance, `ld_bn`: L_d on the embeddings as "
             "their BatchNorms normalise them, before the weight and bias (all three scale-invariant; empty where "
             "a run was probed before the column existed); `id`: the "
             "identity loss (12 ln C when it has learned nothing); "
             "`batch_auc`: same- vs different-person RGB-IR cosine AUC within the batch."), ""]
    final_rows, probe_rows = [], []
    for key, entry in results["runs"].items():
        seeds = list(entry["seeds"].values())
        final = {k: float(np.mean([s["final"][k] for s in seeds])) for k in seeds[0]["final"]}
        final_rows.append({"run": key, "weights": entry["weights"], "L_d form": entry["ld_form"]
                           if entry["variant"] in ("dfe", "no_lc") else "-",
                           "protocol R1": 100 * final["protocol_r1"], "test IR->RGB": 100 * final["test_ir_to_rgb_r1"],
                           "test RGB->RGB": 100 * final["test_rgb_to_rgb_r1"],
                           "train IR->RGB": 100 * final["train_ir_to_rgb_r1"], "xm_auc": final["xm_auc"],
                           "mmd": final["mmd"]})
        for label, frac in (("start", 0.0), ("warm-up end", 1 / EPOCHS), ("end", 1.0)):
            vals = [_at(s["probe"], frac) for s in seeds if s["probe"]]
            if not vals:
                continue
            row = {"run": key, "at": f"{label} (step {int(np.mean([v['step'] for v in vals]))})"}
            for k in ("feat_norm", "feat_std", "bn_weight", "bn_bias", "ld_mean", "ld_sigma", "ld_standard",
                      "ld_spread", "ld_bn", "id", "batch_auc"):
                have = [v[k] for v in vals if k in v]
                row[k] = float(np.mean(have)) if have else None
            probe_rows.append(row)
    lines += ["## Final numbers (%, AUC, mmd)", "", _machine.markdown_table(final_rows), "",
              "## The probe: feature scale and L_d's terms through training", "",
              _machine.markdown_table(probe_rows, digits=3), ""]
    for layout, check in results.get("gradients", {}).items():
        rows = [{"loss term": term, **{f"|grad| {group}": v for group, v in norms.items()}}
                for term, norms in check["norms"].items()]
        lines += [f"## Gradient of each loss term alone, {layout} ({check['checkpoint']}, one training batch)", "",
                  _machine.markdown_table(rows, digits=4), ""]
    return "\n".join(lines)


PANELS: tuple[tuple[str, str, bool], ...] = (  # (key, title, log scale)
    ("feat_norm", "part-feature L2 norm", True), ("bn_weight", "part BN |weight|", True),
    ("ld_paper", "L_d paper (mean + sigma terms)", True), ("ld_standard", "L_d standardised", True),
    ("batch_auc", "batch RGB-IR AUC (smoothed)", False), ("xm_auc", "test cross-modal AUC", False))


def plot(results: dict[str, Any]) -> Any:
    """One row of panels per layout, one line per run (the first seed)."""
    plt = _machine.pyplot()
    layouts = sorted({e["layout"] for e in results["runs"].values()}, key=["sysu", "regdb"].index)
    fig, axes = plt.subplots(len(layouts), len(PANELS), figsize=(4 * len(PANELS), 3.4 * len(layouts)), squeeze=False)
    for row, layout in zip(axes, layouts):
        for key, entry in results["runs"].items():
            if entry["layout"] != layout:
                continue
            first = next(iter(entry["seeds"].values()))
            probe, curve = first["probe"], first["gap_curve"]
            label = key.split("/", 1)[1] + f" ({entry['weights']})"
            for ax, (panel, title, log_scale) in zip(row, PANELS):
                if panel == "xm_auc":
                    xs, ys = [r["steps"] for r in curve], [r["xm_auc"] for r in curve]
                elif panel == "ld_paper":
                    xs, ys = [r["step"] for r in probe], [r["ld_mean"] + r["ld_sigma"] for r in probe]
                elif panel == "batch_auc":  # a running mean over 5 rows (no padding at the ends)
                    xs, ys = [r["step"] for r in probe], np.array([r["batch_auc"] for r in probe])
                    if ys.size >= 5:
                        xs, ys = xs[2:-2], np.convolve(ys, np.ones(5) / 5, mode="valid")
                else:  # runs probed before a column existed lack it
                    xs, ys = [r["step"] for r in probe if panel in r], [r[panel] for r in probe if panel in r]
                ax.plot(xs, ys, label=label)
                ax.set_title(f"{layout}: {title}", fontsize=9)
                if log_scale:
                    ax.set_yscale("log")
                elif "auc" in panel:
                    ax.set_ylim(0.3, 1.0)
                ax.set_xlabel("step", fontsize=8)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ld_mechanism", description=__doc__.split("\n\n")[0])
    p.add_argument("--sysu-root", type=Path, default=None, help="synthetic SYSU-MM01-layout tree")
    p.add_argument("--regdb-root", type=Path, default=None, help="synthetic RegDB-layout tree")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/ld_mechanism"), help="one folder per run")
    p.add_argument("--steps", type=int, default=400, help="training steps per run (8 epochs)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (paired: the same seeds for every run)")
    p.add_argument("--only", default=None, help="comma list of layout/run names, e.g. regdb/dfe,regdb/baseline")
    p.add_argument("--threads", type=int, default=0, help="compute threads per run (0: torch's default)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the finished runs")
    p.add_argument("--name", default="ld_mechanism", help="results file stem")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `python -m training` does, before torch loads
    if args.steps < EPOCHS:
        p.error(f"--steps must be >= {EPOCHS}")
    return _machine.run_and_write(args, run_all, report, plot)


if __name__ == "__main__":
    sys.exit(main())
