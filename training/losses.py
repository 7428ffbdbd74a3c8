"""The three DFE losses (Hao et al., ACM MM 2019, §3.2-3.5) and their weighted sum (eq. 15).

Public contract (README): ``identity_loss(logits, labels)``, ``distribution_loss(parts_v, parts_i)``,
``correlation_loss(feats_v, feats_i)``, each returning a scalar tensor. Row j of the visible and
infrared tensors is pair j (the same person seen in both modalities).

The alignment losses are computed in at least float32 even under mixed precision: they take
square roots of small variances and normalise by small norms, which float16 would round to zero.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model import DFEOutput

logger = logging.getLogger(__name__)

__all__ = [
    "EPS",
    "LD_FORMS",
    "PRESETS",
    "VARIANTS",
    "LossWeights",
    "correlation_loss",
    "cross_modal_triplet_loss",
    "dfe_loss",
    "distribution_loss",
    "distribution_terms",
    "identity_loss",
    "resolve_weights",
]

# Added under the square roots of eq. 7-8 and of the Pearson denominators (eq. 9). Its only job is
# to avoid 0/0 when a variance is exactly zero: the gradient of sigma = sqrt(var + eps) w.r.t. a part
# value is (x - mu) / (K * sigma), bounded by 1/sqrt(K) for any eps > 0, so a tiny eps costs no
# stability and biases sigma by at most sqrt(eps) = 1e-6 (BN-scale features have sigma ~ 1).
# Identical inputs still give exactly 0 because both sides receive the same eps.
EPS = 1e-12


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_pair(a: Tensor, b: Tensor, ndim: int, names: str, shape_doc: str) -> None:
    if a.ndim != ndim or b.ndim != ndim:
        raise ValueError(f"{names} must both be {shape_doc}, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape (row j = pair j), "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        raise ValueError(f"{names} are empty: need at least one pair")


def identity_loss(logits: list[Tensor], labels: Tensor) -> Tensor:
    """Sum over the K part classifiers of the batch-mean cross-entropy (eq. 1 / eq. 13).

    Args:
        logits: K tensors ``[B, C]``, one per part.
        labels: ``[B]`` int64 identity labels in ``[0, C)``.

    Returns:
        Scalar tensor ``sum_i mean_b CE(logits[i][b], labels[b])``. Eq. 13 is this per modality,
        added: ``identity_loss(v) + identity_loss(i)`` (as :func:`dfe_loss` does). Passing both
        modalities concatenated gives the mean of the two, i.e. half of eq. 13.
    """
    if len(logits) == 0:
        raise ValueError("logits is empty: expected one [B, C] tensor per part")
    for i, lg in enumerate(logits):
        if lg.ndim != 2 or lg.shape[0] != labels.shape[0]:
            raise ValueError(f"logits[{i}] has shape {tuple(lg.shape)}; expected [B={labels.shape[0]}, C]")
    return torch.stack([F.cross_entropy(_at_least_float32(lg), labels) for lg in logits]).sum()


def _part_moments(parts: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, mean and population std over its K part vectors (eq. 7-8): two ``[N, D]``."""
    mu = parts.mean(dim=1)
    var = (parts - mu.unsqueeze(1)).pow(2).mean(dim=1)  # population variance: divide by K, not K-1
    return mu, torch.sqrt(var + EPS)


def _unit_parts(parts: Tensor) -> Tensor:
    """Each part vector scaled to norm sqrt(D): the norm of a unit-variance (BN-output) vector."""
    return parts * torch.rsqrt(parts.pow(2).mean(dim=-1, keepdim=True) + EPS)


def _spread(parts_v: Tensor, parts_i: Tensor) -> Tensor:
    """Mean over the D dimensions of the population variance of all 2·N·K part vectors of the batch."""
    pooled = torch.cat([parts_v, parts_i]).flatten(0, 1)  # [2NK, D]
    return (pooled - pooled.mean(dim=0)).pow(2).mean(dim=0).mean()


#: The ``standard`` form adds this fraction of the mean variance to each (part, dimension)'s variance: BatchNorm's
#: 1e-5, taken relative to the features' own scale so that rescaling all of them changes nothing, while a
#: (part, dimension) that hardly varies over the batch is still not blown up into noise.
STANDARD_EPS = 1e-5


def _standardised(parts_v: Tensor, parts_i: Tensor) -> tuple[Tensor, Tensor]:
    """Both streams standardised per (part, dimension) over the batch's 2N images, as BatchNorm's training-mode
    normalisation does, without its learned weight and bias."""
    both = torch.cat([parts_v, parts_i])  # [2N, K, D]
    mean = both.mean(dim=0, keepdim=True)
    var = (both - mean).pow(2).mean(dim=0, keepdim=True)
    z = (both - mean) * torch.rsqrt(var + STANDARD_EPS * var.mean() + EPS)
    return z[: parts_v.shape[0]], z[parts_v.shape[0]:]


def _form_inputs(parts_v: Tensor, parts_i: Tensor, form: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """The part tensors a form compares, and the scale its terms are divided by (None: none)."""
    if form in ("paper", "bn"):  # bn: the caller passes the BatchNorm-normalised embeddings
        return parts_v, parts_i, None
    if form == "standard":
        return (*_standardised(parts_v, parts_i), None)
    if form == "unit":
        return _unit_parts(parts_v), _unit_parts(parts_i), None
    if form == "spread":
        return parts_v, parts_i, _spread(parts_v, parts_i) + EPS
    raise ValueError(f"unknown distribution loss form {form!r}; valid forms: {', '.join(LD_FORMS)}")


#: Forms of L_d (``--ld-form``). ``paper`` is eq. 14 as printed, on the raw post-BN part embeddings: shrinking
#: every feature by a factor c lowers it by c², and adding a different offset to each part (growing the part
#: BatchNorms' biases apart) makes every image's sigma over its parts large and alike, so it can be met by
#: collapsing the descriptor instead of by aligning the modalities. The other forms are unchanged by rescaling:
#:
#: * ``standard``: eq. 14 on the part embeddings standardised per part and dimension over the batch (BatchNorm's
#:   normalisation without its weight and bias). Unchanged by any scale and offset of any (part, dimension), so
#:   it can only be lowered by making the visible and infrared images of a person differ less than people do.
#: * ``unit``: eq. 14 on each part vector scaled to norm sqrt(D) (direction only). A shared offset, such as the
#:   BatchNorm bias, can still dominate a shrunken feature and meet it.
#: * ``spread``: eq. 14 divided by the batch's feature variance pooled over people, parts and modalities. Unchanged
#:   by one scale and one offset for all parts, but part-specific offsets inflate the divisor and flatten the
#:   sigma differences, so it can still be lowered without aligning anything.
#:
#: * ``bn``: eq. 14 on the part embeddings as their BatchNorms normalise them over the batch, before the learned
#:   weight and bias (:attr:`training.model.DFEOutput.normalised`; :func:`dfe_loss` passes them). Like
#:   ``standard`` it cannot be lowered by any scale or offset, but it is taken where BatchNorm takes it, from
#:   the 1x1 convolution's output, so its gradient does not pass through the learned weight. ``standard``
#:   re-standardises the affine output: where a dimension's weight nears zero its relative eps takes over and
#:   the gradient can be amplified up to 1 / sqrt(STANDARD_EPS) (a ``standard`` run diverges in
#:   benchmarks/results/ld_mechanism.md).
#:
#: At the unit variance BatchNorm initialises features to, all four are close to the paper's value, so the
#: paper's trade-off weights keep their meaning.
LD_FORMS: tuple[str, ...] = ("paper", "standard", "unit", "spread", "bn")


def distribution_terms(parts_v: Tensor, parts_i: Tensor, form: str = "paper") -> tuple[Tensor, Tensor]:
    """The two terms of L_d (eq. 14) in one of the :data:`LD_FORMS`: the mean term and the sigma term.

    Args:
        parts_v: ``[N, K, D]`` visible part embeddings.
        parts_i: ``[N, K, D]`` infrared part embeddings of the same N people, in the same order.
        form: ``"paper"`` (eq. 14 as printed), ``"standard"``, ``"unit"``, ``"spread"`` or ``"bn"`` (the
            inputs are then the BatchNorm-normalised embeddings; see :data:`LD_FORMS`).

    Returns:
        ``(1/(2N) sum_j ||mu_j^V - mu_j^I||^2, 1/(2N) sum_j ||sigma_j^V - sigma_j^I||^2)``, both divided by the
        batch's feature spread for ``"spread"``; their sum is the loss.
    """
    _check_pair(parts_v, parts_i, 3, "parts_v and parts_i", "[N, K, D]")
    pv, pi, scale = _form_inputs(_at_least_float32(parts_v), _at_least_float32(parts_i), form)
    mu_v, sigma_v = _part_moments(pv)
    mu_i, sigma_i = _part_moments(pi)
    n = parts_v.shape[0]
    mean_term = (mu_v - mu_i).pow(2).sum() / (2 * n)
    sigma_term = (sigma_v - sigma_i).pow(2).sum() / (2 * n)
    if scale is not None:
        mean_term, sigma_term = mean_term / scale, sigma_term / scale
    return mean_term, sigma_term


def distribution_loss(parts_v: Tensor, parts_i: Tensor, form: str = "paper") -> Tensor:
    """Intra-class distribution loss L_d (eq. 6-8, 14).

    Each image's K part embeddings are treated as K samples of a diagonal Gaussian; the loss pulls
    the visible and infrared Gaussians of a pair together (the Jeffreys divergence simplified to
    mean and std differences, §3.3).

    Args:
        parts_v: ``[N, K, D]`` visible part embeddings.
        parts_i: ``[N, K, D]`` infrared part embeddings of the same N people, in the same order.
        form: ``"paper"`` (default: eq. 14 exactly), or a scale-invariant form of :data:`LD_FORMS`.

    Returns:
        Scalar ``1/(2N) * sum_j (||mu_j^V - mu_j^I||^2 + ||sigma_j^V - sigma_j^I||^2)`` (eq. 14; its
        printed sum index is a typo for j = 1..N), in the chosen form.
    """
    mean_term, sigma_term = distribution_terms(parts_v, parts_i, form)
    return mean_term + sigma_term


def _pearson_matrix(feats: Tensor) -> Tensor:
    """``[N, M]`` → ``[N, N]`` Pearson correlations between rows, each across its M values (eq. 9-10)."""
    centred = feats - feats.mean(dim=1, keepdim=True)
    unit = centred / torch.sqrt(centred.pow(2).sum(dim=1, keepdim=True) + EPS)
    return unit @ unit.T


def correlation_loss(feats_v: Tensor, feats_i: Tensor) -> Tensor:
    """Inter-class correlation loss L_c (eq. 9-12).

    Asks the visible batch and the infrared batch to have the same pattern of similarities between
    people, without asking any visible feature to equal any infrared one.

    Args:
        feats_v: ``[N, K*D]`` aggregated visible features (the concatenated part embeddings).
        feats_i: ``[N, K*D]`` aggregated infrared features, row j the same person as ``feats_v[j]``.

    Returns:
        Scalar ``||C_V - C_I||_F^2 / N``, with C the N×N Pearson matrix of each batch.
    """
    _check_pair(feats_v, feats_i, 2, "feats_v and feats_i", "[N, K*D]")
    c_v = _pearson_matrix(_at_least_float32(feats_v))
    c_i = _pearson_matrix(_at_least_float32(feats_i))
    return (c_v - c_i).pow(2).sum() / feats_v.shape[0]


def cross_modal_triplet_loss(feats_v: Tensor, feats_i: Tensor, labels: Tensor, margin: float = 0.3,
                             cross_only: bool = True) -> Tensor:
    """Batch-hard triplet loss across modalities (not part of DFE; a training option).

    The metric-learning term of the cross-modal re-ID baselines (Ye et al.'s AGW uses a weighted
    variant; Hermans et al., "In Defense of the Triplet Loss", 2017, the batch-hard form used
    here). For every image (anchor), the farthest image of the same person and the nearest image of
    another person are found among the images of the *other* modality (``cross_only``) or of the
    whole batch, and the anchor is asked to be ``margin`` closer to the former. The identity loss
    only ties the two modalities together per training label; this term asks directly for what
    retrieval needs — an infrared image nearer to its person's visible images than to anyone
    else's — which is what transfers to people never seen.

    Distances are Euclidean between L2-normalised descriptors (``sqrt(2 - 2 cos)``), the geometry
    the gallery searches in.

    Args:
        feats_v: ``[N, M]`` visible descriptors.
        feats_i: ``[N, M]`` infrared descriptors.
        labels: ``[N]`` identities of the pairs (row j of both streams is person ``labels[j]``).
        margin: Required gap between the hardest negative and the hardest positive distance.
        cross_only: Mine positives and negatives in the other modality only.

    Returns:
        Scalar: the mean hinge over anchors that have at least one positive and one negative
        (0 when none has).
    """
    _check_pair(feats_v, feats_i, 2, "feats_v and feats_i", "[N, M]")
    if labels.ndim != 1 or labels.shape[0] != feats_v.shape[0]:
        raise ValueError(f"labels must be [N={feats_v.shape[0]}], got shape {tuple(labels.shape)}")
    x = F.normalize(_at_least_float32(torch.cat([feats_v, feats_i])), dim=1)
    y = torch.cat([labels, labels])
    modality = torch.arange(2, device=x.device).repeat_interleave(feats_v.shape[0])
    # sqrt(2 - 2cos), clamped: the gradient of sqrt at 0 is infinite for an image against itself.
    dist = torch.sqrt((2 - 2 * x @ x.T).clamp_min(1e-12))
    same = y[:, None] == y[None, :]
    allowed = modality[:, None] != modality[None, :] if cross_only else ~torch.eye(len(y), dtype=torch.bool,
                                                                                     device=x.device)
    pos, neg = same & allowed, ~same & allowed
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return x.new_zeros(())
    hardest_pos = torch.where(pos, dist, torch.full_like(dist, -1.0)).amax(dim=1)
    hardest_neg = torch.where(neg, dist, torch.full_like(dist, 4.0)).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()


@dataclass(frozen=True)
class LossWeights:
    """Trade-off factors of eq. 15, ``L = alpha*L_id + beta*L_d + gamma*L_c``, plus an optional
    cross-modal triplet term ``delta*L_tri`` (0 in the paper's recipe), its margin, and the form of L_d
    (one of :data:`LD_FORMS`; ``"paper"`` is eq. 14)."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    delta: float = 0.0
    margin: float = 0.3
    ld_form: str = "paper"

    def scaled(self, align: float) -> LossWeights:
        """These weights with beta and gamma multiplied by ``align`` (a warm-up factor in [0, 1])."""
        return LossWeights(self.alpha, self.beta * align, self.gamma * align, self.delta, self.margin, self.ld_form)


# §4.2 "Trade-off factors": 1:1:1 for SYSU-MM01; 1:11:2 for RegDB, found by the authors' cross-validation.
PRESETS: dict[str, LossWeights] = {
    "sysu": LossWeights(1.0, 1.0, 1.0),
    "regdb": LossWeights(1.0, 11.0, 2.0),
}

# The ablation variants of §4.3 / Figure 6: which terms a variant keeps.
VARIANTS: dict[str, tuple[bool, bool]] = {  # name -> (keep L_d, keep L_c)
    "dfe": (True, True),
    "baseline": (False, False),
    "no_lc": (True, False),
    "no_ld": (False, True),
}


def resolve_weights(preset: str, variant: str = "dfe", triplet: float = 0.0, margin: float = 0.3,
                    ld_form: str = "paper") -> LossWeights:
    """Weights for a dataset preset and an ablation variant.

    Args:
        preset: ``"sysu"`` (1:1:1) or ``"regdb"`` (1:11:2).
        variant: ``"dfe"`` (all terms), ``"baseline"`` (L_id only), ``"no_lc"`` (L_id + L_d) or
            ``"no_ld"`` (L_id + L_c).
        triplet: Weight of the cross-modal triplet term (0 = off, the paper's recipe).
        margin: Its margin.
        ld_form: The form of L_d, one of :data:`LD_FORMS` (``"paper"``: eq. 14).

    Returns:
        The preset's weights with the dropped terms set to 0.
    """
    if triplet < 0 or margin < 0:
        raise ValueError(f"triplet weight and margin must be >= 0, got {triplet} and {margin}")
    if preset not in PRESETS:
        raise ValueError(f"unknown loss preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown loss variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if ld_form not in LD_FORMS:
        raise ValueError(f"unknown distribution loss form {ld_form!r}; valid forms: {', '.join(LD_FORMS)}")
    base = PRESETS[preset]
    keep_d, keep_c = VARIANTS[variant]
    return LossWeights(base.alpha, base.beta if keep_d else 0.0, base.gamma if keep_c else 0.0, triplet, margin,
                       ld_form)


def dfe_loss(out_v: DFEOutput, out_i: DFEOutput, labels: Tensor,
             weights: LossWeights) -> tuple[Tensor, dict[str, Tensor]]:
    """The fusion loss of eq. 15 on a two-stream batch of N pairs.

    Args:
        out_v: the model's training output for the N visible images.
        out_i: the output for the N infrared images (row j = same person as visible row j).
        labels: ``[N]`` identity labels shared by both streams.
        weights: the trade-off factors; a term whose weight is 0 is not computed.

    Returns:
        ``(total, terms)``: ``total`` the scalar to back-propagate; ``terms`` maps ``"id"``, ``"dist"``,
        ``"corr"`` and ``"tri"`` to the *unweighted*, detached 0-dim tensors (0 for a term not computed). They
        stay tensors so a training step does not force a device synchronisation; call ``.item()``
        when logging.
    """
    parts_v, parts_i = out_v.parts, out_i.parts
    zero = parts_v.new_zeros((), dtype=torch.float32)
    total = zero
    terms = {"id": zero, "dist": zero, "corr": zero, "tri": zero}
    if weights.alpha:
        # Eq. 13: the batch-mean of the summed part losses of each modality, added over the two modalities.
        l_id = identity_loss(out_v.logits, labels) + identity_loss(out_i.logits, labels)
        total = total + weights.alpha * l_id
        terms["id"] = l_id.detach()
    if weights.beta:
        if weights.ld_form == "bn":
            if out_v.normalised is None or out_i.normalised is None:
                raise ValueError("the bn form of L_d needs the model's normalised part embeddings "
                                 "(DFEOutput.normalised, computed in training mode)")
            l_d = distribution_loss(out_v.normalised, out_i.normalised, "bn")
        else:
            l_d = distribution_loss(parts_v, parts_i, weights.ld_form)
        total = total + weights.beta * l_d
        terms["dist"] = l_d.detach()
    if weights.gamma:
        l_c = correlation_loss(parts_v.flatten(1), parts_i.flatten(1))
        total = total + weights.gamma * l_c
        terms["corr"] = l_c.detach()
    if weights.delta:
        l_t = cross_modal_triplet_loss(parts_v.flatten(1), parts_i.flatten(1), labels, weights.margin)
        total = total + weights.delta * l_t
        terms["tri"] = l_t.detach()
    return total, terms
