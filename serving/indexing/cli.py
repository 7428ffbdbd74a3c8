"""The command line of ``python -m serving index``: options in, one engine run, a summary out.

Its options and their meaning are a public contract (README, Makefile); the work is in
:mod:`serving.indexing.local` and, with ``--engine ray``, :mod:`serving.indexing.ray`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from index.errors import GalleryError
from index.tuning import check_target
from serving.embedders import BACKENDS
from serving.indexing.crawl import SPLITS
from serving.indexing.local import index_images
from xmreid.errors import UserError

DESCRIPTION = "``python -m serving index``: crawl RGB crops, embed them in batches, add them to a gallery."
ENGINES: tuple[str, ...] = ("local", "ray")


def parse_cameras(text: str | None) -> list[int] | None:
    """``"1,2,4,5"`` -> ``[1, 2, 4, 5]``; None or empty -> None (all cameras)."""
    if text is None or not text.strip():
        return None
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UserError(f"--cameras {text!r} must be comma-separated integers, e.g. 1,2,4,5") from None


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m serving index`` (both engines)."""
    parser = argparse.ArgumentParser(prog="python -m serving index", description=DESCRIPTION)
    parser.add_argument("--model", required=True, type=Path, help="exported model: model.onnx (or .plan, .pt)")
    parser.add_argument("--images", required=True, type=Path,
                        help="image root: a SYSU-MM01 tree, <camera>/.../*.jpg folders, or the root of --manifest "
                             "paths")
    parser.add_argument("--gallery", required=True, type=Path, help="gallery directory (created, or resumed)")
    crawl_group = parser.add_argument_group("what to index")
    crawl_group.add_argument("--cameras", default=None,
                             help="comma-separated cameras, e.g. 1,2,4,5 (default: SYSU-MM01 RGB cameras 1,2,4,5; "
                                  "otherwise all)")
    crawl_group.add_argument("--split", default="all", choices=SPLITS, help="SYSU-MM01 identities to index")
    crawl_group.add_argument("--manifest", type=Path, default=None,
                             help="CSV with header path,camera[,person_label,timestamp,track_id] instead of crawling")
    crawl_group.add_argument("--track-level", type=int, default=None,
                             help="in a <camera>/.../image tree, the folder this many levels below the camera "
                                  "folder names the crop's track (1: <camera>/<track>/image)")
    run_group = parser.add_argument_group("how")
    run_group.add_argument("--batch-size", type=int, default=32, help="images per embedder call")
    run_group.add_argument("--workers", type=int, default=2, help="decoding threads")
    run_group.add_argument("--backend", default="auto", choices=BACKENDS, help="embedder backend")
    run_group.add_argument("--kind", default="flat", help="index kind of a new gallery (see index.Gallery.create)")
    run_group.add_argument("--target-recall", type=float, default=None,
                           help="after indexing, tune an approximate --kind (ivf_flat, hnsw) to this held-out "
                                "recall@10 (python -m serving gallery tune; stored in the manifest)")
    run_group.add_argument("--save-every", type=int, default=20,
                           help="save the gallery every N batches (0: at the end)")
    run_group.add_argument("--engine", default="local", choices=ENGINES,
                           help="local: this process (decode threads, one embedder); ray: Ray Data decode tasks "
                                "and an actor pool of embedders (serving.indexing.ray)")
    run_group.add_argument("--milvus-uri", default=None,
                           help="keep a new gallery's vectors and metadata in Milvus at this uri (a Milvus Lite "
                                "file *.db, or http://host:19530) instead of FAISS; --gallery holds its manifest")
    run_group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_arguments(parser)
    return parser


TUNABLE_KINDS = ("ivf_flat", "hnsw")  # index.Gallery.tune: exact kinds have nothing to tune, ivf_pq is refused


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.target_recall is not None:  # refused before hours of indexing, not after
        try:
            check_target(args.target_recall)
        except GalleryError:
            raise UserError(f"--target-recall must be in (0, 1], got {args.target_recall}") from None
        if args.kind not in TUNABLE_KINDS:
            raise UserError(f"--target-recall needs an approximate --kind whose recall can be measured "
                            f"({', '.join(TUNABLE_KINDS)}); --kind {args.kind} has none to tune")
    gallery_options = {"backend": "milvus", "uri": args.milvus_uri} if args.milvus_uri else None
    common = dict(cameras=parse_cameras(args.cameras), split=args.split, manifest=args.manifest,
                  batch_size=args.batch_size, backend=args.backend, kind=args.kind, save_every=args.save_every,
                  show_progress=not args.no_progress, gallery_options=gallery_options, track_level=args.track_level)
    if args.engine == "ray":
        from serving.indexing.ray import index_images_ray  # Ray is optional: imported when asked for

        summary = index_images_ray(args.model, args.images, args.gallery, address=args.ray_address,
                                   num_cpus=args.ray_num_cpus, embedders=args.ray_embedders,
                                   embedder_cpus=args.ray_embedder_cpus, **common)
    else:
        summary = index_images(args.model, args.images, args.gallery, workers=args.workers, **common)
    print(summary.format())
    if args.target_recall is not None:
        from serving.indexing.gallery_cli import describe_tuning, tune_gallery

        try:
            record = tune_gallery(args.gallery, args.target_recall)
        except GalleryError as exc:
            raise UserError(f"indexed and saved {args.gallery}, but could not tune it: {exc}") from None
        print(f"tuned: {describe_tuning(record)}")
    return 0


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--ray-*`` options of ``python -m serving index`` (used with ``--engine ray``)."""
    group = parser.add_argument_group("Ray engine (--engine ray)")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (auto, ray://head:10001); default: start a local Ray for this run")
    group.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    group.add_argument("--ray-embedders", type=int, default=None,
                       help="embedder actors (default: one per GPU in the cluster, else one per 4 CPUs)")
    group.add_argument("--ray-embedder-cpus", type=int, default=1,
                       help="CPUs / ONNX Runtime threads per CPU embedder actor")
