"""``python -m serving demo-hint``: print a ready-to-paste curl that searches with one infrared crop.

``make demo`` runs this right before starting the server, so the person at the terminal has a query
whose right answer is known: an image from an infrared camera (3 or 6) of a SYSU-MM01 test identity,
whose RGB images are what ``make index`` put in the gallery.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from serving.indexing.crawl import IMAGE_SUFFIXES
from xmreid.errors import UserError

SYSU_IR_CAMERAS: tuple[int, ...] = (3, 6)


def pick_query(images: Path) -> tuple[Path, int, int]:
    """The first infrared crop (camera 3, then 6) of the lowest-numbered test identity that has one.

    Args:
        images: a SYSU-MM01 tree (``cam<N>/<pid>/<n>.jpg`` and ``exp/test_id.txt``).

    Returns:
        ``(image path, person id, camera)``.

    Raises:
        UserError: not a SYSU-MM01 tree, or no infrared image of a test identity.
    """
    id_file = images / "exp" / "test_id.txt"
    if not id_file.is_file():
        raise UserError(f"{images} is not a SYSU-MM01 tree: {id_file} is missing "
                        "(make one with `python -m training synth --layout sysu --out DIR`)")
    try:
        test_ids = sorted({int(t) for t in id_file.read_text().replace("\n", ",").split(",") if t.strip()})
    except ValueError:
        raise UserError(f"malformed id file {id_file} (expected comma-separated integers)") from None
    for pid in test_ids:
        for cam in SYSU_IR_CAMERAS:
            folder = images / f"cam{cam}" / f"{pid:04d}"
            if folder.is_dir():
                files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
                if files:
                    return files[0], pid, cam
    raise UserError(f"no infrared image (cam3/cam6) of a test identity under {images}")


def hint(images: Path, host: str, port: int, top_k: int = 5) -> str:
    """The text printed by the command: server URL, a curl command and the expected answer."""
    path, pid, cam = pick_query(images)
    # 0.0.0.0 / :: are listen addresses, not somewhere curl can connect to.
    client_host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    base = f"http://{client_host}:{port}"
    curl = f"curl -s -F image=@{shlex.quote(str(path.resolve()))} '{base}/search?top_k={top_k}'"
    return "\n".join([
        f"server: {base}  (API docs: {base}/docs, health: {base}/healthz)",
        f"query:  infrared crop of test person {pid} from camera {cam}",
        "paste this once the server says it is ready:",
        f"  {curl}",
        f"expected: results[0].person_label == {pid} (the same person, seen by an RGB camera)",
    ])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m serving demo-hint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path, help="the SYSU-MM01 tree the gallery was built from")
    parser.add_argument("--host", default="127.0.0.1", help="the server's host")
    parser.add_argument("--port", type=int, default=8000, help="the server's port")
    parser.add_argument("--top-k", type=int, default=5, help="results to ask for")
    args = parser.parse_args(argv)
    print(hint(args.images, args.host, args.port, args.top_k))
    return 0
