"""``python -m training <command>``: synthetic data, training, evaluation, ablation.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``synth`` does not pay for importing torch models.

Before torch is imported, ``OMP_WAIT_POLICY`` defaults to ``PASSIVE`` (an explicit setting wins): torch's
OpenMP threads then sleep instead of spinning while they wait for each other. With spinning, a training step on
a machine where another process wants a core spends most of its time in threads that burn the core the slow
thread needs (benchmarks/results/train_step.md); the wait policy does not change how work is split, so the
numbers a run computes are the same.
"""

from __future__ import annotations

import os
import sys

from xmreid.cli import run

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("training.data.synthetic", "synthetic cross-modality data: SYSU-MM01 or RegDB layout, or camera video"),
    "train": ("training.train", "train a DFE model from a YAML config"),
    "evaluate": ("training.evaluate", "evaluate a checkpoint with the SYSU-MM01 / RegDB protocols"),
    "ablation": ("training.ablation", "train + evaluate baseline, w/o L_c, w/o L_d, DFE, DFE with scale-free L_d"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command (see :func:`xmreid.cli.run`); returns the exit status."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch's OpenMP runtime starts
    return run("python -m training", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
