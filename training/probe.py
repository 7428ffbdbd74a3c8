"""Per-step probes of what the alignment losses act on: the training option ``--probe-every N``.

Every N steps one row goes to ``probe.csv`` beside the checkpoint, computed from the step's own forward pass
(no extra images, no extra forward):

* ``feat_norm`` (and ``feat_norm_rgb`` / ``feat_norm_ir``): mean L2 norm of the part embeddings f_i, the scale
  of the descriptor; ``feat_std``: their spread across the batch's people, parts and modalities (the square root
  of the ``spread`` form's divisor);
* ``bn_weight`` / ``bn_bias``: mean |weight| and |bias| of the K part BatchNorms, the learned scale and offset
  that set ``feat_norm``;
* ``ld_mean`` / ``ld_sigma``: the two terms of the paper's L_d (eq. 14) on this batch, and ``ld_standard`` /
  ``ld_unit`` / ``ld_spread`` / ``ld_bn``: the same loss in the scale-invariant forms
  (``training.losses.LD_FORMS``), so a drop of the paper's value can be told apart from a drop of the modality
  difference relative to the features' own scale;
* ``lc`` and ``id``: the correlation and identity losses (unweighted);
* ``batch_auc``: within the batch, the probability that an infrared image's descriptor is closer (cosine) to
  its own person's visible descriptor than to another person's, a cheap per-step cross-modal retrieval proxy
  (0.5 = chance); the test-set figure comes from ``--gap-every``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.gap import roc_auc
from training.losses import correlation_loss, distribution_loss, distribution_terms
from training.model import DFE, DFEOutput

PROBE_FIELDS: tuple[str, ...] = (
    "epoch", "step", "feat_norm", "feat_norm_rgb", "feat_norm_ir", "feat_std", "bn_weight", "bn_bias",
    "ld_mean", "ld_sigma", "ld_standard", "ld_unit", "ld_spread", "ld_bn", "lc", "id", "batch_auc")


def batch_auc(parts_v: Tensor, parts_i: Tensor, labels: Tensor) -> float:
    """ROC AUC of same-person vs different-person visible-infrared cosine similarities in one batch."""
    v = F.normalize(parts_v.flatten(1).float(), dim=1)
    i = F.normalize(parts_i.flatten(1).float(), dim=1)
    sim = (i @ v.T).cpu().numpy()
    same = (labels[:, None] == labels[None, :]).cpu().numpy()
    return roc_auc(sim[same], sim[~same])


@torch.no_grad()
def probe_row(model: DFE, out_v: DFEOutput, out_i: DFEOutput, labels: Tensor, id_loss: float) -> dict[str, float]:
    """The probe values (see the module docstring) of one step's two-stream output."""
    pv, pi = out_v.parts.detach().float(), out_i.parts.detach().float()
    norm_v, norm_i = pv.norm(dim=-1).mean().item(), pi.norm(dim=-1).mean().item()
    pooled = torch.cat([pv, pi]).flatten(0, 1)
    bns = [emb[1] for emb in model.embeddings]
    ld_mean, ld_sigma = distribution_terms(pv, pi)
    return {
        "feat_norm": (norm_v + norm_i) / 2, "feat_norm_rgb": norm_v, "feat_norm_ir": norm_i,
        "feat_std": pooled.var(dim=0, unbiased=False).mean().sqrt().item(),
        "bn_weight": torch.cat([bn.weight.abs() for bn in bns]).mean().item(),
        "bn_bias": torch.cat([bn.bias.abs() for bn in bns]).mean().item(),
        "ld_mean": ld_mean.item(), "ld_sigma": ld_sigma.item(),
        **{f"ld_{form}": distribution_loss(pv, pi, form).item() for form in ("standard", "unit", "spread")},
        "ld_bn": (float("nan") if out_v.normalised is None or out_i.normalised is None else
                  distribution_loss(out_v.normalised.detach().float(), out_i.normalised.detach().float()).item()),
        "lc": correlation_loss(pv.flatten(1), pi.flatten(1)).item(), "id": id_loss,
        "batch_auc": batch_auc(pv, pi, labels),
    }


class StepProbe:
    """Writes a :func:`probe_row` every ``every`` training steps to ``path`` (CSV, one header).

    Args:
        path: The CSV file; rows of epochs after ``resume_epoch`` are dropped when resuming.
        every: Steps between rows (counted over the whole run).
        resume_epoch: The epoch a resumed run continues after (None: a fresh file).
    """

    def __init__(self, path: Path, every: int, resume_epoch: int | None = None) -> None:
        if every < 1:
            raise ValueError(f"probe interval must be >= 1 step, got {every}")
        self.path, self.every = Path(path), int(every)
        rows: list[dict[str, str]] = []
        if resume_epoch is not None and self.path.exists():
            with self.path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume_epoch]
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=PROBE_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def __call__(self, global_step: int, epoch: int, model: DFE, out_v: DFEOutput, out_i: DFEOutput,
                 labels: Tensor, id_loss: float) -> None:
        """Record the step (1-based ``global_step``) when it falls on the interval."""
        if global_step % self.every:
            return
        row = {"epoch": epoch, "step": global_step, **probe_row(model, out_v, out_i, labels, id_loss)}
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=PROBE_FIELDS).writerow(
                {k: (round(v, 6) if isinstance(v, float) and np.isfinite(v) else v) for k, v in row.items()})
