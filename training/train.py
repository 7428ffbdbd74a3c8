"""``python -m training train``: train a DFE model (paper §4.2), like torchvision's reference train.py.

    python -m training train --config configs/sysu.yaml --data-root DIR --output-dir DIR [overrides]

The YAML sets the parser's defaults and explicit flags override it (timm's scheme); the resolved
arguments are saved as ``args.yaml`` beside the checkpoint. Every epoch writes ``last.pt`` atomically
(model, optimizer, scheduler, epoch, config, model_config, plus AMP scaler and RNG states so that
``--resume`` continues exactly), appends a row to ``metrics.csv``; the end evaluates on the test
split (SYSU-MM01 all-search single-shot, or RegDB both directions) into ``final_metrics.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from training.config import parse_with_config, plain, save_args
from training.paper import PAPER
from xmreid.atomic import atomic_write
from xmreid.errors import UserError

log = logging.getLogger(__name__)

CSV_FIELDS = ("epoch", "steps", "lr_backbone", "lr_head", "loss", "id", "dist", "corr", "tri", "seconds",
              "steps_per_s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training train", description="Train a DFE model.")
    p.add_argument("--config", default=None, help="YAML file whose keys (option names with _) set the defaults")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="sysu", choices=("sysu", "regdb"), help="dataset layout of --data-root")
    g.add_argument("--data-root", required=True, type=Path, help="dataset root folder")
    g.add_argument("--trial", type=int, default=1, help="RegDB split 1..10 (ignored for SYSU-MM01)")
    g.add_argument("--height", type=int, default=PAPER.height, help="input height")
    g.add_argument("--width", type=int, default=PAPER.width, help="input width")
    g.add_argument("--batch-pairs", type=int, default=32, help="N visible-infrared pairs per batch")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="flip + pad-and-crop")
    g.add_argument("--channel-aug", type=float, default=0.0,
                   help="probability of channel augmentation of a visible image (CAJ, ICCV 2021): one random "
                        "R/G/B channel or the luma replicated; 0 = off (the paper)")
    g.add_argument("--random-erasing", type=float, default=0.0,
                   help="probability of random erasing of each image (Zhong et al., AAAI 2020); 0 = off (the paper)")
    g.add_argument("--grey-remap", type=float, default=0.0,
                   help="probability of a random grey-level curve on each grey image (infrared, channel-augmented "
                        "visible); 0 = off (the paper)")
    g.add_argument("--aug-warmup-epochs", type=float, default=0.0,
                   help="ramp the channel-aug / grey-remap / erasing probabilities up over this many epochs")
    g.add_argument("--pairs-per-id", type=int, default=1,
                   help="K: identity-balanced batches of batch-pairs/K people with K pairs each (AGW's PK "
                        "sampler); 1 = the paper's walk")
    g.add_argument("--workers", type=int, default=0, help="data loading processes")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=PAPER.arch, help="resnet18 | resnet34 | resnet50")
    g.add_argument("--parts", type=int, default=PAPER.parts, help="K horizontal stripes")
    g.add_argument("--embed-dim", type=int, default=PAPER.embed_dim, help="D, width of each part embedding")
    g.add_argument("--pretrained", default="imagenet", help="imagenet | none | path to a ResNet state dict")
    g.add_argument("--classifier-std", type=float, default=None,
                   help="re-initialise the part classifiers with this weight std (default: the model's 0.001, "
                        "PCB's value for a pretrained trunk; from scratch a larger value such as 0.01 lets the "
                        "identity loss reach the trunk from the first steps)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--lr", type=float, default=0.01, help="backbone learning rate")
    g.add_argument("--head-lr", type=float, default=0.1, help="learning rate of the new layers")
    g.add_argument("--optimizer", default="sgd", choices=tuple(OPTIMIZERS),
                   help="sgd (the paper: momentum SGD) or adam (Adam with L2 weight decay, the optimiser of the "
                        "strong re-ID baselines, e.g. Luo et al.'s BoT; converges faster from scratch)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--step-size", type=int, default=5, help="epochs between learning-rate decays")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="learning-rate decay factor")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear learning-rate warm-up from 1%% over this many epochs of steps (the cross-modal "
                        "baselines AGW/CAJ warm up for 10 epochs; 0 = none, the paper)")
    g.add_argument("--loss-preset", default=None, choices=("sysu", "regdb"),
                   help="alpha:beta:gamma 1:1:1 (sysu) or 1:11:2 (regdb); default: the dataset's")
    g.add_argument("--variant", default="dfe", choices=("dfe", "baseline", "no_lc", "no_ld"), help="loss variant")
    g.add_argument("--triplet", type=float, default=0.0,
                   help="weight of a cross-modal batch-hard triplet term (not in the paper; 0 = off)")
    g.add_argument("--triplet-margin", type=float, default=0.3, help="its margin, on distances of unit vectors")
    g.add_argument("--align-warmup-epochs", type=float, default=0.0,
                   help="ramp the alignment weights beta and gamma linearly from 0 over this many epochs "
                        "(0 = full weight from the first step, the paper)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut epochs short (quick runs)")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True, type=Path, help="where last.pt, args.yaml, metrics.csv go")
    g.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="mixed precision on CUDA")
    g.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True, help="evaluate at the end")
    g.add_argument("--eval-trials", type=int, default=10, help="SYSU-MM01 gallery draws at the end")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--gap-every", type=int, default=0,
                   help="measure the modality-gap table every N epochs into gap.csv (learning curves); "
                        "0 = only at the end")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = parse_with_config(build_parser(), argv)
    checks = {"epochs": 1, "batch_pairs": 2, "step_size": 1, "height": 16, "width": 16, "workers": 0,
              "eval_trials": 1, "eval_batch_size": 1, "pairs_per_id": 1, "triplet": 0, "triplet_margin": 0,
              "align_warmup_epochs": 0, "gap_every": 0, "aug_warmup_epochs": 0, "warmup_epochs": 0}
    for name, lo in checks.items():
        if getattr(args, name) < lo:
            raise UserError(f"--{name.replace('_', '-')} must be >= {lo}, got {getattr(args, name)}")
    for name in ("channel_aug", "random_erasing", "grey_remap"):
        if not 0 <= getattr(args, name) <= 1:
            raise UserError(f"--{name.replace('_', '-')} is a probability in [0, 1], got {getattr(args, name)}")
    if args.batch_pairs % args.pairs_per_id:
        raise UserError(f"--pairs-per-id {args.pairs_per_id} must divide --batch-pairs {args.batch_pairs}")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 1:
        raise UserError(f"--max-steps-per-epoch must be >= 1, got {args.max_steps_per_epoch}")
    if args.loss_preset is None:
        args.loss_preset = args.dataset
    return args


#: Optimiser name -> builder(param groups, momentum). Adam keeps the L2 weight decay of the groups (torch's
#: ``Adam(weight_decay=...)`` adds it to the gradient, as BoT / fast-reid's Adam recipe does).
OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], float], torch.optim.Optimizer]] = {
    "sgd": lambda groups, momentum: torch.optim.SGD(groups, momentum=momentum),
    "adam": lambda groups, momentum: torch.optim.Adam(groups),
}


def build_optimizer(name: str, groups: list[dict[str, Any]], momentum: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` over ``groups`` (see :func:`training.model.param_groups`)."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](groups, momentum)


# ------------------------------------------------------------------------------------ RNG + checkpoint


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors / plain types (the checkpoint is loaded with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` through ``xmreid.atomic.atomic_write`` (temp file, fsync, ``os.replace``): never a torn file."""
    atomic_write(path, lambda fh: torch.save(payload, fh))


# ------------------------------------------------------------------------------------------ the loop


def train_one_epoch(model, loader, optimizer, weights, device: torch.device, epoch: int, scaler=None,
                    max_steps: int | None = None, progress: bool = True,
                    align: Callable[[int], float] | None = None,
                    lr_scale: Callable[[int], float] | None = None) -> dict[str, float]:
    """One pass over the paired loader.

    Both modalities go through the shared model in ONE forward of the concatenated batch, so the
    BatchNorm layers see the joint visible + infrared statistics: those are what the running
    averages (used at test time, on either modality) estimate. Two separate forwards would normalise
    each modality by its own batch statistics during training but not at test time.

    ``align(step)``, when given, scales beta and gamma at the epoch's ``step`` (the warm-up);
    ``lr_scale(step)`` scales every group's learning rate of this epoch (the learning-rate warm-up).

    Returns:
        Mean losses ``{"loss", "id", "dist", "corr", "tri"}`` over the epoch, plus ``"steps"``.
    """
    from training.losses import dfe_loss
    from training.model import DFEOutput

    model.train()
    steps = len(loader) if max_steps is None else min(len(loader), max_steps)
    sums = dict.fromkeys(("loss", "id", "dist", "corr", "tri"), 0.0)
    use_amp = scaler is not None
    bar = tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=not progress, leave=False)
    done = 0
    epoch_lrs = [g["lr"] for g in optimizer.param_groups]
    for rgb, ir, labels in loader:
        if done >= steps:
            break
        rgb, ir = torch.as_tensor(rgb).to(device, non_blocking=True), torch.as_tensor(ir).to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        n = rgb.shape[0]
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            out = model(torch.cat([rgb, ir]))
            out_v = DFEOutput(out.parts[:n], [lg[:n] for lg in out.logits])
            out_i = DFEOutput(out.parts[n:], [lg[n:] for lg in out.logits])
            step_weights = weights if align is None else weights.scaled(align(done))
            loss, terms = dfe_loss(out_v, out_i, labels, step_weights)
        if lr_scale is not None:
            for group, lr in zip(optimizer.param_groups, epoch_lrs):
                group["lr"] = lr * lr_scale(done)
        optimizer.zero_grad(set_to_none=True)
        if use_amp:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        values = {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
        if not np.isfinite(values["loss"]):
            raise FloatingPointError(f"loss became {values['loss']} at epoch {epoch} step {done}; "
                                     "lower the learning rates")
        for k in sums:
            sums[k] += values[k]
        done += 1
        bar.set_postfix(id=f"{values['id']:.3f}", dist=f"{values['dist']:.3f}", corr=f"{values['corr']:.3f}")
        bar.update()
    bar.close()
    for group, lr in zip(optimizer.param_groups, epoch_lrs):
        group["lr"] = lr  # the scheduler owns the epoch's rate; the warm-up only scaled it step by step
    return {"steps": done, **{k: v / max(done, 1) for k, v in sums.items()}}


def evaluate(model, args: argparse.Namespace, dataset) -> dict[str, dict]:
    """Test-split evaluation: SYSU-MM01 all-search single-shot, or RegDB both directions."""
    from training.protocols import evaluate_regdb, evaluate_sysu, results_to_json

    progress = not args.no_progress
    if args.dataset == "sysu":
        res = {"sysu_all_single": evaluate_sysu(model, dataset.test, "all", "single", trials=args.eval_trials,
                                                seed=0, batch_size=args.eval_batch_size, progress=progress)}
    else:
        res = evaluate_regdb(model, dataset.test, batch_size=args.eval_batch_size, progress=progress)
    return results_to_json(res)


def _write_csv_row(path: Path, row: dict[str, Any], resume_epoch: int | None) -> None:
    rows = []
    if path.exists():
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if resume_epoch is None or int(r["epoch"]) <= resume_epoch]
    rows.append({k: row[k] for k in CSV_FIELDS})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """Train, checkpoint every epoch, evaluate at the end. Returns the exit code."""
    from training.data import build_dataset
    from training.data.loader import build_train_loader
    from training.features import resolve_device
    from training.gap import format_gap
    from training.losses import resolve_weights
    from training.model import DFE, param_groups
    from training.protocols import format_table

    args = parse_args(argv)
    device = resolve_device(args.device)
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --output-dir {args.output_dir}: {exc}") from exc
    if args.resume is not None and not args.resume.is_file():
        raise UserError(f"--resume checkpoint not found: {args.resume}")
    try:
        weights = resolve_weights(args.loss_preset, args.variant, args.triplet, args.triplet_margin)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    seed_everything(args.seed)
    save_args(args, args.output_dir / "args.yaml")

    kwargs = {"trial": args.trial} if args.dataset == "regdb" else {}
    dataset = build_dataset(args.dataset, args.data_root, **kwargs)
    loader = build_train_loader(dataset.train, height=args.height, width=args.width, batch_pairs=args.batch_pairs,
                                mode=args.dataset, seed=args.seed, augment=args.augment, num_workers=args.workers,
                                pin_memory=device.type == "cuda", pairs_per_id=args.pairs_per_id,
                                channel_aug=args.channel_aug, erasing=args.random_erasing, remap=args.grey_remap,
                                aug_warmup_epochs=args.aug_warmup_epochs)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    pretrained = None if str(args.pretrained).lower() in ("none", "", "false") else args.pretrained
    try:
        model = DFE(loader.num_classes, arch=args.arch, parts=args.parts, embed_dim=args.embed_dim,
                    pretrained=pretrained, height=args.height, width=args.width).to(device)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.classifier_std is not None:
        if args.classifier_std <= 0:
            raise UserError(f"--classifier-std must be > 0, got {args.classifier_std}")
        for fc in model.classifiers:
            torch.nn.init.normal_(fc.weight, std=args.classifier_std)
    optimizer = build_optimizer(args.optimizer, param_groups(model, args.lr, args.head_lr, args.weight_decay),
                                args.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=args.lr_gamma)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and args.amp else None
    start_epoch, resumed_from = 0, None
    if args.resume is not None:
        start_epoch = resumed_from = _resume(args.resume, model, optimizer, scheduler, scaler)
    log.info("training %s (%s, %d classes) on %s for epochs %d..%d, %d steps/epoch, weights %s",
             args.arch, args.variant, loader.num_classes, device, start_epoch + 1, args.epochs,
             len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch), weights)

    ckpt_path = args.output_dir / "last.pt"
    steps_per_epoch = len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
    for epoch in range(start_epoch, args.epochs):
        loader.set_epoch(epoch)
        lrs = [g["lr"] for g in optimizer.param_groups]
        tic = time.perf_counter()
        stats = train_one_epoch(model, loader, optimizer, weights, device, epoch + 1, scaler,
                                args.max_steps_per_epoch, progress=not args.no_progress,
                                align=_warmup(args.align_warmup_epochs, epoch, steps_per_epoch),
                                lr_scale=_warmup(args.warmup_epochs, epoch, steps_per_epoch, start=0.01))
        seconds = time.perf_counter() - tic
        scheduler.step()
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1, "config": plain(vars(args)), "model_config": model.model_config(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
        })
        row = {"epoch": epoch + 1, "lr_backbone": lrs[0], "lr_head": lrs[1], "seconds": round(seconds, 3),
               "steps_per_s": round(stats["steps"] / max(seconds, 1e-9), 4), **stats}
        _write_csv_row(args.output_dir / "metrics.csv", row, resumed_from)
        resumed_from = None
        log.info("epoch %d/%d: loss %.4f (id %.4f, dist %.4f, corr %.4f, tri %.4f), %.1f s, %.2f steps/s", epoch + 1,
                 args.epochs, stats["loss"], stats["id"], stats["dist"], stats["corr"], stats["tri"], seconds,
                 row["steps_per_s"])
        last = epoch + 1 == args.epochs
        if args.gap_every and ((epoch + 1) % args.gap_every == 0 or last) and not (last and args.eval):
            _log_gap(model, args, dataset, epoch + 1, (epoch + 1) * steps_per_epoch)

    if args.eval:
        results = evaluate(model, args, dataset)
        gap = _log_gap(model, args, dataset, args.epochs, args.epochs * steps_per_epoch)
        (args.output_dir / "final_metrics.json").write_text(json.dumps({**results, GAP_KEY: gap}, indent=2) + "\n")
        print(format_table(results))
        print(format_gap(gap))
    return 0


#: Key of the modality-gap table in ``final_metrics.json`` (beside the protocol settings).
GAP_KEY = "modality_gap"


def _warmup(epochs: float, epoch: int, steps_per_epoch: int, start: float = 0.0) -> Callable[[int], float] | None:
    """A linear warm-up factor for each step of ``epoch``: from ``start`` to 1 over ``epochs`` epochs of steps
    (None when there is no warm-up)."""
    if epochs <= 0:
        return None
    total = epochs * steps_per_epoch
    return lambda step: min(1.0, start + (1.0 - start) * (epoch * steps_per_epoch + step) / total)


def _log_gap(model, args: argparse.Namespace, dataset, epoch: int, steps: int) -> dict:
    """Measure the gap table, append it to ``gap.csv`` (the learning curve) and return it."""
    from training.gap import flat_gap, model_gap

    gap = model_gap(model, dataset.train, dataset.test, batch_size=args.eval_batch_size)
    row = {"epoch": epoch, "steps": steps, **flat_gap(gap)}
    path = args.output_dir / "gap.csv"
    rows = []
    if path.exists():
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epoch]
    rows.append(row)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        writer.writeheader()
        writer.writerows(rows)
    log.info("epoch %d gap: test IR->RGB r1 %.3f, RGB->RGB %.3f, IR->IR %.3f, train IR->RGB %.3f, xm_auc %.3f",
             epoch, row["test_ir_to_rgb_r1"], row["test_rgb_to_rgb_r1"], row["test_ir_to_ir_r1"],
             row["train_ir_to_rgb_r1"], row["xm_auc"])
    model.train()
    return gap


def _resume(path: Path, model, optimizer, scheduler, scaler) -> int:
    """Load a checkpoint's states into the run; returns the number of epochs already done."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError, OSError) as exc:
        raise UserError(f"cannot resume from {path}: {str(exc).splitlines()[0]} "
                        "(it must be a last.pt of the same model and data)") from exc
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    log.info("resumed from %s after epoch %d", path, ckpt["epoch"])
    return int(ckpt["epoch"])
