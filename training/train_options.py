"""The options of ``python -m training train`` and their checks (the loop is in :mod:`training.train`).

The YAML given by ``--config`` sets the parser's defaults and explicit flags override it (timm's scheme,
:func:`training.config.parse_with_config`); every option's config key is its name with ``_``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.budget import LR_SCHEDULES
from training.config import parse_with_config
from training.losses import LD_FORMS
from training.paper import PAPER
from xmreid.errors import UserError

#: ``--amp`` modes (see the option's help).
AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")
#: ``--cache-images auto`` caches the decoded training set when it fits in this many megabytes.
CACHE_LIMIT_MB = 2048
#: ``--optimizer`` names (the builders are in :mod:`training.train`).
OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "adam")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m training train``, in argparse groups (timm's layout)."""
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
    g.add_argument("--cache-images", default="auto", choices=("auto", "on", "off"),
                   help="decode the training images once into memory at the model's input size (auto: when they "
                        f"fit in {CACHE_LIMIT_MB} MB) instead of decoding every image at every step")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default=PAPER.arch, help="resnet18 | resnet34 | resnet50")
    g.add_argument("--parts", type=int, default=PAPER.parts, help="K horizontal stripes")
    g.add_argument("--embed-dim", type=int, default=PAPER.embed_dim, help="D, width of each part embedding")
    g.add_argument("--pretrained", default="imagenet", help="imagenet | none | path to a ResNet state dict")
    g.add_argument("--classifier-std", type=float, default=None,
                   help="re-initialise the part classifiers with this weight std (default: the model's 0.001, "
                        "PCB's value for a pretrained trunk; from scratch a larger value such as 0.01 lets the "
                        "identity loss reach the trunk from the first steps)")
    g.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=False,
                   help="start every residual block as the identity (its last BatchNorm weight 0; Goyal et al. "
                        "2017), for a trunk trained from scratch")
    g.add_argument("--cosine-classifier", type=float, default=0.0, metavar="S",
                   help="part classifiers on cosine similarity scaled by S (normalised softmax, e.g. 16): bounded "
                        "logits whatever the head learning rate; 0 = the paper's linear classifiers")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--lr", type=float, default=0.01, help="backbone learning rate")
    g.add_argument("--head-lr", type=float, default=0.1, help="learning rate of the new layers")
    g.add_argument("--optimizer", default="sgd", choices=OPTIMIZER_NAMES,
                   help="sgd (the paper: momentum SGD) or adam (Adam with L2 weight decay, the optimiser of the "
                        "strong re-ID baselines, e.g. Luo et al.'s BoT; converges faster from scratch)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--lr-schedule", default="step", choices=LR_SCHEDULES,
                   help="step: x lr-gamma every step-size epochs (the paper); linear / cosine: decay every step to 0 "
                        "at the end of the run (linear is the best schedule for a limited number of steps, Li et "
                        "al., Budgeted Training, ICLR 2020)")
    g.add_argument("--step-size", type=int, default=5, help="epochs between learning-rate decays (step schedule)")
    g.add_argument("--lr-gamma", type=float, default=0.1, help="learning-rate decay factor")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear learning-rate warm-up from 1%% over this many epochs of steps (the cross-modal "
                        "baselines AGW/CAJ warm up for 10 epochs; 0 = none, the paper)")
    g.add_argument("--loss-preset", default=None, choices=("sysu", "regdb"),
                   help="alpha:beta:gamma 1:1:1 (sysu) or 1:11:2 (regdb); default: the dataset's")
    g.add_argument("--variant", default="dfe", choices=("dfe", "baseline", "no_lc", "no_ld"), help="loss variant")
    g.add_argument("--ld-form", default="paper", choices=LD_FORMS,
                   help="form of the distribution loss L_d: paper (eq. 14 on the raw part embeddings) or a form "
                        "that rescaling the features cannot lower: standard (on the part embeddings standardised "
                        "per part and dimension over the batch), unit (per-part vectors scaled to norm sqrt(D)) or "
                        "spread (divided by the batch's pooled feature variance) or bn (on the embeddings as BatchNorm "
                        "normalises them, before its weight and bias); see training.losses.LD_FORMS")
    g.add_argument("--triplet", type=float, default=0.0,
                   help="weight of a cross-modal batch-hard triplet term (not in the paper; 0 = off)")
    g.add_argument("--triplet-margin", type=float, default=0.3, help="its margin, on distances of unit vectors")
    g.add_argument("--align-warmup-epochs", type=float, default=0.0,
                   help="ramp the alignment weights beta and gamma linearly from 0 over this many epochs "
                        "(0 = full weight from the first step, the paper)")
    g.add_argument("--max-steps-per-epoch", type=int, default=None, help="cut epochs short (quick runs)")
    g.add_argument("--time-budget-s", type=float, default=0.0,
                   help="wall-clock seconds for the training loop; a machine too slow to run every step in it runs "
                        "fewer steps per epoch (the schedule is on epochs, i.e. on the fraction of the run), a fast "
                        "one runs them all, exactly as without a budget; 0 = no budget")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", required=True, type=Path, help="where last.pt, args.yaml, metrics.csv go")
    g.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", nargs="?", const="auto", default="auto", choices=AMP_MODES,
                   help="mixed precision: auto (float16 autocast on CUDA, none on CPU), bf16 (bfloat16 autocast on "
                        "any device: faster only on CPUs with native bf16, e.g. AVX512-BF16 or AMX), fp16 (CUDA) "
                        "or off")
    g.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="same as --amp off")
    g.add_argument("--threads", type=int, default=0,
                   help="compute threads (torch.set_num_threads); 0 = torch's default, one per core")
    g.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True, help="evaluate at the end")
    g.add_argument("--eval-trials", type=int, default=10, help="SYSU-MM01 gallery draws at the end")
    g.add_argument("--eval-batch-size", type=int, default=64)
    g.add_argument("--gap-every", type=int, default=0,
                   help="measure the modality-gap table every N epochs into gap.csv (learning curves); "
                        "0 = only at the end")
    g.add_argument("--probe-every", type=int, default=0,
                   help="every N steps, append the feature scale, the BatchNorm weights, L_d's terms and a batch "
                        "retrieval AUC to probe.csv (training.probe); 0 = off")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the train command line (built-in defaults < ``--config`` YAML < flags).

    Raises:
        UserError: an out-of-range value, named with its allowed range.
    """
    args = parse_with_config(build_parser(), argv)
    # A YAML (or an older args.yaml) may say amp: true / false, which argparse does not convert.
    args.amp = {True: "auto", False: "off"}.get(args.amp, args.amp)
    if args.amp not in AMP_MODES:
        raise UserError(f"--amp {args.amp!r}: valid modes are {', '.join(AMP_MODES)}")
    checks = {"epochs": 1, "batch_pairs": 2, "step_size": 1, "height": 16, "width": 16, "workers": 0,
              "eval_trials": 1, "eval_batch_size": 1, "pairs_per_id": 1, "triplet": 0, "triplet_margin": 0,
              "align_warmup_epochs": 0, "gap_every": 0, "aug_warmup_epochs": 0, "warmup_epochs": 0,
              "time_budget_s": 0, "threads": 0, "probe_every": 0, "cosine_classifier": 0}
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
