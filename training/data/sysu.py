"""SYSU-MM01 (Wu et al., "RGB-Infrared Cross-Modality Person Re-Identification", ICCV 2017).

491 identities seen by 4 RGB cameras (1, 2, 4, 5) and 2 near-infrared cameras (3, 6); 296 train,
99 validation and 96 test identities, listed in ``exp/{train,val,test}_id.txt`` as one line of
comma-separated integers. Images live at ``cam<c>/<pid:04d>/<n:04d>.jpg``; not every identity
appears in every camera. As the community does, training uses train + val identities; test
identities are for evaluation. The synthetic generator writes the same tree.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.data.records import Record, sysu_modality
from xmreid.errors import UserError

log = logging.getLogger(__name__)

CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
# The one list for training and export; serving.indexing.crawl keeps an equal copy (serving may not import training).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")


def read_id_file(path: Path) -> list[int]:
    """Parse a SYSU-MM01 id file: comma-separated integers (one line; blank lines ignored).

    Raises:
        UserError: Missing file, or a token that is not an integer.
    """
    if not path.is_file():
        raise UserError(f"SYSU-MM01: missing id file {path} (expected one line of comma-separated person ids)")
    tokens = [t.strip() for t in path.read_text().replace("\n", ",").split(",") if t.strip()]
    try:
        ids = [int(t) for t in tokens]
    except ValueError as exc:
        raise UserError(f"SYSU-MM01: malformed id file {path}: {exc} "
                        "(expected one line of comma-separated integers, e.g. '1,2,3')") from exc
    if not ids:
        raise UserError(f"SYSU-MM01: id file {path} lists no person ids")
    return ids


class SYSUMM01:
    """Records of a SYSU-MM01 tree (real or synthetic).

    Attributes:
        root: Dataset root (holding ``cam1`` .. ``cam6`` and ``exp``).
        train: Records of train + val identities, all six cameras.
        test: Records of test identities, all six cameras (evaluation picks its query/gallery cameras).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"SYSU-MM01: dataset root {self.root} is not a directory "
                            "(expected cam1..cam6/ and exp/ inside)")
        missing = [f"cam{c}" for c in CAMERAS if not (self.root / f"cam{c}").is_dir()]
        if missing:
            raise UserError(f"SYSU-MM01: {self.root} lacks camera folder(s) {', '.join(missing)} "
                            "(expected cam1..cam6/<pid:04d>/<n>.jpg)")
        exp = self.root / "exp"
        train_ids = read_id_file(exp / "train_id.txt") + read_id_file(exp / "val_id.txt")
        test_ids = read_id_file(exp / "test_id.txt")
        overlap = sorted(set(train_ids) & set(test_ids))
        if overlap:
            raise UserError(f"SYSU-MM01: ids {overlap[:10]} are in both the train/val and the test id files of {exp}")
        self.train = self._records(train_ids)
        self.test = self._records(test_ids)
        if not self.train or not self.test:
            raise UserError(f"SYSU-MM01: found no images for the {'train' if not self.train else 'test'} ids "
                            f"under {self.root}/cam*/<pid:04d>/")
        log.info("SYSU-MM01 %s: %d train images (%d ids), %d test images (%d ids)", self.root,
                 len(self.train), len({r.pid for r in self.train}), len(self.test), len({r.pid for r in self.test}))

    def _records(self, pids: list[int]) -> list[Record]:
        records = []
        for pid in sorted(set(pids)):
            for cam in CAMERAS:
                folder = self.root / f"cam{cam}" / f"{pid:04d}"
                if not folder.is_dir():  # real SYSU-MM01: not every person passes every camera
                    continue
                for f in sorted(folder.iterdir()):
                    if f.suffix.lower() in IMAGE_SUFFIXES:
                        records.append(Record(str(f), pid, cam, sysu_modality(cam)))
        return records
