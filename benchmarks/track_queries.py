"""What a track query and re-ranking buy: single crop vs tracks of 3, 5, 10 infrared crops, with and without
k-reciprocal re-ranking, on the synthetic SYSU-MM01 test split with a trained model, side by side in one run.

Protocol (SYSU-MM01 all-search, as ``training.protocols`` evaluates it, with the gallery a server would hold):

* gallery: every RGB crop (cameras 1, 2, 4, 5) of the test identities, indexed as ``python -m serving index
  --split test`` would (exact ``flat`` index);
* queries: per test identity and IR camera (3, 6), a *track*: ``L`` consecutive crops of that person in that
  camera, the window drawn at random in each of ``--draws`` draws (``L = 1`` is the single-crop query);
  a camera-3 query is not matched against camera 2 (the cameras share a location), which is the server's
  camera filter ``camera=1&camera=4&camera=5``;
* metrics: ``training.evaluation.eval_sysu`` (rank-1 on the ranking reduced to unique identities, which is
  what ``group_by=person`` shows an operator; mAP and mINP on the full ranking), mean and standard deviation
  over the draws;
* rankings are computed with the server's own functions (``serving.runtime.ranking.fuse``,
  ``index.Gallery.search``, ``index.reranking.rerank_neighbourhood`` on the top ``--rerank-n``), and a
  sample of the same queries is sent to a real ``python -m serving serve`` to time ``/search`` (one crop)
  and ``/search/track`` (several) and to check that its top-10 equals the offline ranking.

Usage::

    python -m benchmarks.track_queries --model artifacts/model.onnx --data-root data/synthetic_sysu
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import _machine
from benchmarks._server import ServerProcess

logger = logging.getLogger(__name__)

QUERY_CAMERAS = (3, 6)
GALLERY_CAMERAS = (1, 2, 4, 5)
#: SYSU-MM01: a camera-3 query is not matched against camera 2 (same location).
CAMERA_FILTER = {3: [1, 4, 5], 6: None}


def _test_ids(root: Path) -> list[int]:
    text = (root / "exp" / "test_id.txt").read_text()
    return sorted(int(t) for t in text.replace("\n", ",").split(",") if t.strip())


def _images(root: Path, pid: int, cam: int) -> list[Path]:
    return sorted((root / f"cam{cam}" / f"{pid:04d}").glob("*.jpg"))


def embed_paths(embedder: Any, paths: list[Path], batch: int = 32) -> np.ndarray:
    """Descriptors of ``paths``, decoded exactly as the server decodes uploads."""
    from serving.core.imageio import decode_image

    out = []
    for start in range(0, len(paths), batch):
        pixels = [decode_image(p.read_bytes(), embedder.height, embedder.width) for p in paths[start:start + batch]]
        out.append(embedder.embed(np.stack(pixels)))
    return np.concatenate(out).astype(np.float32)


def ranking_row(gallery: Any, query: np.ndarray, cameras: list[int] | None, n_gallery: int, rerank_n: int | None,
                column: dict[int, int]) -> np.ndarray:
    """One row of a distance matrix whose order is the server's ranking (smaller = ranked earlier).

    Without re-ranking: the exact cosine ranking of the (filtered) gallery. With it: the top ``rerank_n``
    re-ranked as ``rerank=true`` does, followed by the rest in cosine order. Items the camera filter drops
    get distance ``inf`` (eval_sysu drops them for the camera-3 rule anyway).
    """
    from index.reranking import rerank_neighbourhood

    _, ids = gallery.search(query[None], n_gallery, cameras=cameras)
    ranked = ids[0][ids[0] >= 0]
    if rerank_n:
        head = ranked[:rerank_n]
        order = np.argsort(rerank_neighbourhood(query, gallery.vectors(head)), kind="stable")
        ranked = np.concatenate([head[order], ranked[rerank_n:]])
    row = np.full(n_gallery, np.inf, dtype=np.float64)
    row[[column[int(i)] for i in ranked]] = np.arange(len(ranked), dtype=np.float64)
    return row


def draw_tracks(ids: list[int], lengths: list[int], images: dict[tuple[int, int], list[Path]], draws: int,
                seed: int) -> list[dict[int, list[tuple[int, int, list[int]]]]]:
    """Per draw and track length, ``(pid, camera, crop indices)`` for every test identity and IR camera."""
    out = []
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        per_length = {}
        for length in lengths:
            rows = []
            for pid in ids:
                for cam in QUERY_CAMERAS:
                    n = len(images[pid, cam])
                    if n < length:
                        continue
                    start = int(rng.integers(0, n - length + 1))
                    rows.append((pid, cam, list(range(start, start + length))))
            per_length[length] = rows
        out.append(per_length)
    return out


def measure_accuracy(gallery: Any, g_meta: list[dict], q_desc: dict[tuple[int, int], np.ndarray],
                     tracks: list[dict[int, list]], configs: list[dict], rerank_n: int) -> dict[str, dict]:
    """R1 / mAP / mINP of every config, per draw, and their mean and standard deviation."""
    from serving.runtime.ranking import fuse
    from training.evaluation import eval_sysu

    column = {int(m["id"]): j for j, m in enumerate(g_meta)}
    g_pids = np.array([m["person_label"] for m in g_meta])
    g_cams = np.array([m["camera"] for m in g_meta])
    out = {}
    for cfg in configs:
        per_draw = []
        started = time.perf_counter()
        for draw in tracks:
            rows, q_pids, q_cams = [], [], []
            for pid, cam, crops in draw[cfg["crops"]]:
                query = fuse(q_desc[pid, cam][crops], cfg["fusion"])
                rows.append(ranking_row(gallery, query, CAMERA_FILTER[cam], len(g_meta),
                                        rerank_n if cfg["rerank"] else None, column))
                q_pids.append(pid)
                q_cams.append(cam)
            cmc, m_ap, m_inp = eval_sysu(np.stack(rows), np.array(q_pids), g_pids, np.array(q_cams), g_cams)
            per_draw.append({"r1": float(cmc[0]), "r5": float(cmc[4]), "map": float(m_ap), "minp": float(m_inp)})
        summary = {f"{key}_{stat}": (statistics.fmean if stat == "mean" else statistics.pstdev)(
            [d[key] for d in per_draw]) for key in ("r1", "r5", "map", "minp") for stat in ("mean", "std")}
        out[cfg["name"]] = {**summary, "draws": per_draw, "queries_per_draw": len(tracks[0][cfg["crops"]]),
                            "offline_seconds": time.perf_counter() - started}
        logger.info("%s: R1 %.3f mAP %.3f", cfg["name"], summary["r1_mean"], summary["map_mean"])
    return out


def measure_latency(server: ServerProcess, images: dict[tuple[int, int], list[Path]], tracks: list[dict],
                    configs: list[dict], requests: int, rerank_n: int, gallery: Any, g_meta: list[dict],
                    q_desc: dict, warmup: int = 3) -> dict[str, dict]:
    """Client-side latency of ``/search`` (one crop) or ``/search/track`` for each config, sequential requests,
    and whether each answer's top-10 equals the offline ranking of the same query."""
    from serving.runtime.ranking import fuse

    column = {int(m["id"]): j for j, m in enumerate(g_meta)}
    ids_by_column = np.array([int(m["id"]) for m in g_meta])
    out = {}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for cfg in configs:
            sample = [t for draw in tracks for t in draw[cfg["crops"]]][:requests + warmup]
            walls, totals, reranks, agree = [], [], [], 0
            for i, (pid, cam, crops) in enumerate(sample):
                params: dict[str, Any] = {"top_k": 10}
                if CAMERA_FILTER[cam]:
                    params["camera"] = CAMERA_FILTER[cam]
                if cfg["rerank"]:
                    params.update(rerank="true", rerank_n=rerank_n)
                paths = [images[pid, cam][c] for c in crops]
                if len(paths) == 1:
                    path, files = "/search", {"image": (paths[0].name, paths[0].read_bytes(), "image/jpeg")}
                else:
                    path = "/search/track"
                    params["fusion"] = cfg["fusion"]
                    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
                started = time.perf_counter()
                response = client.post(path, params=params, files=files)
                wall = time.perf_counter() - started
                response.raise_for_status()
                if i < warmup:
                    continue
                body = response.json()
                walls.append(wall)
                totals.append(body["timings_ms"]["total"] / 1e3)
                if cfg["rerank"]:
                    reranks.append(body["timings_ms"]["rerank"] / 1e3)
                row = ranking_row(gallery, fuse(q_desc[pid, cam][crops], cfg["fusion"]), CAMERA_FILTER[cam],
                                  len(g_meta), rerank_n if cfg["rerank"] else None, column)
                offline = ids_by_column[np.argsort(row, kind="stable")[:10]].tolist()
                agree += [h["gallery_id"] for h in body["results"]] == offline
            out[cfg["name"]] = {"endpoint": "/search" if cfg["crops"] == 1 else "/search/track",
                                "client": _machine.summarize(walls), "server_total": _machine.summarize(totals),
                                "server_rerank": _machine.summarize(reranks) if reranks else None,
                                "top10_equals_offline": f"{agree}/{len(walls)}"}
            logger.info("%s: p50 %.1f ms", cfg["name"], out[cfg["name"]]["client"]["p50_ms"])
    return out


def build_configs(lengths: list[int], fusions: list[str]) -> list[dict]:
    configs = []
    for fusion in fusions:
        for length in lengths:
            if length == 1 and fusion != fusions[0]:
                continue  # one crop: every fusion is the crop itself
            for rerank in (False, True):
                name = f"{'single crop' if length == 1 else f'track of {length} ({fusion})'}" \
                       f"{' + rerank' if rerank else ''}"
                configs.append({"name": name, "crops": length, "fusion": fusion, "rerank": rerank})
    return configs


def _markdown(configs: list[dict], accuracy: dict, latency: dict, args: argparse.Namespace, facts: dict) -> str:
    rows = []
    for cfg in configs:
        a, lat = accuracy[cfg["name"]], latency.get(cfg["name"], {})
        rows.append({
            "query": cfg["name"], "crops": cfg["crops"], "fusion": cfg["fusion"] if cfg["crops"] > 1 else "",
            "rerank": "yes" if cfg["rerank"] else "no",
            "R1 %": f"{100 * a['r1_mean']:.1f} ± {100 * a['r1_std']:.1f}",
            "mAP %": f"{100 * a['map_mean']:.1f} ± {100 * a['map_std']:.1f}",
            "mINP %": f"{100 * a['minp_mean']:.1f} ± {100 * a['minp_std']:.1f}",
            "endpoint": lat.get("endpoint", ""),
            "p50 ms (client)": lat.get("client", {}).get("p50_ms"),
            "p50 ms (server total)": lat.get("server_total", {}).get("p50_ms"),
            "p50 ms (rerank)": (lat.get("server_rerank") or {}).get("p50_ms"),
            "top-10 = offline": lat.get("top10_equals_offline", ""),
        })
    return "\n".join([
        ("Single-crop vs track queries (consecutive crops of one person from one IR camera), with and without "
        "k-reciprocal re-ranking of the top-N neighbourhood, on the synthetic SYSU-MM01 test split "
        f"({facts['test_ids']} identities; gallery: {facts['gallery']} RGB crops of cameras 1, 2, 4, 5; "
        f"{facts['queries_per_draw']} track queries per draw, one per identity and IR camera). "
        f"Mean ± std over {args.draws} draws of the track windows (seed {args.seed}); re-ranking N = {args.rerank_n}, "
        "k1 = 20, k2 = 6, λ = 0.3."),
        "",
        ("R1 is eval_sysu's rank-1 on the ranking reduced to unique identities (what `group_by=person` shows); "
        "mAP and mINP are on the full ranking. Latency: sequential requests to `python -m serving serve` "
        f"({args.requests} per row after 3 warm-up requests), top_k=10; `top-10 = offline` counts answers whose "
        "top 10 ids equal the offline ranking of the same query."),
        "",
        _machine.markdown_table(rows),
        "",
        (f"Model: `{facts['model']}` (fingerprint {facts['fingerprint'][:12]}, {facts['backend']}); data: "
        f"`{facts['data_root']}`."),
    ])


def _figure(configs: list[dict], accuracy: dict, latency: dict) -> Any:
    """R1 and mAP per config (error bars: std over draws), and the client p50 latency."""
    plt = _machine.pyplot()
    fig, (ax, lat_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [c["name"] for c in configs]
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "r1", "R1"), (0.2, "map", "mAP")):
        ax.bar(x + offset, [100 * accuracy[n][f"{key}_mean"] for n in names], 0.4,
               yerr=[100 * accuracy[n][f"{key}_std"] for n in names], label=label, capsize=2)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title("accuracy (mean ± std over draws)")
    ax.legend()
    lat_ax.bar(x, [latency.get(n, {}).get("client", {}).get("p50_ms", 0.0) for n in names], 0.6)
    lat_ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    lat_ax.set_ylabel("ms")
    lat_ax.set_title("request latency p50 (client)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = _machine.benchmark_parser("track_queries", __doc__)
    parser.add_argument("--model", required=True, type=Path, help="exported model (model.onnx)")
    parser.add_argument("--data-root", required=True, type=Path, help="a SYSU-MM01-layout tree (synthetic or real)")
    parser.add_argument("--lengths", default="1,3,5,10", help="track lengths (crops per query)")
    parser.add_argument("--fusions", default="mean,max", help="fusions to compare (the first is the default)")
    parser.add_argument("--draws", type=int, default=10, help="random draws of the track windows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws")
    parser.add_argument("--rerank-n", type=int, default=100, help="neighbourhood re-ranked (the server's rerank_n)")
    parser.add_argument("--requests", type=int, default=20, help="timed HTTP requests per row (0: no server)")
    _machine.add_output_args(parser, "track_queries", progress=False)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from index import Gallery
    from serving.embedders import load_embedder
    from serving.runtime.ranking import FUSIONS
    from training.data.synthetic import track_id

    lengths = sorted({int(t) for t in args.lengths.split(",") if t.strip()})
    fusions = [f.strip() for f in args.fusions.split(",") if f.strip()]
    unknown = set(fusions) - set(FUSIONS)
    if unknown or not lengths or min(lengths) < 1:
        parser.error(f"--lengths must be positive integers and --fusions among {', '.join(FUSIONS)}")
    machine = _machine.describe_machine()
    embedder = load_embedder(args.model)
    ids = _test_ids(args.data_root)
    images = {(pid, cam): _images(args.data_root, pid, cam)
              for pid in ids for cam in (*QUERY_CAMERAS, *GALLERY_CAMERAS)}
    g_paths = [(pid, cam, n, p) for pid in ids for cam in GALLERY_CAMERAS for n, p in enumerate(images[pid, cam])]
    started = time.perf_counter()
    g_desc = embed_paths(embedder, [p for *_, p in g_paths])
    q_desc = {(pid, cam): embed_paths(embedder, images[pid, cam]) for pid in ids for cam in QUERY_CAMERAS}
    logger.info("embedded %d gallery and %d query crops in %.1f s", len(g_paths),
                sum(len(v) for v in q_desc.values()), time.perf_counter() - started)

    configs = build_configs(lengths, fusions)
    tracks = draw_tracks(ids, lengths, images, args.draws, args.seed)
    with tempfile.TemporaryDirectory(prefix="track-bench-") as tmp:
        gallery_dir = Path(tmp) / "gallery"
        gallery = Gallery.create(int(embedder.dim), fingerprint=embedder.fingerprint,
                                 family=getattr(embedder, "family", None))
        gallery.add(g_desc, [{"camera": cam, "person_label": pid, "track_id": track_id(pid, cam, n, 5),
                              "source": p.relative_to(args.data_root).as_posix()} for pid, cam, n, p in g_paths])
        gallery.save(gallery_dir)
        gallery.close()
        g_meta = gallery.get(gallery.ids())
        accuracy = measure_accuracy(gallery, g_meta, q_desc, tracks, configs, args.rerank_n)
        latency: dict[str, dict] = {}
        if args.requests > 0:
            embedder.close()
            with ServerProcess(args.model, gallery_dir, ["--read-only"]) as server:
                latency = measure_latency(server, images, tracks, configs, args.requests, args.rerank_n, gallery,
                                          g_meta, q_desc)
    facts = {"test_ids": len(ids), "gallery": len(g_paths), "queries_per_draw": len(tracks[0][lengths[0]]),
             "model": str(args.model), "fingerprint": str(embedder.fingerprint), "backend": embedder.name,
             "data_root": str(args.data_root)}
    results = {"facts": facts, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "configs": configs, "accuracy": accuracy, "latency": latency}
    paths = _machine.write_results(args.name, results, _markdown(configs, accuracy, latency, args, facts),
                                   _figure(configs, accuracy, latency), machine=machine, out_dir=args.out)
    logger.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
