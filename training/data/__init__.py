"""Datasets (real SYSU-MM01 / RegDB folders and the synthetic generator), samplers and transforms.

``build_dataset(name, root, **kw)`` is the one entry point for dataset parsing; the torch-facing
pieces (``loader.build_train_loader``) are imported from their modules so that importing this
package does not import torch.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from training.data.records import Record
from training.data.regdb import RegDB
from training.data.sysu import SYSUMM01
from xmreid.errors import UserError

#: name -> dataset class; explicit so a typo fails with the list of valid names.
DATASETS: dict[str, type] = {"sysu": SYSUMM01, "regdb": RegDB}


def build_dataset(name: str, root: str | Path, **kwargs: Any) -> SYSUMM01 | RegDB:
    """Parse a dataset folder.

    Args:
        name: ``"sysu"`` or ``"regdb"``.
        root: Dataset root.
        **kwargs: Passed to the dataset class (RegDB takes ``trial=1..10``).

    Returns:
        An object with ``.train`` and ``.test`` lists of :class:`Record`.

    Raises:
        UserError: Unknown name, bad keyword, or a missing / malformed folder or file.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    cls = DATASETS[name]
    try:  # check keywords up front so a TypeError raised inside the parser is not mistaken for one
        inspect.signature(cls).bind(root, **kwargs)
    except TypeError as exc:  # e.g. trial= given to sysu
        raise UserError(f"dataset {name!r} does not take {sorted(kwargs)}: {exc}") from exc
    return cls(root, **kwargs)


__all__ = ["DATASETS", "Record", "RegDB", "SYSUMM01", "build_dataset"]
