"""The command lines ``python -m serving ingest`` and ``python -m serving query``.

Their options and their meaning are a public contract (README, Makefile, docs/video.md); the work is in
:func:`serving.indexing.video.ingest.ingest_video` and :func:`serving.indexing.video.query.query_video`, the
contact sheet in :mod:`serving.indexing.video.sheet`. ``serving/__main__.py`` reaches them through
:mod:`~serving.indexing.video.ingest_cli` and :mod:`~serving.indexing.video.query_cli`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from serving.embedders import BACKENDS
from serving.indexing.cli import parse_cameras
from serving.indexing.video.crops import DEFAULT_K
from serving.indexing.video.detect import SUBTRACTORS
from serving.indexing.video.ingest import ingest_video, summary_line
from serving.indexing.video.query import query_video
from serving.indexing.video.sheet import write_sheet
from serving.runtime.ranking import FUSIONS
from xmreid.atomic import atomic_write_bytes
from xmreid.errors import EXIT_DAMAGED, UserError

INGEST = ("detect and track the people of camera video (a file, a folder of videos, or a stream URL), "
          "embed a few crops of each track and add them to a gallery")
QUERY = ("detect and track the people of a clip and answer each track with the gallery's ranked tracks "
         "(JSON, and an HTML or PNG contact sheet)")


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``ingest`` and ``query`` share: what finds and tracks people, and how fast."""
    group = parser.add_argument_group("detection and tracking")
    group.add_argument("--detector", default="mog2",
                       help=f"{' or '.join(SUBTRACTORS)} (background subtraction, no weights; default mog2), or a "
                            f"person detector model.onnx in the YOLO export layout (output [1, 4+C, N], class 0)")
    group.add_argument("--tracks-from", type=Path, default=None,
                       help="use the tracks of this MOTChallenge file (frame,id,left,top,width,height,...) instead of "
                            "detecting and tracking (to measure what detection and tracking cost)")
    group.add_argument("--mot-out", type=Path, default=None,
                       help="write the tracked boxes in MOT format (frame,id,left,top,width,height,conf,-1,-1,-1); "
                            "for a folder of videos, a folder of <video stem>.txt")
    group.add_argument("--crops-per-track", type=int, default=DEFAULT_K,
                       help="crops chosen per track (large, sharp, whole, spread over its life)")
    run = parser.add_argument_group("how")
    run.add_argument("--threads", type=int, default=1, help="threads for OpenCV and the embedder")
    run.add_argument("--backend", default="auto", choices=BACKENDS, help="embedder backend")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (also off when not a terminal)")


def build_ingest_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m serving ingest``."""
    parser = argparse.ArgumentParser(prog="python -m serving ingest", description=INGEST)
    parser.add_argument("--model", required=True, type=Path, help="exported model: model.onnx (or .plan, .pt)")
    parser.add_argument("--gallery", required=True, type=Path, help="gallery directory (created, or added to)")
    parser.add_argument("--video", required=True,
                        help="a video file, a folder of videos (each ingested once: a rerun skips those done), "
                             "or a stream URL (rtsp://..., reopened with backoff when it drops)")
    parser.add_argument("--camera", required=True, help="the camera the video comes from (an integer)")
    parser.add_argument("--start-time", default=None,
                        help="wall time of the first frame: Unix seconds or ISO-8601 (default: the file's "
                             "modification time; a stream: now)")
    parser.add_argument("--report", type=Path, default=None, help="write the run's report here as JSON")
    add_pipeline_arguments(parser)
    index = parser.add_argument_group("gallery")
    index.add_argument("--batch-size", type=int, default=32, help="crops per embedder call")
    index.add_argument("--save-every", type=int, default=20,
                       help="save the gallery every N batches (always at the end of each video)")
    index.add_argument("--kind", default="flat", help="index kind of a new gallery (see index.Gallery.create)")
    return parser


def show_progress(args: argparse.Namespace) -> bool:
    """A bar only when asked for and drawn on a terminal."""
    return not args.no_progress and sys.stderr.isatty()


def ingest_main(argv: list[str] | None = None) -> int:
    """``python -m serving ingest``; returns the exit status."""
    args = build_ingest_parser().parse_args(argv)
    report = ingest_video(args.video, args.camera, model=args.model, gallery=args.gallery, detector=args.detector,
                          tracks_from=args.tracks_from, start_time=args.start_time, mot_out=args.mot_out,
                          threads=args.threads, k=args.crops_per_track, batch_size=args.batch_size,
                          save_every=args.save_every, backend=args.backend, kind=args.kind,
                          show_progress=show_progress(args))
    for entry in report["videos"]:
        print(summary_line(entry))
    if len(report["videos"]) != 1:
        print(f"{len(report['videos'])} video(s): {report['frames']} frames, {report['tracks']} tracks, "
              f"{report['crops']} crops indexed; gallery {report['gallery']} has {report['gallery_size']} items")
    if args.report is not None:
        try:
            atomic_write_bytes(args.report, (json.dumps(report, indent=2) + "\n").encode())
        except OSError as exc:
            raise UserError(f"cannot write --report {args.report}: {exc.strerror or exc}") from None
    if report["failed"]:  # the others were ingested; the unreadable ones are named above
        print(f"error: {len(report['failed'])} video(s) could not be read", file=sys.stderr)
        return EXIT_DAMAGED
    return 0


def build_query_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m serving query``."""
    parser = argparse.ArgumentParser(prog="python -m serving query", description=QUERY)
    parser.add_argument("--video", required=True, help="the query clip (a file or a stream URL)")
    parser.add_argument("--camera", required=True, help="the camera that filmed it (an integer)")
    parser.add_argument("--gallery", required=True, type=Path, help="gallery directory (read only)")
    parser.add_argument("--model", required=True, type=Path, help="the model the gallery was built with")
    parser.add_argument("--out", required=True, type=Path, help="write the ranked tracks here as JSON")
    parser.add_argument("--top-k", type=int, default=10, help="gallery tracks per query track")
    parser.add_argument("--sheet", type=Path, action="append", default=[],
                        help="also write a contact sheet: sheet.html and/or sheet.png (repeat for both)")
    parser.add_argument("--cameras", default=None, help="only gallery cameras, e.g. 1,2,4,5 (default: all)")
    parser.add_argument("--fusion", default="mean", choices=FUSIONS,
                        help="how a track's crops become one query descriptor (as POST /search/track)")
    add_pipeline_arguments(parser)
    return parser


def format_answer(result: dict, shown: int = 5) -> str:
    """The answer for a terminal: per query track, its best gallery tracks."""
    head = (f"{len(result['tracks'])} track(s) in {Path(result['video']).name} (camera {result['camera']}, "
            f"{result['frames']} frames)")
    lines = [head]
    for track in result["tracks"]:
        lines.append(f"query track {track['track_id']} frames {track['frames'][0]}-{track['frames'][1]} "
                     f"({track['crops']} crops):")
        for hit in track["results"][:shown]:
            lines.append(f"  #{hit['rank']} camera {hit['camera']} track {hit['track_id']} score {hit['score']:.3f}")
    if not result["tracks"]:
        lines.append("no people found in the clip")
    return "\n".join(lines)


def query_main(argv: list[str] | None = None) -> int:
    """``python -m serving query``; returns the exit status."""
    args = build_query_parser().parse_args(argv)
    result = query_video(args.video, args.camera, model=args.model, gallery=args.gallery, detector=args.detector,
                         tracks_from=args.tracks_from, top_k=args.top_k, mot_out=args.mot_out,
                         k=args.crops_per_track, cameras=parse_cameras(args.cameras), fusion=args.fusion,
                         threads=args.threads, backend=args.backend, show_progress=show_progress(args))
    try:
        atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    except OSError as exc:
        raise UserError(f"cannot write --out {args.out}: {exc.strerror or exc}") from None
    for sheet in args.sheet:
        write_sheet(result, sheet)
    print(format_answer(result))
    return 0
