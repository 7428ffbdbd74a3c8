"""``python -m export onnx``: a checkpoint (or a random model) to an ONNX file with metadata.

The graph is the eval-mode model: uint8 RGB NCHW ``images`` in (the cast and the ImageNet
normalisation are inside the model, so inside the graph), un-normalised float32 ``descriptors``
``[batch, K*256]`` out, with a symbolic batch axis.

Exporter choice: torch 2.14's ``torch.onnx.export`` defaults to the ``torch.export``-based ("dynamo")
exporter, which needs onnxscript. We keep it: its graph for DFE is clean (BatchNorm folded into the
convolutions, no ``Identity``/``Constant`` clutter left by the TorchScript exporter), the batch axis
comes from a ``torch.export.Dim`` and stays symbolic through every reshape, ONNX Runtime matches
PyTorch to ~1e-6, and the TorchScript exporter is deprecated ("will be removed"). Its native opset is
18; asking for 17 makes it down-convert with ONNX's version converter, so 18 is the default. The
TorchScript exporter stays selectable (``--exporter torchscript``) for older torch versions.
"""

from __future__ import annotations

import argparse
import io
import logging
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import onnx
import torch

from export.artifact import INPUT_NAME, OUTPUT_NAME, config_digest
from export.models import LoadedModel, load_model, model_from_checkpoint
from training.model import ARCHS, INPUT_META
from training.paper import PAPER
from xmreid.atomic import atomic_write_bytes
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_OPSET", "EXPORTERS", "MIN_OPSET", "build_metadata", "export_model", "export_onnx", "main",
           "quiet_exporter_logs"]

DEFAULT_OPSET = 18
MIN_OPSET = 17  # ARCHITECTURE.md §8; also the lowest opset TensorRT 10's parser is tested with for these ops
EXPORTERS = ("dynamo", "torchscript")
# The example batch must not be 1: torch.export specialises sizes 0 and 1, which would freeze the batch axis.
_EXAMPLE_BATCH = 2


def _package_version() -> str:
    try:
        return importlib_metadata.version("xmreid")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def exporter_version(exporter: str, opset: int) -> str:
    """What wrote the file, for the ``exporter_version`` property (tools and versions, no secrets)."""
    return f"xmreid {_package_version()}; torch {torch.__version__} {exporter} exporter; opset {opset}"


def build_metadata(loaded: LoadedModel, *, exporter: str, opset: int) -> dict[str, str]:
    """The ONNX ``metadata_props`` of docs/contracts.md, all as strings (ONNX stores strings only)."""
    model = loaded.model
    meta: dict[str, Any] = {
        "height": model.height,
        "width": model.width,
        "parts": model.parts,
        "embed_dim": model.embed_dim,
        "descriptor_dim": model.descriptor_dim,
        "channel_order": INPUT_META["channel_order"],
        "layout": INPUT_META["layout"],
        "input_dtype": INPUT_META["input_dtype"],
        "arch": model.arch,
        "config_digest": config_digest(loaded.config, loaded.model_config),
        "exporter_version": exporter_version(exporter, opset),
    }
    return {key: str(value) for key, value in meta.items()}


def _to_proto(model: torch.nn.Module, example: torch.Tensor, *, opset: int, dynamic_batch: bool,
              exporter: str) -> onnx.ModelProto:
    if exporter == "dynamo":
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
        program = torch.onnx.export(model, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                                    opset_version=opset, optimize=True, verbose=False)
        return program.model_proto
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)  # the deprecation notice; we chose it knowingly
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None)
    return onnx.load_from_string(buffer.getvalue())


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnxslim or onnx-simplifier when one is installed (neither is a dependency)."""
    try:
        import onnxslim  # type: ignore[import-not-found]
    except ImportError:
        onnxslim = None
    if onnxslim is not None:
        logger.info("simplifying with onnxslim")
        return onnxslim.slim(proto)
    try:
        import onnxsim  # type: ignore[import-not-found]
    except ImportError:
        logger.warning("--simplify: neither onnxslim nor onnxsim is installed; keeping the exporter's graph "
                       "(pip install onnxslim to enable it)")
        return proto
    logger.info("simplifying with onnx-simplifier")
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        logger.warning("onnx-simplifier could not validate its result; keeping the exporter's graph")
        return proto
    return simplified


def _check_io(proto: onnx.ModelProto, model: Any, dynamic_batch: bool) -> None:
    """Fail loudly if the exporter produced a different interface than the contract (a bug, not user error)."""
    (inp,), (out,) = proto.graph.input, proto.graph.output
    in_type, out_type = inp.type.tensor_type, out.type.tensor_type
    in_dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in in_type.shape.dim]
    out_dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in out_type.shape.dim]
    problems = []
    if inp.name != INPUT_NAME or in_type.elem_type != onnx.TensorProto.UINT8:
        problems.append(f"input {inp.name} type {in_type.elem_type}")
    if out.name != OUTPUT_NAME or out_type.elem_type != onnx.TensorProto.FLOAT:
        problems.append(f"output {out.name} type {out_type.elem_type}")
    if in_dims[1:] != [3, model.height, model.width] or out_dims[1:] != [model.descriptor_dim]:
        problems.append(f"shapes {in_dims} -> {out_dims}")
    if dynamic_batch != (isinstance(in_dims[0], str) and isinstance(out_dims[0], str)):
        problems.append(f"batch axis {in_dims[0]!r} -> {out_dims[0]!r} (dynamic_batch={dynamic_batch})")
    if problems:
        raise RuntimeError(f"exported graph breaks the ONNX contract: {'; '.join(problems)}")


def export_model(loaded: LoadedModel, out: str | Path, *, opset: int = DEFAULT_OPSET, simplify: bool = False,
                 dynamic_batch: bool = True, exporter: str = "dynamo") -> Path:
    """Export an already loaded model (see :func:`export_onnx` for the arguments)."""
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is too old; use an opset >= {MIN_OPSET} (default {DEFAULT_OPSET})")
    if exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {exporter!r}; valid exporters: {', '.join(EXPORTERS)}")
    out = Path(out)
    model = loaded.model.eval().cpu()
    batch = _EXAMPLE_BATCH if dynamic_batch else 1
    example = torch.randint(0, 256, (batch, 3, model.height, model.width), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    logger.info("exporting %s (%s) with the %s exporter, opset %d", loaded.source, model.arch, exporter, opset)
    proto = _to_proto(model, example, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)
    if simplify:
        proto = _simplify(proto)
    del proto.metadata_props[:]
    for key, value in build_metadata(loaded, exporter=exporter, opset=opset).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"DFE {model.arch} {model.height}x{model.width}, {model.parts} parts: uint8 RGB NCHW "
                        f"'{INPUT_NAME}' -> float32 '{OUTPUT_NAME}' [batch, {model.descriptor_dim}] "
                        "(not L2-normalised)")
    onnx.checker.check_model(proto, full_check=True)
    _check_io(proto, model, dynamic_batch)
    # < 2 GiB for every ResNet here, so the weights stay inside the file (no external data).
    atomic_write_bytes(out, proto.SerializeToString())
    logger.info("wrote %s (%.1f MB, %d nodes)", out, out.stat().st_size / 1e6, len(proto.graph.node))
    return out


def export_onnx(checkpoint: str | Path, out: str | Path, *, opset: int = DEFAULT_OPSET, simplify: bool = False,
                dynamic_batch: bool = True, exporter: str = "dynamo") -> Path:
    """Export a training checkpoint to ONNX.

    Args:
        checkpoint: a ``last.pt`` from ``python -m training train``.
        out: the ``.onnx`` file to write (atomically; parent folders are created).
        opset: ONNX opset, >= 17 (18 is the dynamo exporter's native one).
        simplify: run onnxslim / onnx-simplifier if installed (skipped with a warning otherwise).
        dynamic_batch: a symbolic batch axis (``False`` freezes it at 1).
        exporter: ``"dynamo"`` (default) or ``"torchscript"``.

    Returns:
        ``out`` as a Path.

    Raises:
        UserError: unreadable checkpoint, too old an opset, unknown exporter.
    """
    return export_model(model_from_checkpoint(checkpoint), out, opset=opset, simplify=simplify,
                        dynamic_batch=dynamic_batch, exporter=exporter)


def quiet_exporter_logs() -> None:
    """Hide the exporter's per-pass INFO lines (hundreds of them) under a CLI's INFO logging."""
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--checkpoint`` or ``--random`` with its architecture options (shared with ``verify``).

    ``required=False`` lets a command check the choice itself (``verify`` does not need a PyTorch model
    when it compares an INT8 model with its fp32 parent).
    """
    group = parser.add_argument_group("model (a checkpoint, or --random for a benchmark-only model)")
    source = group.add_mutually_exclusive_group(required=required)
    source.add_argument("--checkpoint", type=Path, help="training checkpoint (last.pt)")
    source.add_argument("--random", action="store_true", help="random weights; use with --arch/--height/--width")
    # The defaults are the paper's model (training.model.PAPER), as the help says.
    group.add_argument("--arch", default=PAPER.arch, choices=sorted(ARCHS),
                       help=f"with --random (default {PAPER.arch})")
    group.add_argument("--height", type=int, default=PAPER.height, help=f"with --random (default {PAPER.height})")
    group.add_argument("--width", type=int, default=PAPER.width, help=f"with --random (default {PAPER.width})")
    group.add_argument("--parts", type=int, default=PAPER.parts, help=f"with --random (default {PAPER.parts})")
    group.add_argument("--embed-dim", type=int, default=PAPER.embed_dim,
                       help=f"with --random (default {PAPER.embed_dim})")
    group.add_argument("--seed", type=int, default=0, help="with --random: weight seed (default 0)")


def model_from_args(args: argparse.Namespace) -> LoadedModel:
    """The model that :func:`add_model_arguments` describes."""
    return load_model(args.checkpoint, arch=args.arch, height=args.height, width=args.width, parts=args.parts,
                      embed_dim=args.embed_dim, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export onnx", description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset >= {MIN_OPSET} "
                        f"(default {DEFAULT_OPSET})")
    parser.add_argument("--simplify", action="store_true", help="simplify with onnxslim/onnxsim when installed")
    parser.add_argument("--static-batch", action="store_true", help="freeze the batch axis at 1")
    parser.add_argument("--exporter", default="dynamo", choices=EXPORTERS, help="torch.onnx exporter (default dynamo)")
    args = parser.parse_args(argv)
    quiet_exporter_logs()
    path = export_model(model_from_args(args), args.out, opset=args.opset, simplify=args.simplify,
                        dynamic_batch=not args.static_batch, exporter=args.exporter)
    print(f"wrote {path}")
    return 0
