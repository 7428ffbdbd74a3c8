"""``python -m training <command>``: synthetic data, training, evaluation, ablation.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``synth`` does not pay for importing torch models.
"""

from __future__ import annotations

import sys

from xmreid.cli import run

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.data.synthetic", "generate a synthetic cross-modality dataset (SYSU-MM01 or RegDB layout)"),
    "train": ("training.train", "train a DFE model from a YAML config"),
    "evaluate": ("training.evaluate", "evaluate a checkpoint with the SYSU-MM01 / RegDB protocols"),
    "ablation": ("training.ablation", "train + evaluate baseline, w/o L_c, w/o L_d and DFE (paper Fig. 6)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command (see :func:`xmreid.cli.run`); returns the exit status."""
    return run("python -m training", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
