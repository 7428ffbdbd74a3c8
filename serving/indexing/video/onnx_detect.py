"""A user's person detector exported to ONNX in the common YOLO layout, run by ONNX Runtime.

The layout of Ultralytics' YOLOv8/v11 exports (and of many others that copy it): one float image input
``[1, 3, H, W]`` (RGB, 0..1, letterboxed: resized keeping its aspect ratio, padded with grey 114), and one
output ``[1, 4 + C, N]`` -- or its transpose ``[1, N, 4 + C]`` -- holding for each of ``N`` candidates its box
``(centre x, centre y, width, height)`` in input pixels and ``C`` class scores. Class 0 is the person (COCO's
first class). Boxes scoring at least ``confidence`` are kept after non-maximum suppression
(``cv2.dnn.NMSBoxes``) and mapped back to the frame. A model with a dynamic input size runs at ``size``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serving.core import opencv_limits  # noqa: F401  (OpenCV's decoder limits, before cv2 loads)
from serving.indexing.video.detect import Boxes
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

PAD_VALUE = 114  # the grey YOLO letterboxes with


class YoloOnnxDetector:
    """People from a YOLO-layout ONNX model (module docstring).

    Args:
        path: the ``.onnx`` file.
        confidence: the least person score kept.
        iou: boxes overlapping a better one by more than this are suppressed.
        person_class: the class index of a person.
        size: input side for a model whose input size is dynamic.
        threads: ONNX Runtime intra-op threads.

    Raises:
        UserError: a missing or unreadable file, or a model whose input or output is not in this layout.
    """

    name = "onnx"

    def __init__(self, path: str | Path, *, confidence: float = 0.25, iou: float = 0.45, person_class: int = 0,
                 size: int = 640, threads: int = 1) -> None:
        import onnxruntime as ort

        from serving.embedders.onnxruntime_embedder import session_options

        path = Path(path)
        if not path.is_file():
            raise UserError(f"--detector {path}: no such file")
        try:
            self._session = ort.InferenceSession(str(path), session_options(threads),
                                                 providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a file that is not a model
            raise UserError(f"--detector {path} is not an ONNX model ONNX Runtime can load: "
                            f"{str(exc).splitlines()[0][:200]}") from None
        inputs = self._session.get_inputs()
        shape = list(inputs[0].shape) if inputs else []
        if len(inputs) != 1 or len(shape) != 4 or shape[1] not in (3, "3"):
            raise UserError(f"--detector {path.name}: expected one image input [1, 3, H, W], got "
                            f"{[(i.name, i.shape) for i in inputs]}")
        self._input = inputs[0].name
        self.height = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else int(size)
        self.width = shape[3] if isinstance(shape[3], int) and shape[3] > 0 else int(size)
        self.confidence, self.iou, self.person_class = float(confidence), float(iou), int(person_class)
        self.path = path

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        """The input tensor and the ``(scale, pad_x, pad_y)`` that map input pixels back to the frame."""
        import cv2

        h, w = frame.shape[:2]
        scale = min(self.height / h, self.width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        canvas = np.full((self.height, self.width, 3), PAD_VALUE, np.uint8)
        top, left = (self.height - nh) // 2, (self.width - nw) // 2
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        canvas[top:top + nh, left:left + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
        tensor = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        return tensor, scale, float(left), float(top)

    def _rows(self, output: np.ndarray) -> np.ndarray:
        """The output as ``[N, 4 + C]`` rows, whichever of the two layouts it has."""
        out = np.asarray(output, np.float32)
        if out.ndim == 3 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 2 or min(out.shape) < 5:
            raise UserError(f"--detector {self.path.name}: expected an output [1, 4+C, N] or [1, N, 4+C], got "
                            f"{list(np.shape(output))}")
        # The box-and-class axis is the short one (YOLO: 84 against 8400 candidates).
        return out.T if out.shape[0] < out.shape[1] else out

    def detect(self, frame: np.ndarray) -> Boxes:
        """The people in ``frame`` (BGR), boxes in frame pixels."""
        import cv2

        tensor, scale, pad_x, pad_y = self._letterbox(frame)
        rows = self._rows(self._session.run(None, {self._input: tensor})[0])
        if rows.shape[1] <= 4 + self.person_class:
            raise UserError(f"--detector {self.path.name} has {rows.shape[1] - 4} classes; person class "
                            f"{self.person_class} is not one of them")
        scores = rows[:, 4 + self.person_class]
        keep = scores >= self.confidence
        if not keep.any():
            return Boxes.empty()
        cx, cy, bw, bh = (rows[keep, i] for i in range(4))
        scores = scores[keep]
        left, top = (cx - bw / 2 - pad_x) / scale, (cy - bh / 2 - pad_y) / scale
        xywh = np.stack([left, top, bw / scale, bh / scale], axis=1)
        picked = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.confidence, self.iou),
                            dtype=np.int64).reshape(-1)
        if picked.size == 0:
            return Boxes.empty()
        h, w = frame.shape[:2]
        xyxy = np.stack([xywh[picked, 0], xywh[picked, 1], xywh[picked, 0] + xywh[picked, 2],
                         xywh[picked, 1] + xywh[picked, 3]], axis=1)
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, w)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, h)
        return Boxes(xyxy.astype(np.float32), scores[picked].astype(np.float32))
