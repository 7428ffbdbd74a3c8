"""Hostile uploads and open reads, measured side by side: the server before its access and upload guards, and now.

Both servers are the real ``python -m serving serve`` — one started from ``--before-checkout`` (a git worktree of
the earlier commit, run with its own ``PYTHONPATH``), one from this checkout — with the same model, gallery copy,
image root and default settings, each with a ``TMPDIR`` of its own so its temporary files can be counted. One
server runs at a time; the memory attacks get a freshly started server each, so one attack's leftovers do not
count against the next. The same client code (:mod:`benchmarks._attacks_runs`) attacks both:

1. **open reads**: 60 ``POST /search`` (top 100) with no credential — statuses and distinct gallery ids seen; for
   this checkout also with ``--api-keys-file`` configured; a ``Host: rebind.attacker.example`` request; a
   ``POST /gallery`` with no key (answered from the headers, or only after the body?).
2. **thumbnail race**: a process swaps the folder of a gallery item for a link to a folder outside the image
   root and back, in a tight loop, while 3,000 thumbnail requests run: how many served the outside file, 404, 500.
3. **1-byte segments**: 4 connections each sending a ~1.9 MB multipart ``/search`` body one byte per ``send``
   (``TCP_NODELAY``): the server's ``VmRSS``/``VmHWM`` growth while sending and 5 s after the connections close.
4. **decompression bomb**: ~25 KB ``/search/batch`` bodies of eight 5000x5000 one-colour PNGs while a client
   searches back to back: the searches' latency during the bombs against alone.
5. **maximal uploads**: 4, then 8, concurrent ``/search/batch`` of ``max_images_per_request`` parts of
   ``max_upload_bytes`` random bytes: statuses, peak memory growth, peak temporary-file bytes.
6. **header flood**: one connection sending header lines for up to 10 s (bytes taken before the server answered
   or closed); four flooding processes at once: ``/healthz`` latency during the flood against idle.
7. **drip-fed body**: one byte per second of a 1 MiB ``/search`` body: when the server ends it (cap 90 s).

Counts and bytes are the findings; timings come from whatever machine ran it and are labelled with it.

Usage::

    git worktree add --detach ../before <commit>
    python -m benchmarks.attacks --before-checkout ../before --model model.onnx --gallery gallery \\
        --images data/synthetic_sysu --json benchmarks/results/attacks.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _attacks_report, _machine
from benchmarks import _attacks_runs as runs
from benchmarks._server import ServerProcess, load_queries
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

GALLERY_CAMERAS = ("cam1", "cam2", "cam4", "cam5")
SEARCH_KEY = "attacks-benchmark-search-key"  # a throwaway key for the keyed server (hashed into its keys file)
TARGETS = {
    "open_reads": "with keys configured: every search 401, 0 gallery ids",
    "host_rebind": "400 host_not_allowed",
    "gallery_without_key": "refused (403) from the headers, before the body is read; no item added",
    "thumbnail_race": "0 answers from outside the image root; 0 × 500",
    "one_byte_segments": "RSS growth at most the bytes in flight (the bodies), none kept after close",
    "bomb_stall": "a concurrent /search delayed by < 200 ms",
    "maximal_uploads": "RSS and temporary-file growth at most the upload budget (512 MiB by default); "
                       "some 503 uploads_busy",
    "header_flood": "431 after at most the head cap (64 KiB) is read; /healthz unaffected",
    "drip_feed": "ended (408) after body_timeout_s + bytes / min_body_rate (≈ 30 s)",
}


class Bench:
    """The shared inputs of every server run: model, gallery, image-root copy, work folder, sizes."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        queries = load_queries(args.images, limit=args.queries)
        self.queries = [q.data for q in queries]
        self.crop = self.queries[0]
        self.image_root = work / "images"
        for cam in GALLERY_CAMERAS:
            if (args.images / cam).is_dir():
                _link_tree(args.images / cam, self.image_root / cam)
        self.outside = work / "outside"
        self.outside.mkdir()
        self.keys_file = work / "keys.txt"
        self.keys_file.write_text(f"attacks:search:{hashlib.sha256(SEARCH_KEY.encode()).hexdigest()}\n")
        self.runs = 0

    @contextlib.contextmanager
    def server(self, checkout: Path, extra: tuple[str, ...] = ()) -> Iterator[tuple[ServerProcess, Path]]:
        """A server from ``checkout`` on a fresh gallery copy with its own ``TMPDIR``; yields it and that folder."""
        self.runs += 1
        run_dir = self.work / f"run{self.runs}"
        gallery = run_dir / "gallery"
        shutil.copytree(self.args.gallery, gallery)
        tmpdir = run_dir / "tmp"
        tmpdir.mkdir()
        env = {"PYTHONPATH": str(checkout), "TMPDIR": str(tmpdir), "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", "2")}
        args = ("--image-root", str(self.image_root), *extra)
        with ServerProcess(self.args.model, gallery, args, env=env, cwd=checkout) as server:
            yield server, tmpdir
        shutil.rmtree(run_dir, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` as hard links where the file system allows (the files are only read)."""
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except (OSError, shutil.Error):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


def race_target(bench: Bench, server: ServerProcess) -> tuple[int, Path]:
    """The top match of the first query (its id) and its folder under the image root, with an outside twin."""
    response = httpx.post(f"{server.url}/search", params={"top_k": 1},
                          files={"image": ("q.jpg", bench.crop, "image/jpeg")}, timeout=60.0)
    response.raise_for_status()
    hit = response.json()["results"][0]
    folder = bench.image_root / Path(hit["source"]).parent
    twin = bench.outside / folder.relative_to(bench.image_root)
    if not twin.is_dir():
        twin.mkdir(parents=True)
        for path in folder.iterdir():
            runs.outside_image(twin / path.name)
    return int(hit["gallery_id"]), folder


def attack_checkout(bench: Bench, checkout: Path, label: str, only: set[str]) -> dict[str, Any]:
    """Every attack against servers started from ``checkout``; the results by attack name."""
    args, out = bench.args, {}

    def wanted(name: str) -> bool:
        return not only or name in only

    def log(name: str) -> None:
        logger.warning("%s: %s", label, name)

    if any(wanted(n) for n in ("open_reads", "host_rebind", "gallery_without_key", "thumbnail_race", "bomb_stall",
                               "header_flood", "drip_feed")):
        with bench.server(checkout) as (server, _):
            url = server.url
            if wanted("open_reads"):
                log("open reads")
                out["open_reads"] = {"default": runs.open_reads(url, bench.queries)}
            if wanted("host_rebind"):
                out["host_rebind"] = runs.host_rebind(url)
            if wanted("thumbnail_race"):
                log("thumbnail race")
                item, folder = race_target(bench, server)
                out["thumbnail_race"] = runs.thumbnail_race(url, item, folder, bench.outside /
                                                            folder.relative_to(bench.image_root),
                                                            requests=args.race_requests)
            if wanted("bomb_stall"):
                log("decompression bomb")
                out["bomb_stall"] = runs.bomb_stall(url, bench.crop, idle_s=args.idle_s, bombs=args.bombs)
            if wanted("header_flood"):
                log("header flood")
                out["header_flood"] = {"one": runs.header_flood(url, cap_s=args.flood_s),
                                       "four": runs.flood_latency(url, floods=4, seconds=args.flood_s)}
            if wanted("drip_feed"):
                log("drip-fed body")
                out["drip_feed"] = runs.drip_feed(url, cap_s=args.drip_cap_s)
            if wanted("gallery_without_key"):  # last: on the earlier server it adds an item
                log("gallery change without a key")
                out["gallery_without_key"] = runs.gallery_without_key(url, bench.crop)
    if wanted("open_reads") and label == "after":
        with bench.server(checkout, ("--api-keys-file", str(bench.keys_file))) as (server, _):
            log("open reads with keys configured")
            out.setdefault("open_reads", {})["with_keys_file"] = runs.open_reads(server.url, bench.queries)
    if wanted("one_byte_segments"):
        with bench.server(checkout) as (server, _):
            log("1-byte segments")
            out["one_byte_segments"] = runs.one_byte_segments(server.url, server.pid or 0,
                                                              body_bytes=args.segment_bytes, cap_s=args.segment_cap_s)
    if wanted("maximal_uploads"):
        out["maximal_uploads"] = {}
        for concurrent in args.upload_concurrency:
            with bench.server(checkout) as (server, tmpdir):
                log(f"{concurrent} maximal uploads")
                out["maximal_uploads"][str(concurrent)] = runs.maximal_uploads(
                    server.url, server.pid or 0, tmpdir, concurrent=concurrent, files=args.upload_files,
                    file_bytes=args.upload_file_bytes)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both checkouts, one server at a time; the results by attack, before and after, with the targets."""
    for path, what in ((args.model, "model file"), (args.gallery, "gallery directory"),
                       (args.images, "image folder")):
        if not path.exists():
            raise UserError(f"{what} not found: {path}")
    checkouts = [("after", _machine.REPO)]
    if args.before_checkout is not None:
        if not (args.before_checkout / "serving").is_dir():
            raise UserError(f"--before-checkout {args.before_checkout} has no serving package: give a git worktree "
                            "of the earlier commit")
        checkouts.insert(0, ("before", args.before_checkout.resolve()))
    only = set(args.only or ())
    with tempfile.TemporaryDirectory(prefix="attacks-") as tmp:
        bench = Bench(args, Path(tmp))
        measured = {label: attack_checkout(bench, checkout, label, only) for label, checkout in checkouts}
    names = [n for n in TARGETS if any(n in m for m in measured.values())]
    return {"model": args.model.name, "gallery_items": _gallery_items(args.gallery), "model_note": args.model_note,
            "before_commit": _commit(args.before_checkout), "after_commit": _commit(_machine.REPO),
            "attacks": {n: {"target": TARGETS[n], **{label: m.get(n) for label, m in measured.items()}}
                        for n in names}}


def _gallery_items(gallery: Path) -> int | None:
    import json

    try:
        return int(json.loads((gallery / "manifest.json").read_text()).get("count"))
    except (OSError, ValueError, TypeError):
        return None


def _commit(checkout: Path | None) -> str | None:
    import subprocess

    if checkout is None:
        return None
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _machine.benchmark_parser("attacks", __doc__)
    p.add_argument("--before-checkout", type=Path, default=None,
                   help="a git worktree of the commit to compare with (omitted: this checkout only)")
    p.add_argument("--model", type=Path, required=True, help="exported model (.onnx)")
    p.add_argument("--gallery", type=Path, required=True, help="gallery directory (copied for every server)")
    p.add_argument("--images", type=Path, required=True, help="SYSU-MM01-layout image root the gallery was "
                   "indexed from (queries: cam3/cam6; the thumbnail root: a copy of cam1/2/4/5)")
    p.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/attacks.json; "
                   "the Markdown report is written beside it)")
    p.add_argument("--model-note", default="", help="a sentence about the model for the report")
    p.add_argument("--only", action="append", choices=sorted(TARGETS), help="run only these attacks (repeatable)")
    p.add_argument("--queries", type=int, default=60, help="searches of the open-reads attack")
    p.add_argument("--race-requests", type=int, default=3000)
    p.add_argument("--segment-bytes", type=int, default=1_900_000, help="body size per 1-byte-segment connection")
    p.add_argument("--segment-cap-s", type=float, default=90.0, help="stop sending 1-byte segments after this")
    p.add_argument("--idle-s", type=float, default=5.0, help="searches timed alone before the bombs")
    p.add_argument("--bombs", type=int, default=3)
    p.add_argument("--upload-concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    p.add_argument("--upload-files", type=int, default=32, help="parts per maximal /search/batch "
                   "(the default max_images_per_request)")
    p.add_argument("--upload-file-bytes", type=int, default=10 * runs.MIB, help="bytes per part "
                   "(the default max_upload_bytes)")
    p.add_argument("--flood-s", type=float, default=10.0)
    p.add_argument("--drip-cap-s", type=float, default=90.0)
    args = p.parse_args(argv)
    json_path = args.json or _machine.RESULTS_DIR / "attacks.json"
    args.out, args.name = json_path.parent, json_path.stem
    return args


def portable_command(json_path: Path) -> None:
    """Record the command in ``json_path`` as the Markdown shows it: no folder of the machine it ran on (the
    model, gallery and before-checkout are temporary copies whose paths mean nothing elsewhere)."""
    import json

    data = json.loads(json_path.read_text())
    data["machine"]["command"] = _machine.shown_command(data["machine"]["command"])
    json_path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    status = _machine.run_and_write(args, run, _attacks_report.report, lambda results: None)
    if status == 0:
        portable_command(args.out / f"{args.name}.json")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
