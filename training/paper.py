"""The paper's model size, named once (Hao et al., ACM MM 2019, §4.2), as data like timm's ``_cfg``.

``DFE``'s defaults, ``python -m training train``, ``python -m export onnx --random``,
``export.models.random_model`` and ``benchmarks.embed``'s ``paper`` model all read :data:`PAPER`, so the
paper's 384×128 input, K=6 parts and D=256 are typed nowhere else. A module of its own, importing neither
torch nor torchvision, so that command-line parsers can show these defaults without loading the model code.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PAPER", "ModelConfig"]


class ModelConfig(NamedTuple):
    """The keyword arguments that size a DFE (``training.model.DFE``)."""

    arch: str
    height: int
    width: int
    parts: int
    embed_dim: int

    @property
    def descriptor_dim(self) -> int:
        """K·D: the length of the concatenated part descriptor."""
        return self.parts * self.embed_dim


#: ResNet-50, a 384×128 input, K=6 horizontal parts of D=256 each (a 1536-d descriptor).
PAPER = ModelConfig(arch="resnet50", height=384, width=128, parts=6, embed_dim=256)
