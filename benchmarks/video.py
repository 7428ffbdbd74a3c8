"""From camera video to ranked tracks, measured: detection, tracking, IR-track -> RGB-track retrieval and ingestion
speed on a synthetic clip set, each retrieval figure beside the same figure with the ground-truth tracks.

Protocol (one clip set of ``python -m training synth --layout video``, of a seed the tests do not use):

* ingest each RGB camera (1, 2, 4, 5) twice with :func:`serving.indexing.video.ingest_video`: with the
  default detector and tracker into one gallery (timed: frames / wall seconds of the call, one thread, model
  loading included, against the clip's frame rate), and with the ground-truth tracks (``tracks_from=gt.txt``)
  into another;
* query with each infrared camera (3, 6) against the matching gallery with
  :func:`serving.indexing.video.query_video`, every query track answered with the whole gallery's tracks;
* detection recall / precision at IoU 0.5 and tracking IDF1 / MOTA / ID switches (``motmetrics``) of the
  tracker's boxes against ``gt.txt``, on all six cameras;
* a track belongs to the person most of its boxes match (IoU >= 0.5); a query track is right at rank 1 when
  its best gallery track is of its person; mAP over the whole ranking, a gallery track of no person (a false
  track) counting as wrong. The ground-truth path isolates what detection and tracking cost.

Usage::

    python -m training synth --layout video --out data/video_seed7 --ids 12 --seed 7
    python -m benchmarks.video --data data/video_seed7 --model artifacts/demo/model.onnx \\
        --json benchmarks/results/video.json
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import _machine
from benchmarks._video_run import load_clip_set, run_stages
from benchmarks._video_score import summarize
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

NAME = "video"
LIBRARIES = (*_machine.DEFAULT_LIBRARIES, "supervision", "trackers", "motmetrics", "scipy")


def run(args: Any) -> dict[str, Any]:
    """Run the stages on ``args.data`` with ``args.model`` and score them."""
    meta, cameras = load_clip_set(args.data)
    if not Path(args.model).is_file():
        raise UserError(f"--model {args.model}: no such file")
    parent = Path(args.gallery_dir) if args.gallery_dir is not None else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="video-bench-", dir=parent))  # fresh galleries: nothing is "ingested before"
    try:
        run_stages(cameras, Path(args.model), work, detector=args.detector, threads=args.threads)
        results = summarize(meta, cameras)
    finally:
        if args.keep_galleries:
            logger.info("galleries kept in %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return {**results, "model": Path(args.model).name, "detector": args.detector, "threads": args.threads,
            "data_dir": Path(args.data).name}


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else _machine.format_number(float(value), digits)


def report(r: dict[str, Any]) -> str:
    """The Markdown body: retrieval both ways, tracking and detection, per-camera rows, speed."""
    d = r["data"]
    found, truth = r["retrieval"]["detector"], r["retrieval"]["gt"]
    retrieval_rows = [
        {"tracks": f"{r['detector']} detector + ByteTrack", "rank-1": found["rank1"], "mAP": found["map"],
         "query tracks": found["queries"], "false query tracks": found["no_person"],
         "gallery tracks": found["gallery_tracks"]},
        {"tracks": "ground truth (gt.txt)", "rank-1": truth["rank1"], "mAP": truth["map"],
         "query tracks": truth["queries"], "false query tracks": truth["no_person"],
         "gallery tracks": truth["gallery_tracks"]},
    ]
    columns = ["camera", "modality", "gt_people", "gt_boxes", "tracks", "det_recall", "det_precision", "idf1",
               "mota", "id_switches", "crops", "ingest_fps", "realtime", "cores"]
    gap = None if r["track_rank1"] is None or r["track_rank1_gt"] is None else r["track_rank1"] - r["track_rank1_gt"]
    det = r["detection"]
    speeds = ", ".join(f"camera {c} {_f(v)}" for c, v in r["fps_per_camera"].items())
    lines = [
        (f"IR-track -> RGB-track retrieval from camera video: synthetic clip set `{r['data_dir']}` (seed "
         f"{d['seed']}, {d['ids']} people, 6 cameras x {d['frames']} frames of {d['width']}x{d['height']} at "
         f"{d['fps']} fps), model `{r['model']}`, {r['threads']} thread(s)."),
        "## Retrieval: infrared query tracks against the RGB cameras' gallery tracks",
        _machine.markdown_table(retrieval_rows),
        (f"Rank-1 with the product's tracks minus rank-1 with the ground-truth tracks: "
         f"{'–' if gap is None else _f(100 * gap, 2)} points (what detection and tracking cost). With "
         f"{found['queries']} and {truth['queries']} query tracks, one query more or less at rank 1 moves a rank-1 "
         f"figure by {_f(100 / max(1, found['queries']), 2)} and {_f(100 / max(1, truth['queries']), 2)} points."),
        "## Detection and tracking (all six cameras, IoU 0.5)",
        (f"IDF1 {_f(r['idf1'], 4)}, MOTA {_f(r['mota'], 4)}, {r['id_switches']} ID switches; detection recall "
         f"{_f(r['det_recall'], 4)}, precision {_f(r['det_precision'], 4)}. Recall of the boxes of people at least "
         f"half visible {_f(det.get('recall_visible'))}, of the others (occluded or cut by the frame edge, "
         f"{_f(100 * (det.get('occluded_share') or 0), 2)} % of the boxes) {_f(det.get('recall_occluded'))}."),
        _machine.markdown_table(r["cameras"], columns),
        "## Ingestion speed",
        (f"Frames per wall second of `ingest_video` per RGB camera with one thread (decoding, detection, tracking, "
         f"crop choice, embedding, indexing and model loading), against the clip's {_f(r['clip_fps'])} fps: "
         f"{speeds}; slowest {_f(r['realtime_min'])}x real time. CPU time over wall time of an ingestion (all "
         f"threads of the process): at most {_f(r['cores_max'])} cores."),
    ]
    return "\n\n".join(lines)


def plot(r: dict[str, Any]) -> Any:
    """Rank-1 / mAP by path, and ingestion frames/s per camera against the clip's frame rate."""
    plt = _machine.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    paths = ["detector + tracker", "ground truth"]
    for i, (key, label) in enumerate((("rank1", "rank-1"), ("map", "mAP"))):
        values = [r["retrieval"][p][key] or 0.0 for p in ("detector", "gt")]
        left.bar([x + 0.38 * i for x in range(2)], values, width=0.36, label=label)
    left.set_xticks([0.19, 1.19], paths)
    left.set_ylim(0, 1)
    left.set_title("IR track -> RGB track")
    left.legend()
    cams = list(r["fps_per_camera"])
    right.bar(cams, [r["fps_per_camera"][c] for c in cams], color="tab:green")
    right.axhline(r["clip_fps"], color="k", linestyle="--", label="clip frame rate")
    right.set_xlabel("RGB camera")
    right.set_ylabel("frames / s (one thread)")
    right.set_title("ingestion speed")
    right.legend()
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = _machine.benchmark_parser(NAME, __doc__)
    parser.add_argument("--data", required=True, type=Path,
                        help="a clip set of python -m training synth --layout video")
    parser.add_argument("--model", required=True, type=Path, help="exported model (model.onnx)")
    parser.add_argument("--json", type=Path, default=None,
                        help="results file (default benchmarks/results/video.json; the .md and .png go beside it)")
    parser.add_argument("--gallery-dir", type=Path, default=None,
                        help="where the benchmark's galleries are built (default: a temporary folder)")
    parser.add_argument("--keep-galleries", action="store_true", help="keep the galleries and MOT files")
    parser.add_argument("--detector", default="mog2", help="the ingestion's detector (default: its default)")
    parser.add_argument("--threads", type=int, default=1, help="threads for OpenCV and the embedder")
    _machine.add_output_args(parser, NAME, progress=False)
    args = parser.parse_args(argv)
    if args.json is not None:
        args.out, args.name = args.json.parent, args.json.stem
    return _machine.run_and_write(args, run, report, plot, libraries=LIBRARIES)


if __name__ == "__main__":
    raise SystemExit(main())
