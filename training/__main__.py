"""``python -m training <command>``: synthetic data, training, evaluation, ablation.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``synth`` does not pay for importing torch models.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib import metadata

from training.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.data.synthetic", "generate a synthetic cross-modality dataset (SYSU-MM01 or RegDB layout)"),
    "train": ("training.train", "train a DFE model from a YAML config"),
    "evaluate": ("training.evaluate", "evaluate a checkpoint with the SYSU-MM01 / RegDB protocols"),
    "ablation": ("training.ablation", "train + evaluate baseline, w/o L_c, w/o L_d and DFE (paper Fig. 6)"),
}


def _version() -> str:
    """The installed package's version (pyproject.toml, the one version source; serving/version.py reads the same)."""
    try:
        return metadata.version("xmreid")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _usage() -> str:
    lines = ["usage: python -m training [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"python -m training {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
