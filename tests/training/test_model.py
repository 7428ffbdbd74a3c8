"""The DFE model: shapes, the input contract, pretrained-weight handling, checkpoints, parameter groups."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch
from torchvision import models

from training import model as model_mod
from training.model import DFE, INPUT_META, DFEOutput, load_checkpoint, param_groups
from xmreid.errors import UserError

# ResNet-18 at 96x32 gives a 6x2 map: the smallest input that still has one row per part (K=6).
H, W = 96, 32


def _images(b: int, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.fixture
def small() -> DFE:
    torch.manual_seed(0)
    return DFE(7, arch="resnet18", height=H, width=W)


def test_resnet50_paper_input_gives_24x8_map_and_1536_descriptor() -> None:
    torch.manual_seed(0)
    net = DFE(10, arch="resnet50").eval()  # defaults: 384x128, K=6, D=256
    x = _images(1, 384, 128)
    with torch.no_grad():
        fmap = net.forward_features(x)
        desc = net(x)
    assert fmap.shape == (1, 2048, 24, 8)  # last stride 1: 384/16 x 128/16
    assert desc.shape == (1, 1536) and desc.dtype == torch.float32
    assert (net.height, net.width, net.parts, net.embed_dim, net.descriptor_dim, net.arch) == \
        (384, 128, 6, 256, 1536, "resnet50")


@pytest.mark.parametrize("arch, channels", [("resnet18", 512), ("resnet34", 512)])
def test_small_archs_last_stride_one(arch: str, channels: int) -> None:
    net = DFE(3, arch=arch, height=H, width=W).eval()
    with torch.no_grad():
        fmap = net.forward_features(_images(1))
    assert fmap.shape == (1, channels, H // 16, W // 16)


def test_eval_descriptor_is_concatenation_of_parts_top_to_bottom(small: DFE) -> None:
    small.eval()
    x = _images(3)
    with torch.no_grad():
        desc = small(x)
        parts = small.forward_head(small.forward_features(x))
    assert desc.shape == (3, 6 * 256)
    assert parts.shape == (3, 6, 256)
    torch.testing.assert_close(desc, torch.cat([parts[:, i] for i in range(6)], dim=1))


def test_parts_come_from_their_own_stripe(small: DFE) -> None:
    """Stripe i of the feature map feeds part i only (top stripe = part 0)."""
    small.eval()
    fmap = torch.rand(1, 512, H // 16, W // 16)
    changed = fmap.clone()
    changed[:, :, -1, :] += 1.0  # the bottom row of the 6-row map is the 6th stripe
    with torch.no_grad():
        a, b = small.forward_head(fmap), small.forward_head(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5], b[:, 5])


def test_train_mode_returns_parts_and_k_logits(small: DFE) -> None:
    small.train()
    out = small(_images(4))
    assert isinstance(out, DFEOutput)
    assert out.parts.shape == (4, 6, 256)
    assert len(out.logits) == 6 and all(lg.shape == (4, 7) for lg in out.logits)
    # logits are the bias-free classifiers applied to the embeddings (no ReLU in between)
    torch.testing.assert_close(out.logits[2], out.parts[:, 2] @ small.classifiers[2].weight.T)


def test_cosine_classifier_logits_are_scaled_cosines_whatever_the_scales(small: DFE) -> None:
    parts = torch.randn(3, 6, 256)
    w = small.classifiers[4].weight
    small.cosine_scale = 16.0
    logits = small.classify(parts)
    hand = torch.stack([torch.stack([16.0 * torch.dot(f, c) / (f.norm() * c.norm()) for c in w]) for f in parts[:, 4]])
    torch.testing.assert_close(logits[4], hand)
    assert all(lg.abs().max() <= 16.0 + 1e-4 for lg in logits)
    # Scaling the features or the weights leaves the logits unchanged: they are bounded by s.
    with torch.no_grad():
        w.mul_(50.0)
    torch.testing.assert_close(small.classify(parts * 0.01)[4], hand)
    small.cosine_scale = None  # the paper's linear classifier again
    torch.testing.assert_close(small.classify(parts)[4], parts[:, 4] @ w.T)


def test_heads_do_not_share_weights(small: DFE) -> None:
    ptrs = {h[0].weight.data_ptr() for h in small.embeddings} | {c.weight.data_ptr() for c in small.classifiers}
    assert len(ptrs) == 12
    assert all(c.bias is None for c in small.classifiers)
    assert all(h[0].bias is None for h in small.embeddings)


def test_uint8_and_float_inputs_agree(small: DFE) -> None:
    small.eval()
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(small(x), small(x.float()))


def test_normalisation_buffers_come_from_metadata(small: DFE) -> None:
    assert small.pixel_mean.shape == small.pixel_std.shape == (1, 3, 1, 1)
    torch.testing.assert_close(small.pixel_mean.flatten(), torch.tensor(INPUT_META["mean"]) * 255)
    torch.testing.assert_close(small.pixel_std.flatten(), torch.tensor(INPUT_META["std"]) * 255)
    assert "pixel_mean" in small.state_dict()  # travels with checkpoints and the ONNX graph


def test_initialisation(small: DFE) -> None:
    for fc in small.classifiers:
        assert abs(fc.weight.std().item() - 0.001) < 2e-4
    bn = small.embeddings[0][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


@pytest.mark.parametrize("arch,last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_starts_every_block_as_the_identity(arch: str, last_bn: str) -> None:
    torch.manual_seed(0)
    model = DFE(num_classes=4, arch=arch, parts=2, embed_dim=8, height=32, width=16)
    model.zero_init_residual()
    blocks = [m for m in model.backbone.modules() if isinstance(m, (models.resnet.BasicBlock, models.resnet.Bottleneck))]
    assert blocks and all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    assert all(torch.all(getattr(b, last_bn).bias == 0) for b in blocks)
    # A block without a shortcut projection then passes a non-negative input through unchanged (relu(x + 0) = x).
    plain = next(b for b in blocks if b.downsample is None).eval()
    x = torch.rand(2, plain.conv1.in_channels, 4, 4)
    assert torch.equal(plain(x), x)
    # The other weights keep their initialisation: only the residual branch's last scale is zeroed.
    assert torch.all(model.backbone.bn1.weight == 1)


def test_model_config_rebuilds_same_model(small: DFE) -> None:
    cfg = small.model_config()
    assert cfg == {"num_classes": 7, "arch": "resnet18", "parts": 6, "embed_dim": 256, "height": H, "width": W}
    clone = DFE(**cfg)
    clone.load_state_dict(small.state_dict())
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(x), small.eval()(x))


def test_bad_arguments_name_valid_values() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50"):
        DFE(3, arch="resnet101")
    with pytest.raises(ValueError, match="fewer rows than parts"):
        DFE(3, arch="resnet18", height=32, width=32)


def test_pretrained_missing_file_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        DFE(3, arch="resnet18", height=H, width=W, pretrained=tmp_path / "nope.pth")


def test_pretrained_local_torchvision_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    ref = models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)  # torchvision format, fc included
    net = DFE(3, arch="resnet18", height=H, width=W, pretrained=str(path))
    torch.testing.assert_close(net.backbone.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(net.backbone.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_pretrained_of_another_arch_is_user_error(tmp_path: Path) -> None:
    path = tmp_path / "r34.pth"
    torch.save(models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(UserError, match="do not fit a resnet18"):
        DFE(3, arch="resnet18", height=H, width=W, pretrained=path)


@pytest.mark.parametrize("pretrained", ["imagenet", True])
def test_offline_imagenet_warns_once_and_initialises_randomly(
        pretrained: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def offline(arch: str) -> dict:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(model_mod, "_download_imagenet_state_dict", offline)
    with caplog.at_level(logging.WARNING, logger="training.model"):
        net = DFE(3, arch="resnet18", height=H, width=W, pretrained=pretrained)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "random initialisation" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(_images(1))).all()


def test_imagenet_weights_are_loaded_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(2)
    ref = models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(model_mod, "_download_imagenet_state_dict", lambda arch: ref)
    net = DFE(3, arch="resnet18", height=H, width=W, pretrained="imagenet")
    torch.testing.assert_close(net.backbone.layer1[0].conv1.weight, ref["layer1.0.conv1.weight"])


def test_param_groups_split_backbone_and_new_layers(small: DFE) -> None:
    groups = param_groups(small, base_lr=0.01, head_lr=0.1, weight_decay=5e-4)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    back, head = ({id(p) for p in g["params"]} for g in groups)
    assert not back & head
    assert back | head == {id(p) for p in small.parameters()}
    assert id(small.backbone.conv1.weight) in back
    assert {id(small.classifiers[0].weight), id(small.embeddings[3][1].bias)} <= head
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # accepted as is


def _save_ckpt(net: DFE, path: Path) -> None:
    torch.save({"model": net.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 3,
                "config": {"lr": 0.01, "arch": net.arch}, "model_config": net.model_config()}, path)


def test_load_checkpoint_roundtrip(small: DFE, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    _save_ckpt(small, path)
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training and ckpt["epoch"] == 3
    x = _images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small.eval()(x))


def test_load_checkpoint_errors(small: DFE, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": small.state_dict()}, other)
    with pytest.raises(UserError, match="model_config"):
        load_checkpoint(other)
