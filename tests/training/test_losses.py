"""The DFE losses against hand-worked cases and plainly written float64 references (loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import losses as losses_mod
from training.losses import (
    LD_FORMS,
    LossWeights,
    correlation_loss,
    dfe_loss,
    distribution_loss,
    distribution_terms,
    identity_loss,
    resolve_weights,
)
from training.model import DFE, DFEOutput, param_groups

# float32 implementation vs float64 loops: relative 1e-5 is float32 round-off on sums of ~100 terms.
TOL = {"rel": 1e-5, "abs": 1e-6}


# ------------------------------------------------------------------------------- references (loops)


def ref_identity(logits: list[np.ndarray], labels: np.ndarray) -> float:
    total = 0.0
    for lg in logits:
        per_image = []
        for b in range(len(labels)):
            row = [float(v) for v in lg[b]]
            log_sum_exp = math.log(sum(math.exp(v) for v in row))
            per_image.append(log_sum_exp - row[int(labels[b])])
        total += sum(per_image) / len(per_image)
    return total


def ref_distribution(pv: np.ndarray, pi: np.ndarray, eps: float = 1e-12) -> float:
    n, k, d = pv.shape
    total = 0.0
    for j in range(n):
        for c in range(d):
            mv = sum(float(pv[j, i, c]) for i in range(k)) / k
            mi = sum(float(pi[j, i, c]) for i in range(k)) / k
            sv = math.sqrt(sum((float(pv[j, i, c]) - mv) ** 2 for i in range(k)) / k + eps)
            si = math.sqrt(sum((float(pi[j, i, c]) - mi) ** 2 for i in range(k)) / k + eps)
            total += (mv - mi) ** 2 + (sv - si) ** 2
    return total / (2 * n)


def ref_pearson(x: list[float], y: list[float]) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    den = math.sqrt(sum((a - mx) ** 2 for a in x)) * math.sqrt(sum((b - my) ** 2 for b in y))
    return num / den


def ref_correlation(fv: np.ndarray, fi: np.ndarray) -> float:
    n = fv.shape[0]
    rows_v = [[float(v) for v in r] for r in fv]
    rows_i = [[float(v) for v in r] for r in fi]
    total = 0.0
    for a in range(n):
        for b in range(n):
            total += (ref_pearson(rows_v[a], rows_v[b]) - ref_pearson(rows_i[a], rows_i[b])) ** 2
    return total / n


# --------------------------------------------------------------------------------- identity loss


def test_identity_loss_hand_worked() -> None:
    # Part 1: logits (0, 0), label 1 -> CE = ln 2.
    # Part 2: logits (0, ln 3), label 1 -> p = 3/(1+3) = 3/4 -> CE = ln(4/3).
    # Sum over parts: ln 2 + ln(4/3) = ln(8/3) = 0.980829...
    logits = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])]
    out = identity_loss(logits, torch.tensor([1]))
    assert out.ndim == 0
    assert out.item() == pytest.approx(math.log(8 / 3), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_loss_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(5, 4, generator=g) * 3 for _ in range(3)]
    labels = torch.randint(0, 4, (5,), generator=g)
    expected = ref_identity([lg.double().numpy() for lg in logits], labels.numpy())
    assert identity_loss(logits, labels).item() == pytest.approx(expected, **TOL)


def test_identity_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one \\[B, C\\] tensor per part"):
        identity_loss([], torch.tensor([0]))
    with pytest.raises(ValueError, match="expected \\[B=2, C\\]"):
        identity_loss([torch.zeros(3, 4)], torch.tensor([0, 1]))


# ------------------------------------------------------------------------------ distribution loss


def test_distribution_loss_hand_worked() -> None:
    # One pair, K=2 parts, D=2 dims.
    # visible parts (0,0) and (2,4): mu = (1,2); population var = ((1+1)/2, (4+4)/2) = (1,4); sigma = (1,2)
    # infrared parts (1,1) and (1,1): mu = (1,1); var = (0,0); sigma = sqrt(eps) ~ 1e-6
    # ||mu_v - mu_i||^2 = 0 + 1 = 1;  ||sigma_v - sigma_i||^2 ~ 1 + 4 = 5;  L_d = (1 + 5) / (2*1) = 3
    pv = torch.tensor([[[0.0, 0.0], [2.0, 4.0]]])
    pi = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    assert distribution_loss(pv, pi).item() == pytest.approx(3.0, abs=1e-5)


@pytest.mark.parametrize("n, k, d", [(1, 6, 4), (3, 2, 5), (4, 6, 8)])
def test_distribution_loss_matches_reference(n: int, k: int, d: int) -> None:
    g = torch.Generator().manual_seed(n * 100 + k * 10 + d)
    pv, pi = torch.randn(n, k, d, generator=g), torch.randn(n, k, d, generator=g) * 2 + 0.5
    expected = ref_distribution(pv.double().numpy(), pi.double().numpy())
    assert distribution_loss(pv, pi).item() == pytest.approx(expected, **TOL)
    assert distribution_loss(pv.double(), pi.double()).item() == pytest.approx(expected, rel=1e-12)


def test_distribution_loss_zero_for_identical_modalities_with_finite_gradients() -> None:
    x = torch.randn(4, 6, 8)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss = distribution_loss(a, b)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    # constant parts (zero variance) are the risky case for sqrt: still 0 and finite gradients
    c = torch.ones(2, 6, 3, requires_grad=True)
    d = torch.ones(2, 6, 3, requires_grad=True)
    loss = distribution_loss(c, d)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(c.grad).all()


def test_distribution_loss_rejects_mismatched_pairs() -> None:
    with pytest.raises(ValueError, match="same shape"):
        distribution_loss(torch.zeros(2, 6, 4), torch.zeros(3, 6, 4))
    with pytest.raises(ValueError, match="\\[N, K, D\\]"):
        distribution_loss(torch.zeros(2, 24), torch.zeros(2, 24))


def test_distribution_terms_split_the_paper_loss() -> None:
    # The hand-worked pair above: mean term (0 + 1) / 2 = 0.5, sigma term (1 + 4) / 2 = 2.5.
    pv = torch.tensor([[[0.0, 0.0], [2.0, 4.0]]])
    pi = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    mean_term, sigma_term = distribution_terms(pv, pi)
    assert mean_term.item() == pytest.approx(0.5, abs=1e-5) and sigma_term.item() == pytest.approx(2.5, abs=1e-5)
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    for form in LD_FORMS:
        torch.testing.assert_close(sum(distribution_terms(a, b, form)), distribution_loss(a, b, form))


def test_spread_form_hand_worked() -> None:
    # The same pair. Pooled over its 4 part vectors: dim 0 holds 0, 2, 1, 1 (mean 1, population variance
    # (1 + 1 + 0 + 0) / 4 = 0.5); dim 1 holds 0, 4, 1, 1 (mean 1.5, variance (2.25 + 6.25 + 0.25 + 0.25) / 4
    # = 2.25). Spread = (0.5 + 2.25) / 2 = 1.375, so L_d = 3 / 1.375 = 2.1818...
    pv = torch.tensor([[[0.0, 0.0], [2.0, 4.0]]])
    pi = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    assert distribution_loss(pv, pi, "spread").item() == pytest.approx(3 / 1.375, abs=1e-5)


def test_standard_form_hand_worked() -> None:
    # Two pairs, K=2 parts, D=1. Over the 4 images, part 0 holds v: 0, 2 and i: 1, 3 (mean 1.5, population
    # variance 1.25) and part 1 holds v: 2, 2 and i: 1, 1 (mean 1.5, variance 0.25). Standardised:
    # part 0 -> v: -3/sqrt5, 1/sqrt5; i: -1/sqrt5, 3/sqrt5; part 1 -> v: 1, 1; i: -1, -1.
    # Pair 1: mu_v = (1 - 3/sqrt5)/2, mu_i = (-1 - 1/sqrt5)/2 -> difference 1 - 1/sqrt5;
    #         sigma_v = (1 + 3/sqrt5)/2, sigma_i = (1 - 1/sqrt5)/2 -> difference 2/sqrt5. Pair 2 mirrors pair 1.
    # L_d = (2 (1 - 1/sqrt5)^2 + 2 * 4/5) / (2 * 2) = 1 - 1/sqrt5 = 0.5528 (up to the relative eps 1e-5).
    pv = torch.tensor([[[0.0], [2.0]], [[2.0], [2.0]]])
    pi = torch.tensor([[[1.0], [1.0]], [[3.0], [1.0]]])
    mean_term, sigma_term = distribution_terms(pv, pi, "standard")
    assert mean_term.item() == pytest.approx((1 - 1 / math.sqrt(5)) ** 2 / 2, abs=1e-4)
    assert sigma_term.item() == pytest.approx(0.4, abs=1e-4)
    assert distribution_loss(pv, pi, "standard").item() == pytest.approx(1 - 1 / math.sqrt(5), abs=1e-4)


def test_unit_form_hand_worked() -> None:
    # Each part vector is scaled to norm sqrt(D) = sqrt(2), i.e. divided by its root mean square:
    # visible (0,0) stays (0,0); (2,4) has RMS sqrt(10) -> (2,4)/sqrt(10); infrared (1,1) has RMS 1 -> unchanged.
    # mu_v = sigma_v = (1,2)/sqrt(10); mu_i = (1,1), sigma_i = 0.
    # mean term = ((1 - 1/sqrt10)^2 + (1 - 2/sqrt10)^2) / 2; sigma term = (1/10 + 4/10) / 2 = 0.25.
    pv = torch.tensor([[[0.0, 0.0], [2.0, 4.0]]])
    pi = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    r = math.sqrt(10)
    expected = ((1 - 1 / r) ** 2 + (1 - 2 / r) ** 2) / 2 + 0.25
    assert distribution_loss(pv, pi, "unit").item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("form", [f for f in LD_FORMS if f != "bn"])  # bn: its inputs come from the model
def test_only_the_paper_form_is_lowered_by_scaling_all_features_down(form: str) -> None:
    """Eq. 14 on raw features scales with c²: shrinking the descriptor lowers it without aligning anything.
    The other forms keep their value, and their gradient has no component along the global scale."""
    g = torch.Generator().manual_seed(7)
    pv, pi = torch.randn(8, 6, 16, generator=g), torch.randn(8, 6, 16, generator=g) * 1.5 + 0.3
    full = distribution_loss(pv, pi, form).item()
    c = torch.tensor(1.0, requires_grad=True)
    scaled = distribution_loss(c * pv, c * pi, form)
    scaled.backward()
    for shrink in (0.5, 0.1, 0.01):
        small = distribution_loss(shrink * pv, shrink * pi, form).item()
        if form == "paper":
            assert small == pytest.approx(shrink**2 * full, rel=1e-4) and small < full
        else:
            assert small == pytest.approx(full, rel=1e-4)
    if form == "paper":
        assert c.grad.item() == pytest.approx(2 * full, rel=1e-4)  # d(c² L)/dc at c = 1: descent shrinks c
    else:
        assert abs(c.grad.item()) < 1e-4 * full


def test_spread_form_also_ignores_a_shared_offset_which_unit_does_not() -> None:
    """A shrunken feature plus a shared offset (what a BatchNorm with a small weight and a bias gives) looks
    aligned to the per-part-normalised form, not to the spread form."""
    g = torch.Generator().manual_seed(8)
    pv, pi = torch.randn(8, 6, 16, generator=g), torch.randn(8, 6, 16, generator=g) * 1.5
    offset = torch.randn(16, generator=g) * 2
    for_shrunk = {f: distribution_loss(0.05 * pv + offset, 0.05 * pi + offset, f).item() for f in ("unit", "spread")}
    assert for_shrunk["spread"] == pytest.approx(distribution_loss(pv, pi, "spread").item(), rel=1e-3)
    assert for_shrunk["unit"] < 0.05 * distribution_loss(pv, pi, "unit").item()


def test_only_the_standard_form_ignores_a_scale_and_offset_per_part_and_dimension() -> None:
    """Shrinking the features while each part gets its own offset (small BatchNorm weights, biases grown apart)
    lowers the paper's form and the spread form; the standardised form keeps its value, as it does under any
    positive scale and any offset of each (part, dimension)."""
    g = torch.Generator().manual_seed(9)
    pv, pi = torch.randn(8, 6, 16, generator=g), torch.randn(8, 6, 16, generator=g) * 1.5 + 0.2
    scale = 0.05 * torch.rand(1, 6, 16, generator=g) + 0.01
    offset = torch.randn(1, 6, 16, generator=g) * 3
    forms = [f for f in LD_FORMS if f != "bn"]
    before = {f: distribution_loss(pv, pi, f).item() for f in forms}
    after = {f: distribution_loss(scale * pv + offset, scale * pi + offset, f).item() for f in forms}
    assert after["standard"] == pytest.approx(before["standard"], rel=1e-3)
    assert after["paper"] < 0.01 * before["paper"] and after["spread"] < 0.1 * before["spread"]


def test_distribution_loss_rejects_an_unknown_form() -> None:
    with pytest.raises(ValueError, match="paper, standard, unit, spread"):
        distribution_loss(torch.zeros(2, 6, 4), torch.zeros(2, 6, 4), "cosine")


# ------------------------------------------------------------------------------- correlation loss


def test_correlation_loss_hand_worked() -> None:
    # visible rows a=(1,2,3), b=(3,2,1): corr(a,b) = -1   -> C_V = [[1,-1],[-1,1]]
    # infrared rows a=(1,2,3), b=(2,4,6): corr(a,b) = +1  -> C_I = [[1, 1],[ 1,1]]
    # C_V - C_I = [[0,-2],[-2,0]] -> ||.||_F^2 = 4 + 4 = 8 -> / N=2 -> 4
    fv = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    fi = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0]])
    assert correlation_loss(fv, fi).item() == pytest.approx(4.0, abs=1e-5)
    # visible rows (1,0,-1), (1,-2,1): centred already, dot = 1 + 0 - 1 = 0 -> C_V = I
    # infrared rows (1,0,-1), (2,0,-2): corr 1 -> C_I = all ones; difference: two off-diagonal -1s
    # -> ||.||_F^2 = 2 -> / 2 = 1
    fv = torch.tensor([[1.0, 0.0, -1.0], [1.0, -2.0, 1.0]])
    fi = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0]])
    assert correlation_loss(fv, fi).item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n, m", [(2, 5), (5, 12), (8, 48)])
def test_correlation_loss_matches_reference(n: int, m: int) -> None:
    g = torch.Generator().manual_seed(n * 1000 + m)
    fv = torch.randn(n, m, generator=g)
    fi = torch.randn(n, m, generator=g) * 0.3 + fv  # partly correlated with fv
    expected = ref_correlation(fv.double().numpy(), fi.double().numpy())
    assert correlation_loss(fv, fi).item() == pytest.approx(expected, **TOL)
    assert correlation_loss(fv.double(), fi.double()).item() == pytest.approx(expected, rel=1e-9)


def test_correlation_loss_is_invariant_to_scale_and_offset_per_row() -> None:
    fv = torch.randn(4, 10)
    fi = torch.randn(4, 10)
    scaled = fi * torch.tensor([[2.0], [0.5], [3.0], [1.0]]) + 7.0
    torch.testing.assert_close(correlation_loss(fv, fi), correlation_loss(fv, scaled), rtol=1e-4, atol=1e-5)


def test_correlation_loss_zero_for_identical_modalities_with_finite_gradients() -> None:
    x = torch.randn(4, 12)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss = correlation_loss(a, b)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(a.grad).all()
    assert correlation_loss(torch.randn(1, 12), torch.randn(1, 12)).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------- weights


def test_resolve_weights_presets_and_variants() -> None:
    assert resolve_weights("sysu") == LossWeights(1.0, 1.0, 1.0)
    assert resolve_weights("regdb") == LossWeights(1.0, 11.0, 2.0)
    assert resolve_weights("regdb", "baseline") == LossWeights(1.0, 0.0, 0.0)
    assert resolve_weights("regdb", "no_lc") == LossWeights(1.0, 11.0, 0.0)
    assert resolve_weights("regdb", "no_ld") == LossWeights(1.0, 0.0, 2.0)
    assert resolve_weights("sysu", "dfe") == LossWeights(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="sysu, regdb"):
        resolve_weights("market")
    with pytest.raises(ValueError, match="dfe, baseline, no_lc, no_ld"):
        resolve_weights("sysu", "full")
    assert resolve_weights("regdb", ld_form="spread") == LossWeights(1.0, 11.0, 2.0, ld_form="spread")
    assert resolve_weights("sysu").ld_form == "paper"  # eq. 14 unless asked otherwise
    with pytest.raises(ValueError, match="valid forms: paper, standard, unit, spread"):
        resolve_weights("sysu", ld_form="cosine")


def _random_outputs(n: int = 3, k: int = 6, d: int = 4, c: int = 5, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)

    def out() -> DFEOutput:
        return DFEOutput(parts=torch.randn(n, k, d, generator=g), logits=[torch.randn(n, c, generator=g)
                                                                          for _ in range(k)])

    return out(), out(), torch.randint(0, c, (n,), generator=g)


def test_dfe_loss_is_the_weighted_sum_of_eq_15() -> None:
    ov, oi, labels = _random_outputs()
    w = LossWeights(0.5, 11.0, 2.0)
    total, terms = dfe_loss(ov, oi, labels, w)
    l_id = identity_loss(ov.logits, labels) + identity_loss(oi.logits, labels)  # eq. 13: both modalities
    l_d = distribution_loss(ov.parts, oi.parts)
    l_c = correlation_loss(ov.parts.flatten(1), oi.parts.flatten(1))
    torch.testing.assert_close(total, 0.5 * l_id + 11.0 * l_d + 2.0 * l_c)
    torch.testing.assert_close(terms["id"], l_id)
    torch.testing.assert_close(terms["dist"], l_d)
    torch.testing.assert_close(terms["corr"], l_c)
    assert all(not t.requires_grad for t in terms.values())
    # The form of L_d is part of the weights; the other terms do not change with it.
    total_s, terms_s = dfe_loss(ov, oi, labels, LossWeights(0.5, 11.0, 2.0, ld_form="spread"))
    torch.testing.assert_close(terms_s["dist"], distribution_loss(ov.parts, oi.parts, "spread"))
    torch.testing.assert_close(total_s, 0.5 * l_id + 11.0 * terms_s["dist"] + 2.0 * l_c)


def test_dfe_loss_skips_terms_with_zero_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(losses_mod, "distribution_loss", boom)
    monkeypatch.setattr(losses_mod, "correlation_loss", boom)
    ov, oi, labels = _random_outputs()
    total, terms = dfe_loss(ov, oi, labels, resolve_weights("sysu", "baseline"))
    torch.testing.assert_close(total, identity_loss(ov.logits, labels) + identity_loss(oi.logits, labels))
    assert terms["dist"].item() == 0.0 and terms["corr"].item() == 0.0


# ------------------------------------------------------------------------------- with the model


H, W = 96, 32  # ResNet-18: a 6x2 map, one row per part


@pytest.fixture
def two_stream_batch() -> tuple[DFE, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = DFE(4, arch="resnet18", height=H, width=W).train()
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4, 3, H, W), dtype=torch.uint8, generator=g)
    ir = torch.randint(0, 256, (4, 3, H, W), dtype=torch.uint8, generator=g)
    return net, rgb, ir, torch.tensor([0, 1, 2, 3])


def _forward_pairs(net: DFE, rgb: torch.Tensor, ir: torch.Tensor) -> tuple[DFEOutput, DFEOutput]:
    return net(torch.cat([rgb, ir])).split(rgb.shape[0])  # one pass through the shared-weight streams


def test_normalised_embeddings_are_batchnorm_before_its_weight_and_bias(two_stream_batch: tuple) -> None:
    """DFEOutput.normalised is each part's 1x1-conv output standardised per dimension over the batch (population
    variance, BatchNorm's eps), and the part embeddings are exactly weight * normalised + bias."""
    net, rgb, ir, _ = two_stream_batch
    with torch.no_grad():
        for _, bn in net.embeddings:
            bn.weight.uniform_(0.2, 2.0)
            bn.bias.uniform_(-1.0, 1.0)
        out = net(torch.cat([rgb, ir]))
        pooled = net.part_pool(net.forward_features(torch.cat([rgb, ir])))
        for i, (conv, bn) in enumerate(net.embeddings):
            pre = conv(pooled[:, :, i : i + 1, :]).flatten(1)  # [2N, D]
            mean, var = pre.mean(dim=0), pre.var(dim=0, unbiased=False)
            by_hand = (pre - mean) / torch.sqrt(var + bn.eps)
            torch.testing.assert_close(out.normalised[:, i], by_hand, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.parts[:, i], bn.weight * by_hand + bn.bias, rtol=1e-4, atol=1e-5)


def test_bn_form_is_eq_14_on_the_normalised_embeddings() -> None:
    """dfe_loss's bn form applies eq. 14 to DFEOutput.normalised (the hand-worked pair of
    test_distribution_loss_hand_worked: 3), whatever the affine embeddings are, and needs them."""
    nv = torch.tensor([[[0.0, 0.0], [2.0, 4.0]]])
    ni = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])
    g = torch.Generator().manual_seed(3)
    parts_v, parts_i = torch.randn(1, 2, 2, generator=g) * 10, torch.randn(1, 2, 2, generator=g)
    logits = [torch.zeros(1, 3)] * 2
    weights = LossWeights(0.0, 1.0, 0.0, ld_form="bn")
    _, terms = dfe_loss(DFEOutput(parts_v, logits, nv), DFEOutput(parts_i, logits, ni), torch.tensor([0]), weights)
    assert terms["dist"].item() == pytest.approx(3.0, abs=1e-5)
    with pytest.raises(ValueError, match="normalised part embeddings"):
        dfe_loss(DFEOutput(parts_v, logits), DFEOutput(parts_i, logits), torch.tensor([0]), weights)


def test_bn_form_is_not_lowered_by_shrinking_the_embeddings(two_stream_batch: tuple) -> None:
    """Shrinking every part embedding 100x (the BatchNorms' weight and bias), or the 1x1 convolutions' output
    10x, lowers the paper's L_d by 1e4 and leaves the bn form where it was (BatchNorm's eps aside); its
    gradient does not reach the BatchNorm weights at all."""
    net, rgb, ir, labels = two_stream_batch

    def l_d(form: str) -> float:
        _, terms = dfe_loss(*_forward_pairs(net, rgb, ir), labels, LossWeights(0.0, 1.0, 0.0, ld_form=form))
        return terms["dist"].item()

    before = {form: l_d(form) for form in ("paper", "bn")}
    with torch.no_grad():
        for _, bn in net.embeddings:
            bn.weight.mul_(0.01)
            bn.bias.mul_(0.01)
    shrunk = {form: l_d(form) for form in ("paper", "bn")}
    assert shrunk["paper"] == pytest.approx(1e-4 * before["paper"], rel=1e-3)
    assert shrunk["bn"] == pytest.approx(before["bn"], rel=1e-6)
    with torch.no_grad():
        for conv, _ in net.embeddings:
            conv.weight.mul_(0.1)
    assert l_d("bn") == pytest.approx(before["bn"], rel=1e-2)
    net.zero_grad(set_to_none=True)
    total, _ = dfe_loss(*_forward_pairs(net, rgb, ir), labels, LossWeights(0.0, 1.0, 0.0, ld_form="bn"))
    total.backward()
    assert net.embeddings[0][1].weight.grad is None or not net.embeddings[0][1].weight.grad.any()
    assert net.embeddings[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("which", ["dist", "corr"])
def test_alignment_losses_train_embeddings_not_classifiers(two_stream_batch: tuple, which: str) -> None:
    net, rgb, ir, _ = two_stream_batch
    ov, oi = _forward_pairs(net, rgb, ir)
    if which == "dist":
        loss = distribution_loss(ov.parts, oi.parts)
    else:
        loss = correlation_loss(ov.parts.flatten(1), oi.parts.flatten(1))
    loss.backward()
    assert all(fc.weight.grad is None for fc in net.classifiers)  # §3.5: the K FC layers are untouched
    assert net.embeddings[0][0].weight.grad.abs().sum() > 0
    assert net.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ld_form", LD_FORMS)
def test_classifiers_get_the_same_gradient_with_and_without_the_alignment_terms(two_stream_batch: tuple,
                                                                                ld_form: str) -> None:
    """§3.5: L_d and L_c update the embeddings and the trunk, never the K classifiers. In the full eq. 15 loss
    (RegDB's 1:11:2) each classifier's gradient is exactly the identity loss's."""
    net, rgb, ir, labels = two_stream_batch

    def grads(weights: LossWeights) -> tuple[list[torch.Tensor], torch.Tensor]:
        net.zero_grad(set_to_none=True)
        total, _ = dfe_loss(*_forward_pairs(net, rgb, ir), labels, weights)
        total.backward()
        return [fc.weight.grad.clone() for fc in net.classifiers], net.embeddings[0][1].weight.grad.clone()

    full, emb_full = grads(resolve_weights("regdb", ld_form=ld_form))
    id_only, emb_id = grads(resolve_weights("regdb", "baseline"))
    for a, b in zip(full, id_only):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(emb_full, emb_id)  # while the embedding's BatchNorm does get their gradient


def test_one_sgd_step_reduces_dfe_loss(two_stream_batch: tuple) -> None:
    net, rgb, ir, labels = two_stream_batch
    weights = resolve_weights("sysu")
    # A small step checks that the gradients of all three terms point downhill. (The paper's 0.01/0.1 on
    # 4 pairs of noise images overshoots: L_d sums over 256 dims and starts near 60 here.)
    opt = torch.optim.SGD(param_groups(net, base_lr=1e-4, head_lr=1e-3, weight_decay=5e-4), lr=1e-4, momentum=0.9)
    before, _ = dfe_loss(*_forward_pairs(net, rgb, ir), labels, weights)
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = dfe_loss(*_forward_pairs(net, rgb, ir), labels, weights)
    assert after.item() < before.item()


# --------------------------------------------------------------------- cross-modal triplet (option)


def ref_triplet(fv: np.ndarray, fi: np.ndarray, labels: np.ndarray, margin: float, cross_only: bool) -> float:
    x = np.concatenate([fv, fi]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.concatenate([labels, labels])
    mod = [0] * len(fv) + [1] * len(fi)
    hinges = []
    for a in range(len(x)):
        pos, neg = [], []
        for b in range(len(x)):
            if a == b or (cross_only and mod[a] == mod[b]):
                continue
            d = math.sqrt(max(2 - 2 * float(x[a] @ x[b]), 1e-12))
            (pos if y[a] == y[b] else neg).append(d)
        if pos and neg:
            hinges.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(hinges) / len(hinges) if hinges else 0.0


def test_triplet_hand_worked_case() -> None:
    from training.losses import cross_modal_triplet_loss

    fv = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    fi = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    # Anchors v0: 0 - 0 + .3; v1: sqrt2 - sqrt2 + .3; i0: max(0, 0 - sqrt2 + .3) = 0; i1: sqrt2 - 0 + .3.
    expected = (0.3 + 0.3 + 0.0 + math.sqrt(2) + 0.3) / 4
    assert cross_modal_triplet_loss(fv, fi, labels, margin=0.3).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cross_only", [True, False])
def test_triplet_matches_loop_reference(cross_only: bool) -> None:
    from training.losses import cross_modal_triplet_loss

    g = torch.Generator().manual_seed(0)
    fv, fi = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    got = cross_modal_triplet_loss(fv, fi, labels, margin=0.5, cross_only=cross_only).item()
    assert got == pytest.approx(ref_triplet(fv.numpy(), fi.numpy(), labels.numpy(), 0.5, cross_only), **TOL)


def test_triplet_in_dfe_loss_and_gradients() -> None:
    from training.losses import cross_modal_triplet_loss

    g = torch.Generator().manual_seed(1)
    parts_v = torch.randn(4, 3, 5, generator=g, requires_grad=True)
    parts_i = torch.randn(4, 3, 5, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    logits = [torch.zeros(4, 4)] * 3
    w = resolve_weights("sysu", "baseline", triplet=2.0, margin=0.3)
    assert w == LossWeights(1.0, 0.0, 0.0, 2.0, 0.3)
    total, terms = dfe_loss(DFEOutput(parts_v, logits), DFEOutput(parts_i, logits), labels, w)
    tri = cross_modal_triplet_loss(parts_v.flatten(1), parts_i.flatten(1), labels, 0.3)
    torch.testing.assert_close(terms["tri"], tri.detach())
    torch.testing.assert_close(total, terms["id"] + 2.0 * tri)
    total.backward()
    assert parts_v.grad.abs().sum() > 0 and parts_i.grad.abs().sum() > 0
    # No anchor with both a positive and a negative (one person): zero, not NaN.
    one = cross_modal_triplet_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([5, 5]))
    assert one.item() == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        resolve_weights("sysu", triplet=-1.0)


def test_alignment_warmup_scales_beta_and_gamma_only() -> None:
    w = LossWeights(1.0, 11.0, 2.0, 0.5, 0.3)
    assert w.scaled(0.25) == LossWeights(1.0, 2.75, 0.5, 0.5, 0.3)
    assert w.scaled(1.0) == w
