"""``python -m serving index --engine ray``: the indexing pipeline on Ray Data, for galleries one machine cannot embed.

The same crawl -> decode -> embed -> add pipeline as the local engine (:mod:`serving.indexing.local`), with
the decode and embed stages spread over a Ray cluster, and the same batch loop
(:func:`serving.indexing.common.run_batches`) adding the results:

1. the driver crawls the image tree (same crawlers, same resume-by-``source`` skip) and hands Ray the
   file list (``ray.data.from_items``: the list is small next to the pixels);
2. ``map_batches`` decode tasks read and resize the files on any node (the same decoder and limits as
   the server, so a bad file becomes a reason string, never a crash);
3. an actor pool of ONNX Runtime embedders, one model load per actor (the LitServe ``setup`` idea:
   load once, then predict batches); with GPUs in the cluster each actor reserves one GPU and ONNX
   Runtime picks its CUDA provider;
4. the driver streams the embedded batches out *in input order* and adds them to the gallery, which
   assigns ids in that order: the gallery comes out identical to the local engine's (same ids, same
   vectors up to float rounding), and a rerun resumes exactly as the local engine does.

The driver stays the single gallery writer (the gallery's ids are assigned by one writer, for FAISS and
Milvus alike); it only receives descriptors (6 KB each), so one driver keeps up with many GPUs. The
sizing is in ``docs/scaling.md``.

Ray is an optional extra, imported only when this engine runs (``import ray`` below is the installed
package: absolute imports, so this module's own name does not shadow it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serving.core.imageio import DEFAULT_LIMITS, DecodeLimits
from serving.embedders import load_embedder
from serving.indexing.common import (
    EmbeddedBatch,
    IndexSummary,
    crawl,
    load_item,
    open_gallery,
    pending_items,
    record_image_root,
    run_batches,
)
from serving.indexing.crawl import ImageItem
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'xmreid[ray]' (ray[data])"


def import_ray() -> Any:
    """``ray`` with Ray Data, or a :class:`UserError` that names the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise UserError(f"--engine ray needs Ray Data, which is not installed: {INSTALL_HINT}; "
                        "or use --engine local") from None
    return ray


def decode_batch(batch: dict[str, np.ndarray], height: int, width: int,
                 limits: DecodeLimits) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` stage: file paths -> ``pixels`` ``[B, H, W, 3]`` uint8 plus an ``error`` column.

    A file that cannot be used gets zero pixels and its reason in ``error`` (empty string when fine), so
    one bad file never fails a block; the driver reports it as skipped.
    """
    paths = batch["path"]
    pixels = np.zeros((len(paths), height, width, 3), dtype=np.uint8)
    errors = []
    for i, path in enumerate(paths):
        result = load_item(ImageItem(path=Path(str(path)), source=str(path), camera=0), height, width, limits)
        if isinstance(result, str):
            errors.append(result)
        else:
            pixels[i] = result
            errors.append("")
    return {"seq": batch["seq"], "pixels": pixels, "error": np.asarray(errors, dtype=object)}


class EmbedActor:
    """Ray Data actor: loads the model once, then embeds the decoded batches it is given.

    Args:
        model: the exported model file, readable at the same path on every node.
        backend: embedder backend (see :func:`serving.embedders.load_embedder`).
        threads: ONNX Runtime intra-op threads (the CPUs this actor reserved).
    """

    def __init__(self, model: str, backend: str = "auto", threads: int = 1) -> None:
        opts = {"intra_op_threads": threads} if backend in ("auto", "onnxruntime") and model.endswith(".onnx") else {}
        self.embedder = load_embedder(model, backend=backend, **opts)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([not e for e in batch["error"]], dtype=bool)
        vectors = np.zeros((len(ok), self.embedder.dim), dtype=np.float32)
        if ok.any():
            vectors[ok] = self.embedder.embed(np.ascontiguousarray(batch["pixels"][ok]))
        return {"seq": batch["seq"], "vector": vectors, "error": batch["error"]}


def _start_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Connect to ``address`` or start a private local Ray; returns whether this call started it."""
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot connect to the Ray cluster at --ray-address {address}: {exc}") from exc
        return True
    # Ray waits 30 s for its GCS to come up; on a small, busy machine (CI running other tests) it can take
    # longer, and the start fails with "Timed out waiting for file .../gcs_server_port_*". A private local
    # Ray has no reason to give up that early; an operator's own setting wins.
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "180")
    # The raylet's registration with the GCS has a wait of its own, hard-coded to 30 s in Ray
    # (ray/_private/node.py: "The current node timed out during startup"); it too can pass on a busy
    # 2-core machine (seen once in four fresh-clone test runs). A private local Ray is started again once.
    for attempt in (1, 2):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
            return True
        except Exception as exc:  # Ray raises a bare Exception here
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            logger.warning("local Ray did not start in time (%s); starting it again", exc)
            ray.shutdown()
    return True


def index_images_ray(model: str | Path, images: str | Path, gallery: str | Path, *,
                     cameras: Sequence[int] | None = None, split: str = "all", manifest: str | Path | None = None,
                     batch_size: int = 32, backend: str = "auto", kind: str = "flat", save_every: int = 20,
                     limits: DecodeLimits = DEFAULT_LIMITS, show_progress: bool = True,
                     gallery_options: dict[str, Any] | None = None, address: str | None = None,
                     num_cpus: int | None = None, embedders: int | None = None,
                     embedder_cpus: int = 1, track_level: int | None = None) -> IndexSummary:
    """Embed the images under ``images`` on Ray and add them to the gallery in ``gallery`` (created if absent).

    Arguments as :func:`serving.indexing.local.index_images`, plus:

    Args:
        address: a Ray cluster to join (``auto``, ``ray://head:10001``, ``host:6379``); None starts a
            private local Ray for this run and stops it at the end.
        num_cpus: CPUs of that local Ray (default: all).
        embedders: size of the embedder actor pool (default: one per GPU, else one per 4 CPUs).
        embedder_cpus: CPUs (and ONNX Runtime threads) reserved by each CPU embedder actor.

    Returns:
        The run's :class:`serving.indexing.common.IndexSummary`.

    Raises:
        UserError: missing folders or files, bad options, Ray not installed or unreachable, or a
            gallery of another model.
    """
    images, gallery_dir, model = Path(images), Path(gallery), Path(model)
    if not images.is_dir():
        raise UserError(f"--images {images} is not a directory")
    if batch_size < 1 or save_every < 0 or embedder_cpus < 1 or (embedders is not None and embedders < 1) \
            or (num_cpus is not None and num_cpus < 1):
        raise UserError(f"--batch-size, --ray-embedders, --ray-embedder-cpus and --ray-num-cpus must be >= 1 and "
                        f"--save-every >= 0, got {batch_size}, {embedders}, {embedder_cpus}, {num_cpus}, {save_every}")
    ray = import_ray()
    # The driver loads the model once too: the gallery needs its descriptor size and fingerprint, and a
    # broken model file should fail here, not in every actor.
    probe = load_embedder(model, backend=backend)
    height, width = probe.height, probe.width
    items, skipped = crawl(images, cameras, split, Path(manifest) if manifest is not None else None, track_level)
    summary = IndexSummary(found=len(items) + len(skipped), skipped=list(skipped), gallery=str(gallery_dir))
    store = open_gallery(gallery_dir, probe, kind, **(gallery_options or {}))
    record_image_root(store, Path(images))  # serve shows thumbnails from it
    probe.close()
    todo = pending_items(store, items, summary)
    logger.info("%d image(s) to index on Ray (%d already in the gallery)", len(todo), summary.already_indexed)

    started_ray = False
    try:
        started_ray = _start_ray(ray, address, num_cpus) if todo else False
        batches = _run_pipeline(ray, todo, str(model.resolve()), backend, height, width, limits, batch_size,
                                embedders, embedder_cpus, show_progress) if todo else iter(())
        return run_batches(store, gallery_dir, summary, batches, total=len(todo), save_every=save_every,
                           show_progress=show_progress, desc="indexing (ray)", engine="Ray")
    finally:
        if started_ray:
            ray.shutdown()
        store.close()  # the directory's write lock


def _run_pipeline(ray: Any, todo: list[ImageItem], model: str, backend: str, height: int, width: int,
                  limits: DecodeLimits, batch_size: int, embedders: int | None, embedder_cpus: int,
                  show_progress: bool) -> Iterator[EmbeddedBatch]:
    """The Ray Data pipeline's embedded batches, in input order (``todo`` positions travel as ``seq``)."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = int(ray.cluster_resources().get("CPU", 1))
    pool = embedders or (gpus if gpus else max(1, cpus // 4))
    records = [{"seq": i, "path": str(item.path)} for i, item in enumerate(todo)]
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    # Input order in, input order out: the gallery assigns ids in arrival order, so this is what makes a
    # Ray run produce the same ids as the local engine (at the cost of some head-of-line waiting).
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = show_progress
    try:
        ds = ray.data.from_items(records, override_num_blocks=max(1, min(len(records) // batch_size, 1000)))
        ds = ds.map_batches(decode_batch, fn_kwargs={"height": height, "width": width, "limits": limits},
                            batch_size=batch_size, batch_format="numpy", num_cpus=1)
        actor_resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": embedder_cpus}
        logger.info("Ray cluster: %d CPU(s), %d GPU(s); %d embedder actor(s) with %s", cpus, gpus, pool,
                    actor_resources)
        ds = ds.map_batches(EmbedActor, fn_constructor_kwargs={"model": model, "backend": backend,
                                                               "threads": 1 if gpus else embedder_cpus},
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool), **actor_resources)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            errors = [str(e) for e in batch["error"]]
            vectors = np.asarray(batch["vector"], dtype=np.float32)
            yield EmbeddedBatch(items=[todo[int(i)] for i in batch["seq"]], errors=errors,
                                vectors=vectors[[i for i, e in enumerate(errors) if not e]])
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
