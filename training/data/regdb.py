"""RegDB (Nguyen et al., "Person Recognition System Based on a Combination of Body Images from Visible
Light and Thermal Cameras", Sensors 2017).

412 identities, each with 10 visible and 10 thermal images from one dual-camera rig. The usual
protocol (Ye et al.) draws 10 random 50/50 identity splits, listed in
``idx/{train,test}_{visible,thermal}_<trial>.txt`` with lines ``<relative path> <label>``. The label
is the person id within the files (consistent between visible and thermal files of one trial),
and is what we use as ``pid``. Visible images are camid 1, thermal camid 2.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.data.records import REGDB_THERMAL_CAM, REGDB_VISIBLE_CAM, Record
from xmreid.errors import UserError

log = logging.getLogger(__name__)

TRIALS: tuple[int, ...] = tuple(range(1, 11))


def read_split_file(root: Path, path: Path, camid: int, modality: str) -> list[Record]:
    """Parse one RegDB split file into records (paths made absolute against ``root``).

    Raises:
        UserError: Missing file, malformed line, or a listed image that does not exist.
    """
    if not path.is_file():
        raise UserError(f"RegDB: missing split file {path} (expected lines '<relative image path> <label>')")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            rel, label = " ".join(parts[:-1]), int(parts[-1])
        except (ValueError, IndexError):
            raise UserError(f"RegDB: malformed line {lineno} of {path}: {line!r} "
                            "(expected '<relative image path> <integer label>')") from None
        if not rel:
            raise UserError(f"RegDB: malformed line {lineno} of {path}: {line!r} (no image path)")
        image = root / rel
        if not image.is_file():
            raise UserError(f"RegDB: {path} line {lineno} names {image}, which does not exist")
        records.append(Record(str(image), label, camid, modality))
    if not records:
        raise UserError(f"RegDB: split file {path} lists no images")
    return records


class RegDB:
    """Records of one RegDB trial (real or synthetic).

    Attributes:
        root: Dataset root (holding ``Visible/``, ``Thermal/`` and ``idx/``).
        trial: Which of the 10 random splits (1..10).
        train: Visible + thermal records of the trial's training identities.
        test: Visible + thermal records of its test identities.
    """

    def __init__(self, root: str | Path, trial: int = 1) -> None:
        if trial not in TRIALS:
            raise UserError(f"RegDB: trial must be one of 1..10, got {trial!r}")
        self.root, self.trial = Path(root), trial
        if not self.root.is_dir():
            raise UserError(f"RegDB: dataset root {self.root} is not a directory "
                            "(expected Visible/, Thermal/ and idx/ inside)")
        for sub in ("Visible", "Thermal", "idx"):
            if not (self.root / sub).is_dir():
                raise UserError(f"RegDB: {self.root} lacks the folder {sub}/ (expected Visible/, Thermal/, idx/)")
        idx = self.root / "idx"
        self.train, self.test = [], []
        for split, out in (("train", self.train), ("test", self.test)):
            out += read_split_file(self.root, idx / f"{split}_visible_{trial}.txt", REGDB_VISIBLE_CAM, "rgb")
            out += read_split_file(self.root, idx / f"{split}_thermal_{trial}.txt", REGDB_THERMAL_CAM, "ir")
        log.info("RegDB %s trial %d: %d train images, %d test images", self.root, trial, len(self.train),
                 len(self.test))
