"""``python -m training train``: train a DFE model (paper §4.2), like torchvision's reference train.py.

    python -m training train --config configs/sysu.yaml --data-root DIR --output-dir DIR [overrides]

The options are in :mod:`training.train_options`; the resolved arguments are saved as ``args.yaml`` beside
the checkpoint. Every epoch writes ``last.pt`` atomically (model, optimizer, scheduler, epoch, config,
model_config, plus AMP scaler, RNG states and the time budget used so that ``--resume`` continues exactly),
appends a row to ``metrics.csv``; the end evaluates on the test split (SYSU-MM01 all-search single-shot, or
RegDB both directions) into ``final_metrics.json``. With ``--time-budget-s`` the number of steps per epoch
follows :class:`training.budget.StepPlan`.
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

from training.budget import StepPlan, decay_factor, warmup_factor
from training.config import plain, save_args
from training.train_options import AMP_MODES, CACHE_LIMIT_MB, build_parser, parse_args
from xmreid.atomic import atomic_write
from xmreid.errors import UserError

__all__ = ["AMP_MODES", "OPTIMIZERS", "build_optimizer", "build_parser", "main", "parse_args", "train_one_epoch"]

log = logging.getLogger(__name__)

CSV_FIELDS = ("epoch", "steps", "lr_backbone", "lr_head", "loss", "id", "dist", "corr", "tri", "seconds",
              "steps_per_s")


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
                    lr_scale: Callable[[int], float] | None = None, plan: StepPlan | None = None,
                    amp_dtype: torch.dtype | None = None, probe: Callable[..., None] | None = None,
                    first_step: int = 0) -> dict[str, float]:
    """One pass over the paired loader.

    Both modalities go through the shared model in ONE forward of the concatenated batch, so the
    BatchNorm layers see the joint visible + infrared statistics: those are what the running
    averages (used at test time, on either modality) estimate. Two separate forwards would normalise
    each modality by its own batch statistics during training but not at test time.

    ``align(step)``, when given, scales beta and gamma at the epoch's ``step`` (the warm-up);
    ``lr_scale(step)`` scales every group's learning rate of this epoch (the learning-rate warm-up).
    ``plan`` (a started :class:`StepPlan` whose ``begin_epoch`` ran) sets how many steps the epoch takes,
    instead of ``max_steps``. ``amp_dtype`` runs the forward under autocast to that dtype (with ``scaler``
    for float16). ``probe(global_step, epoch, model, out_v, out_i, labels, id_loss)`` is called after each
    step, ``first_step`` being the number of steps before this epoch.

    Returns:
        Mean losses ``{"loss", "id", "dist", "corr", "tri"}`` over the epoch, plus ``"steps"``.
    """
    from training.losses import dfe_loss

    model.train()
    if plan is not None:
        planned = plan.steps
    else:
        fixed = len(loader) if max_steps is None else min(len(loader), max_steps)
        planned = lambda: fixed  # noqa: E731
    sums = dict.fromkeys(("loss", "id", "dist", "corr", "tri"), 0.0)
    bar = tqdm(total=planned(), desc=f"epoch {epoch}", unit="step", disable=not progress, leave=False)
    done = 0
    epoch_lrs = [g["lr"] for g in optimizer.param_groups]
    for rgb, ir, labels in loader:
        if done >= planned():
            break
        rgb, ir = torch.as_tensor(rgb).to(device, non_blocking=True), torch.as_tensor(ir).to(device, non_blocking=True)
        labels = torch.as_tensor(labels).to(device, non_blocking=True)
        n = rgb.shape[0]
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(torch.cat([rgb, ir]))
            out_v, out_i = out.split(n)
            step_weights = weights if align is None else weights.scaled(align(done))
            loss, terms = dfe_loss(out_v, out_i, labels, step_weights)
        if lr_scale is not None:
            for group, lr in zip(optimizer.param_groups, epoch_lrs):
                group["lr"] = lr * lr_scale(done)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
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
        if probe is not None:
            probe(first_step + done, epoch, model, out_v, out_i, labels, values["id"])
        if plan is not None:
            plan.step_done()
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
    """Add ``row`` to the epoch log ``path``; with ``resume_epoch`` (a run's first epoch) the rows of later
    epochs are dropped first, so a resumed run continues its log and a run trained again starts a new one."""
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
    from training.probe import StepProbe
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
        weights = resolve_weights(args.loss_preset, args.variant, args.triplet, args.triplet_margin, args.ld_form)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    amp_dtype, scaler = _amp(args.amp, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    save_args(args, args.output_dir / "args.yaml")

    kwargs = {"trial": args.trial} if args.dataset == "regdb" else {}
    dataset = build_dataset(args.dataset, args.data_root, **kwargs)
    loader = build_train_loader(dataset.train, height=args.height, width=args.width, batch_pairs=args.batch_pairs,
                                mode=args.dataset, seed=args.seed, augment=args.augment, num_workers=args.workers,
                                pin_memory=device.type == "cuda", pairs_per_id=args.pairs_per_id,
                                channel_aug=args.channel_aug, erasing=args.random_erasing, remap=args.grey_remap,
                                aug_warmup_epochs=args.aug_warmup_epochs,
                                cache_images=_cache_images(args.cache_images, len(dataset.train), args.height,
                                                           args.width))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    pretrained = None if str(args.pretrained).lower() in ("none", "", "false") else args.pretrained
    try:
        model = DFE(loader.num_classes, arch=args.arch, parts=args.parts, embed_dim=args.embed_dim,
                    pretrained=pretrained, height=args.height, width=args.width).to(device)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    model.cosine_scale = args.cosine_classifier or None
    if args.zero_init_residual:
        if pretrained is not None:
            raise UserError("--zero-init-residual is for a trunk trained from scratch; use it with --pretrained none")
        model.zero_init_residual()
    if args.classifier_std is not None:
        if args.classifier_std <= 0:
            raise UserError(f"--classifier-std must be > 0, got {args.classifier_std}")
        for fc in model.classifiers:
            torch.nn.init.normal_(fc.weight, std=args.classifier_std)
    optimizer = build_optimizer(args.optimizer, param_groups(model, args.lr, args.head_lr, args.weight_decay),
                                args.momentum)
    # linear / cosine decay per step (``_lr_scale``); the epoch scheduler then keeps the rates as they are.
    gamma = args.lr_gamma if args.lr_schedule == "step" else 1.0
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=gamma)
    start_epoch, resumed_from, used_s, steps_done = 0, 0, 0.0, 0
    if args.resume is not None:
        start_epoch, used_s, steps_done = _resume(args.resume, model, optimizer, scheduler, scaler)
        resumed_from = start_epoch
    steps_per_epoch = len(loader) if args.max_steps_per_epoch is None else min(len(loader), args.max_steps_per_epoch)
    log.info("training %s (%s, %d classes) on %s for epochs %d..%d, %d steps/epoch, %d threads, amp %s, weights %s",
             args.arch, args.variant, loader.num_classes, device, start_epoch + 1, args.epochs, steps_per_epoch,
             torch.get_num_threads(), args.amp, weights)
    probe = StepProbe(args.output_dir / "probe.csv", args.probe_every, resumed_from) if args.probe_every else None

    ckpt_path = args.output_dir / "last.pt"
    plan = StepPlan(args.epochs, steps_per_epoch, args.time_budget_s, clock=_clock, elapsed_s=used_s)
    plan.start()
    for epoch in range(start_epoch, args.epochs):
        if plan.begin_epoch(epoch) == 0:
            log.info("time budget spent: stopping before epoch %d of %d", epoch + 1, args.epochs)
            break
        loader.set_epoch(epoch)
        lrs = [g["lr"] for g in optimizer.param_groups]
        tic = time.perf_counter()
        stats = train_one_epoch(model, loader, optimizer, weights, device, epoch + 1, scaler,
                                progress=not args.no_progress,
                                align=_warmup(args.align_warmup_epochs, epoch, plan),
                                lr_scale=_lr_scale(args, epoch, plan), plan=plan,
                                amp_dtype=amp_dtype, probe=probe, first_step=steps_done)
        plan.end_epoch()
        seconds = time.perf_counter() - tic
        steps_done += stats["steps"]
        scheduler.step()
        # The epoch's log row before its checkpoint: a run stopped between the two redoes the epoch on resume
        # and drops the row, where the other order would lose it.
        row = {"epoch": epoch + 1, "lr_backbone": lrs[0], "lr_head": lrs[1], "seconds": round(seconds, 3),
               "steps_per_s": round(stats["steps"] / max(seconds, 1e-9), 4), **stats}
        _write_csv_row(args.output_dir / "metrics.csv", row, resumed_from)
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1, "config": plain(vars(args)), "model_config": model.model_config(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
            "budget_used_s": plan.elapsed(), "steps_done": steps_done,
        })
        resumed_from = None
        log.info("epoch %d/%d: loss %.4f (id %.4f, dist %.4f, corr %.4f, tri %.4f), %d steps, %.1f s, %.2f steps/s",
                 epoch + 1, args.epochs, stats["loss"], stats["id"], stats["dist"], stats["corr"], stats["tri"],
                 stats["steps"], seconds, row["steps_per_s"])
        last = epoch + 1 == args.epochs or plan.exhausted
        if args.gap_every and ((epoch + 1) % args.gap_every == 0 or last) and not (last and args.eval):
            _log_gap(model, args, dataset, epoch + 1, steps_done)
    if plan.budget is not None:
        log.info("training loop: %d steps in %.0f s of a %.0f s budget%s", steps_done, plan.elapsed(), plan.budget,
                 " (cut by the budget)" if plan.exhausted or plan.limited else "")

    if args.eval:
        results = evaluate(model, args, dataset)
        gap = _log_gap(model, args, dataset, args.epochs, steps_done)
        (args.output_dir / "final_metrics.json").write_text(json.dumps({**results, GAP_KEY: gap}, indent=2) + "\n")
        print(format_table(results))
        print(format_gap(gap))
    return 0


#: Key of the modality-gap table in ``final_metrics.json`` (beside the protocol settings).
GAP_KEY = "modality_gap"
#: The time budget's clock (a module attribute so tests can replace it with a fake one).
_clock: Callable[[], float] = time.monotonic


def _warmup(epochs: float, epoch: int, plan: StepPlan, start: float = 0.0) -> Callable[[int], float] | None:
    """A linear warm-up factor for each step of ``epoch``, from ``start`` to 1 over ``epochs`` epochs (None when
    there is no warm-up); measured in epochs, so a budget-shortened epoch advances it as much as a full one."""
    if epochs <= 0:
        return None
    return lambda step: warmup_factor(epochs, epoch, step, max(plan.steps(), 1), start)


def _lr_scale(args: argparse.Namespace, epoch: int, plan: StepPlan) -> Callable[[int], float] | None:
    """The per-step learning-rate factor of ``epoch``: the warm-up times the schedule's decay (None when both are
    constant, the paper's step schedule without warm-up)."""
    warmup = _warmup(args.warmup_epochs, epoch, plan, start=0.01)
    if args.lr_schedule == "step":
        return warmup
    return lambda step: ((1.0 if warmup is None else warmup(step))
                         * decay_factor(args.lr_schedule, args.epochs, epoch, step, max(plan.steps(), 1)))


def _amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """``--amp`` -> (autocast dtype or None, GradScaler or None)."""
    if mode == "auto":
        mode = "fp16" if device.type == "cuda" else "off"
    if mode == "off":
        return None, None
    if mode == "fp16":
        if device.type != "cuda":
            raise UserError("--amp fp16 needs a CUDA device; on a CPU use --amp bf16 or off")
        return torch.float16, torch.amp.GradScaler("cuda")
    if device.type == "cpu" and not torch.cpu._is_avx512_bf16_supported():
        log.warning("--amp bf16: this CPU has no native bfloat16 (AVX512-BF16); autocast will emulate it, "
                    "usually slower than float32")
    return torch.bfloat16, None  # bfloat16 has float32's range: no loss scaling


def _cache_images(mode: str, count: int, height: int, width: int) -> bool:
    """``--cache-images``: whether to decode the training set once into memory."""
    if mode != "auto":
        return mode == "on"
    size_mb = count * height * width * 3 / 2**20
    if size_mb > CACHE_LIMIT_MB:
        log.info("not caching %d training images (%.0f MB > %d MB); decoding them at every step", count, size_mb,
                 CACHE_LIMIT_MB)
    return size_mb <= CACHE_LIMIT_MB


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


def _resume(path: Path, model, optimizer, scheduler, scaler) -> tuple[int, float, int]:
    """Load a checkpoint's states into the run; returns (epochs done, time budget used, steps done)."""
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
    return int(ckpt["epoch"]), float(ckpt.get("budget_used_s", 0.0)), int(ckpt.get("steps_done", 0))
