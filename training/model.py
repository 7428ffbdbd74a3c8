"""The DFE feature extractor (Hao et al., ACM MM 2019, §3.2 and §4.2).

A torchvision ResNet trunk with the last stride set to 1 (as in PCB, Sun et al., ECCV 2018), so a
384×128 image gives a 24×8 map; the map is cut into K horizontal stripes, each stripe is average
pooled (m_i), reduced by its own 1×1 conv + BatchNorm to the embedding f_i, and classified by its
own bias-free linear layer (p_i). Laid out like torchvision's ``resnet.py``: helpers, the model, a
private ``_build``, then public builders; checkpoint loading sits at the end.

``train()`` returns :class:`DFEOutput` (the per-part embeddings that the distribution and
correlation losses need, plus the logits); ``eval()`` returns the descriptor that the ONNX export,
the embedders and the index use, so the exported graph never contains the classifiers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchvision import models

from training.paper import PAPER
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHS",
    "DFE",
    "INPUT_META",
    "DFEOutput",
    "dfe_resnet18",
    "dfe_resnet34",
    "dfe_resnet50",
    "load_checkpoint",
    "param_groups",
]

# The one source of the input contract (like torchvision's ``WeightsEnum.meta`` / timm's ``_cfg``):
# the model normalises internally with these numbers, and export / serving read the rest from the
# model's attributes, so nobody keeps a second hand-written copy.
INPUT_META: dict[str, Any] = {
    "mean": (0.485, 0.456, 0.406),  # ImageNet RGB mean on a 0-1 scale (torchvision's weights)
    "std": (0.229, 0.224, 0.225),
    "pixel_scale": 255.0,  # inputs arrive as uint8 / 0-255 floats, so mean and std are scaled by this
    "channel_order": "RGB",
    "layout": "NCHW",
    "input_dtype": "uint8",
    "paper_input_size": (PAPER.height, PAPER.width),  # §4.2
}


class _Arch(NamedTuple):
    builder: Callable[..., models.ResNet]
    weights: Any  # the torchvision WeightsEnum class
    channels: int  # channels of layer4's output


ARCHS: dict[str, _Arch] = {
    "resnet18": _Arch(models.resnet18, models.ResNet18_Weights, 512),
    "resnet34": _Arch(models.resnet34, models.ResNet34_Weights, 512),
    "resnet50": _Arch(models.resnet50, models.ResNet50_Weights, 2048),
}


class DFEOutput(NamedTuple):
    """What the model returns in training mode.

    Attributes:
        parts: ``[B, K, D]`` part embeddings f_1..f_K (after BatchNorm, no ReLU), top to bottom.
        logits: K tensors ``[B, num_classes]``, one per part classifier.
        normalised: ``[B, K, D]`` the same embeddings as their BatchNorms normalise them over the batch, before
            the learned weight and bias (what the ``bn`` form of L_d compares); None where not computed.
    """

    parts: Tensor
    logits: list[Tensor]
    normalised: Tensor | None = None

    def split(self, n: int) -> tuple[DFEOutput, DFEOutput]:
        """The first ``n`` rows and the rest: the visible and the infrared half of a two-stream batch."""
        norm = self.normalised
        return (DFEOutput(self.parts[:n], [lg[:n] for lg in self.logits], None if norm is None else norm[:n]),
                DFEOutput(self.parts[n:], [lg[n:] for lg in self.logits], None if norm is None else norm[n:]))


# --------------------------------------------------------------------------------------------- helpers


def _arch(name: str) -> _Arch:
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown arch {name!r}; valid archs: {', '.join(ARCHS)}") from None


def _download_imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's weight enum (downloads on first use, then cached).

    Kept as its own function so tests can make it fail like an offline download.
    """
    return _arch(arch).weights.DEFAULT.get_state_dict(progress=False)


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: keeps log lines and CLI errors to one line."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _load_local_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path} (pretrained takes None, 'imagenet' or a path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt file fails in many ways (pickle, zip, EOF, IndexError...)
        raise UserError(f"cannot read pretrained weights {path}: {_first_line(exc)}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common wrapping of plain state dicts
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def _feature_size(n: int) -> int:
    """Size of the trunk's output along one axis: conv1, maxpool, layer2, layer3 each halve it (ceil)."""
    for _ in range(4):
        n = (n + 1) // 2
    return n


def _resnet_trunk(arch: str) -> nn.Sequential:
    """A randomly initialised torchvision ResNet without avgpool/fc, with layer4's stride set to 1.

    PCB's "last stride 1": removing the final down-sampling doubles the map height (24 instead of 12
    rows at 384×128), so each of the K=6 stripes still covers 4 rows of features.
    """
    net = _arch(arch).builder(weights=None)
    block = net.layer4[0]
    # BasicBlock (18/34) strides in conv1; torchvision's Bottleneck (ResNet v1.5) strides in conv2.
    strided = block.conv2 if isinstance(block, models.resnet.Bottleneck) else block.conv1
    strided.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))


# ----------------------------------------------------------------------------------------------- model


class DFE(nn.Module):
    """Dual-alignment Feature Embedding network: ResNet trunk + K part heads.

    Args:
        num_classes: training identities (the width of each part classifier).
        arch: one of ``ARCHS`` (``resnet50`` in the paper; 18/34 for small runs).
        parts: K, the number of horizontal stripes (6 in the paper, after PCB).
        embed_dim: D, the width of each part embedding (256 in the paper).
        pretrained: ``None``/``False`` for random init; ``True``/``"imagenet"`` for torchvision's
            ImageNet weights (offline: one warning, random init); or a path to a local
            torchvision-format ResNet state dict (missing → :class:`UserError`).
        height: input height the model is built for (recorded for export and serving).
        width: input width.
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = PAPER.arch,
        parts: int = PAPER.parts,
        embed_dim: int = PAPER.embed_dim,
        pretrained: bool | str | Path | None = None,
        height: int = PAPER.height,
        width: int = PAPER.width,
    ) -> None:
        super().__init__()
        spec = _arch(arch)
        if num_classes < 1 or parts < 1 or embed_dim < 1:
            raise ValueError(f"num_classes, parts and embed_dim must be >= 1, got {num_classes}, {parts}, {embed_dim}")
        if height < 1 or width < 1:
            raise ValueError(f"height and width must be >= 1, got {height}x{width}")
        if _feature_size(height) < parts:
            raise ValueError(
                f"height {height} gives a {_feature_size(height)}-row feature map, fewer rows than parts={parts}; "
                f"use height >= {16 * parts - 15} (the paper uses 384 for 6 parts)"
            )
        self.num_classes = num_classes
        self.arch = arch
        self.parts = parts
        self.embed_dim = embed_dim
        self.descriptor_dim = parts * embed_dim
        self.height = height
        self.width = width

        scale = INPUT_META["pixel_scale"]
        self.register_buffer("pixel_mean", torch.tensor(INPUT_META["mean"]).view(1, 3, 1, 1) * scale)
        self.register_buffer("pixel_std", torch.tensor(INPUT_META["std"]).view(1, 3, 1, 1) * scale)

        self.backbone = _resnet_trunk(arch)
        # GAP per stripe: [B, C, h, w] -> [B, C, K, 1] (the stripes of PCB / the paper's Figure 4).
        self.part_pool = nn.AdaptiveAvgPool2d((parts, 1))
        self.embeddings = nn.ModuleList(
            nn.Sequential(nn.Conv2d(spec.channels, embed_dim, 1, bias=False), nn.BatchNorm2d(embed_dim))
            for _ in range(parts)
        )
        self.classifiers = nn.ModuleList(nn.Linear(embed_dim, num_classes, bias=False) for _ in range(parts))
        #: s of a cosine classifier (a training option; None: the paper's linear classifiers). The exported
        #: descriptor never goes through the classifiers, so it is not part of ``model_config``.
        self.cosine_scale: float | None = None
        self._init_weights()
        self._load_pretrained(pretrained)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for fc in self.classifiers:
            # std 0.001 (PCB's reference code): near-zero logits make the first softmax almost uniform,
            # so the loss starts at ln(C) and the 0.1 head learning rate does not blow up the fresh
            # embeddings with large early gradients.
            nn.init.normal_(fc.weight, std=0.001)

    def zero_init_residual(self) -> None:
        """Zero the last BatchNorm weight of every residual block, so each block starts as the identity (Goyal et
        al., "Accurate, Large Minibatch SGD", 2017; torchvision's ``zero_init_residual``): from scratch the trunk
        then starts as a shallow network and trains faster early. Only for random initialisation."""
        for m in self.backbone.modules():
            if isinstance(m, models.resnet.Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, models.resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def _load_pretrained(self, pretrained: bool | str | Path | None) -> None:
        if pretrained is None or pretrained is False:
            return
        if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() == "imagenet"):
            try:
                state = _download_imagenet_state_dict(self.arch)
            except Exception as exc:  # offline, proxy, corrupt cache...: training must still run
                logger.warning("ImageNet weights for %s unavailable (%s); using random initialisation",
                               self.arch, _first_line(exc))
                return
            source = f"torchvision {self.arch} ImageNet weights"
        elif isinstance(pretrained, (str, Path)):
            state = _load_local_state_dict(Path(pretrained))
            source = str(pretrained)
        else:
            raise ValueError(f"pretrained must be None, False, True, 'imagenet' or a path, got {pretrained!r}")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # ImageNet classifier: unused
        try:
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatch: weights of another arch
            raise UserError(f"weights {source} do not fit a {self.arch} trunk: {exc}") from exc
        if missing or unexpected:
            raise UserError(f"weights {source} do not fit a {self.arch} trunk: missing {list(missing)[:5]}, "
                            f"unexpected {list(unexpected)[:5]}")
        logger.info("loaded %s into the backbone", source)

    # ------------------------------------------------------------------------------------------ forward

    def forward_features(self, x: Tensor) -> Tensor:
        """Images ``[B, 3, H, W]`` uint8 or 0-255 float RGB → trunk feature map ``[B, C, h, w]``."""
        # The cast is inside the graph so the ONNX model takes uint8 directly.
        x = (x.to(torch.float32) - self.pixel_mean) / self.pixel_std
        return self.backbone(x)

    def forward_head(self, feature_map: Tensor) -> Tensor:
        """Feature map → part embeddings ``[B, K, D]`` (f_i after BatchNorm, top stripe first)."""
        pooled = self.part_pool(feature_map)  # [B, C, K, 1]
        parts = [head(pooled[:, :, i : i + 1, :]).flatten(1) for i, head in enumerate(self.embeddings)]
        return torch.stack(parts, dim=1)

    def classify(self, parts: Tensor) -> list[Tensor]:
        """Part embeddings ``[B, K, D]`` → K logits ``[B, num_classes]`` (one classifier per part).

        With ``cosine_scale`` set, each logit is ``s · cos(f_i, w_c)`` (a normalised-softmax classifier, as in
        Wang et al.'s NormFace / CosFace without the margin): the logits are bounded by ``s`` whatever the scale
        of the weights and features, so a large head learning rate cannot blow the early softmax up.
        """
        if self.cosine_scale:
            return [self.cosine_scale * nn.functional.linear(nn.functional.normalize(parts[:, i], dim=1),
                                                             nn.functional.normalize(fc.weight, dim=1))
                    for i, fc in enumerate(self.classifiers)]
        return [fc(parts[:, i]) for i, fc in enumerate(self.classifiers)]

    def forward_train_head(self, feature_map: Tensor) -> tuple[Tensor, Tensor]:
        """Training mode's head: the part embeddings ``[B, K, D]`` and the same before their BatchNorms' weight
        and bias (the batch normalisation alone, which BatchNorm computes on the way; no running statistics)."""
        pooled = self.part_pool(feature_map)
        parts, normalised = [], []
        for i, (conv, bn) in enumerate(self.embeddings):
            pre = conv(pooled[:, :, i : i + 1, :])
            parts.append(bn(pre).flatten(1))
            normalised.append(nn.functional.batch_norm(pre, None, None, training=True, eps=bn.eps).flatten(1))
        return torch.stack(parts, dim=1), torch.stack(normalised, dim=1)

    def forward(self, x: Tensor) -> DFEOutput | Tensor:
        """Train mode: :class:`DFEOutput`; eval mode: descriptor ``[B, K·D]`` float32 (not normalised)."""
        if self.training:
            parts, normalised = self.forward_train_head(self.forward_features(x))
            return DFEOutput(parts=parts, logits=self.classify(parts), normalised=normalised)
        return self.forward_head(self.forward_features(x)).flatten(1).to(torch.float32)

    def model_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model (without weights)."""
        return {"num_classes": self.num_classes, "arch": self.arch, "parts": self.parts,
                "embed_dim": self.embed_dim, "height": self.height, "width": self.width}


def param_groups(model: DFE, base_lr: float, head_lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """SGD parameter groups of §4.2: the trunk ("old" parameters) and the new layers.

    Args:
        model: the network.
        base_lr: learning rate of the (ImageNet-pretrained) backbone, 0.01 in the paper.
        head_lr: learning rate of the part embeddings, their BatchNorms and the classifiers, 0.1.
        weight_decay: applied to both groups.

    Returns:
        Two dicts for ``torch.optim.SGD``, named ``"backbone"`` and ``"head"``, each with ``initial_lr``
        left to the scheduler.
    """
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    head = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": backbone, "lr": base_lr, "weight_decay": weight_decay, "name": "backbone"},
        {"params": head, "lr": head_lr, "weight_decay": weight_decay, "name": "head"},
    ]


# ------------------------------------------------------------------------------------------- builders


def _build(arch: str, num_classes: int, *, pretrained: bool | str | Path | None, **kwargs: Any) -> DFE:
    return DFE(num_classes, arch=arch, pretrained=pretrained, **kwargs)


def dfe_resnet18(num_classes: int, *, pretrained: bool | str | Path | None = None, **kwargs: Any) -> DFE:
    """DFE on ResNet-18 (for small CPU runs). Other keywords as :class:`DFE`."""
    return _build("resnet18", num_classes, pretrained=pretrained, **kwargs)


def dfe_resnet34(num_classes: int, *, pretrained: bool | str | Path | None = None, **kwargs: Any) -> DFE:
    """DFE on ResNet-34. Other keywords as :class:`DFE`."""
    return _build("resnet34", num_classes, pretrained=pretrained, **kwargs)


def dfe_resnet50(num_classes: int, *, pretrained: bool | str | Path | None = None, **kwargs: Any) -> DFE:
    """DFE on ResNet-50, the paper's model. Other keywords as :class:`DFE`."""
    return _build("resnet50", num_classes, pretrained=pretrained, **kwargs)


# ---------------------------------------------------------------------------------------- checkpoints

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "config", "model_config")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[DFE, dict[str, Any]]:
    """Rebuild a trained model from a training checkpoint (see docs/contracts.md).

    Args:
        path: a ``.pt`` file written by the trainer (dict with ``model`` and ``model_config``).
        map_location: where tensors are loaded.

    Returns:
        ``(model in eval mode, the checkpoint dict)``.

    Raises:
        UserError: the file is missing, unreadable or not a DFE checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        # weights_only: a checkpoint holds tensors and plain types only (contract), so never run pickle code.
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a corrupt file fails in many ways (pickle, zip, EOF, IndexError...)
        raise UserError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path} is not a DFE checkpoint: expected keys 'model' and 'model_config', found {found}")
    try:
        model = DFE(**ckpt["model_config"], pretrained=None)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} does not match its model_config: {exc}") from exc
    model.to(map_location)
    return model.eval(), ckpt
