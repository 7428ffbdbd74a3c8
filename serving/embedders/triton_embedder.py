"""Triton embedder: the model runs in a Triton Inference Server; this process decodes, batches and searches.

``python -m serving serve --backend triton --triton-url HOST:8001 --gallery DIR`` sends each micro-batch
(uint8 ``[B, 3, H, W]``, already decoded and resized here) to the model that ``python -m export triton``
wrote, over Triton's gRPC API (KServe v2 protocol) through ``tritonclient``. Triton's own dynamic batcher
may merge our batches with other clients'; our micro-batcher still forms one call per batch of requests.

Everything the server needs to know about the model is read from Triton, never typed twice: H and W from
the input's ``dims``, the descriptor size from the output's, the largest batch from ``max_batch_size``, and
the fingerprint (the ONNX file's sha256, so a gallery indexed with the ONNX model is valid here) plus the
rest of the ONNX metadata from the config's ``parameters`` (written by :mod:`export.triton`).

Readiness is Triton's: a daemon thread asks ``is_model_ready`` every :data:`POLL_S` seconds, so ``/readyz``
reads a flag and never waits on the network, and a load balancer stops sending searches while Triton is
down or the model unloaded. A failed inference raises :class:`ModelUnavailable` (retry later) when Triton
cannot be reached, so a Triton restart is a few 503s rather than 500s.

Only gRPC: ``tritonclient``'s HTTP client needs gevent, which this project does not otherwise carry.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import ArtifactMetadata
from serving.embedders.base import Embedder, ModelUnavailable
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

INPUT_NAME = "images"  # export.metadata.INPUT_NAME / OUTPUT_NAME: the exported graph's tensor names
OUTPUT_NAME = "descriptors"
POLL_S = 2.0  # how often readiness is re-checked
_READY_TIMEOUT_S = 2.0  # one readiness call; short, so a hung Triton is noticed within a poll or two


def parse_url(url: str) -> str:
    """``host:port`` for tritonclient.grpc from ``host:port`` or ``grpc://host:port``.

    Raises:
        UserError: an HTTP URL (this client speaks gRPC: Triton's port 8001, not 8000) or no port.
    """
    text = url.strip()
    if text.startswith(("http://", "https://")):
        raise UserError(f"--triton-url {url!r}: the triton backend speaks gRPC; give Triton's gRPC endpoint "
                        f"(host:8001 by default), e.g. {text.split('://', 1)[1].rsplit(':', 1)[0]}:8001")
    text = text.removeprefix("grpc://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--triton-url {url!r} must be host:port (e.g. localhost:8001)")
    return text


def _grpc_module() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except (ImportError, RuntimeError) as exc:  # tritonclient raises RuntimeError when its grpc extra is missing
        raise UserError("backend triton needs tritonclient with gRPC support: pip install 'tritonclient[grpc]' "
                        f"({exc})") from None
    return grpcclient


def metadata_from_config(config: dict[str, Any], source: str) -> tuple[ArtifactMetadata, str, int]:
    """The model's metadata, fingerprint and max batch from Triton's model config (``as_json=True`` form).

    Raises:
        UserError: the config is not one ``python -m export triton`` writes (names, types, dims or the
            fingerprint parameter are missing); the message says what was found.
    """
    def tensor(kind: str, name: str) -> dict[str, Any]:
        for entry in config.get(kind, []):
            if entry.get("name") == name:
                return entry
        found = ", ".join(e.get("name", "?") for e in config.get(kind, [])) or "none"
        raise UserError(f"{source}: the model has no {kind} named {name!r} (found: {found}); serve the model "
                        f"written by `python -m export triton`")

    inp, out = tensor("input", INPUT_NAME), tensor("output", OUTPUT_NAME)
    if inp.get("data_type") != "TYPE_UINT8" or out.get("data_type") != "TYPE_FP32":
        raise UserError(f"{source}: expected {INPUT_NAME} TYPE_UINT8 and {OUTPUT_NAME} TYPE_FP32, found "
                        f"{inp.get('data_type')} and {out.get('data_type')}")
    in_dims, out_dims = [int(d) for d in inp.get("dims", [])], [int(d) for d in out.get("dims", [])]
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch < 1 or len(in_dims) != 3 or in_dims[0] != 3 or len(out_dims) != 1 or min(in_dims + out_dims) < 1:
        raise UserError(f"{source}: expected max_batch_size >= 1, {INPUT_NAME} dims [3, H, W] and {OUTPUT_NAME} "
                        f"dims [D], found {max_batch}, {in_dims} and {out_dims}")
    params = {k: str(v.get("string_value", "")) for k, v in dict(config.get("parameters", {})).items()}
    fingerprint = params.pop("fingerprint", "")
    if len(fingerprint) != 64:
        raise UserError(f"{source}: the model config has no 'fingerprint' parameter (the ONNX file's sha256), so "
                        f"a gallery cannot be checked against it; re-write the repository with "
                        f"`python -m export triton`")
    props = {**params, "height": in_dims[1], "width": in_dims[2], "descriptor_dim": out_dims[0]}
    return ArtifactMetadata.from_strings(props, source=source), fingerprint, max_batch


class TritonEmbedder(Embedder):
    """Embeds through a model served by Triton (see the module docstring).

    Args:
        url: Triton's gRPC endpoint, ``host:port`` or ``grpc://host:port``.
        model_name: the model's name in the repository.
        timeout_s: longest wait for one inference or metadata call.
        poll_s: readiness poll interval (0: no poller; tests).

    Raises:
        UserError: tritonclient missing, Triton unreachable, the model not ready or not an exported one.
    """

    name = "triton"
    # tritonclient's gRPC client may be shared by threads, and Triton queues and batches concurrent calls
    # itself: with --model-concurrency N the micro-batcher keeps N batches in flight.
    thread_safe = True

    def __init__(self, url: str, model_name: str = "xmreid", timeout_s: float = 30.0, poll_s: float = POLL_S) -> None:
        super().__init__()
        self._grpc = _grpc_module()
        self.url = parse_url(url)
        self.model_name = model_name
        self.timeout_s = float(timeout_s)
        self.path = Path(model_name)  # no file here: the model lives in Triton's repository
        source = f"Triton model {model_name!r} at {self.url}"
        self._client = self._grpc.InferenceServerClient(url=self.url)
        try:
            if not self._client.is_server_live(client_timeout=self.timeout_s):
                raise UserError(f"Triton at {self.url} answers but is not live")
            if not self._client.is_model_ready(model_name, client_timeout=self.timeout_s):
                raise UserError(f"{source} is not ready; models there: {self._repository_models() or 'none'}")
            config = self._client.get_model_config(model_name, as_json=True, client_timeout=self.timeout_s)["config"]
        except self._grpc.InferenceServerException as exc:
            raise UserError(f"cannot use {source}: {exc.message()}") from None
        self.metadata, self.fingerprint, self.max_batch_size = metadata_from_config(config, source)
        self.height, self.width, self.dim = self.metadata.height, self.metadata.width, self.metadata.descriptor_dim
        self._output = self._grpc.InferRequestedOutput(OUTPUT_NAME)
        self._not_ready: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if poll_s > 0:
            self._poller = threading.Thread(target=self._poll, args=(poll_s,), name="triton-ready", daemon=True)
            self._poller.start()
        logger.info("using %s: input %dx%d, dim %d, max batch %d, fingerprint %s", source, self.height, self.width,
                    self.dim, self.max_batch_size, self.fingerprint[:12])

    def _repository_models(self) -> str:
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=self.timeout_s)
        except self._grpc.InferenceServerException:
            return ""
        return ", ".join(f"{m.get('name')} ({m.get('state', '?')})" for m in index.get("models", []))

    # -- readiness -------------------------------------------------------------------------------------

    @property
    def not_ready_reason(self) -> str | None:
        """Why Triton cannot serve the model now (None when it can), as of the last poll or call."""
        return self._not_ready

    def check_ready(self) -> str | None:
        """Ask Triton now whether the model is ready; update and return :attr:`not_ready_reason`."""
        try:
            ready = self._client.is_model_ready(self.model_name, client_timeout=_READY_TIMEOUT_S)
            reason = None if ready else f"Triton model {self.model_name!r} at {self.url} is not ready"
        except self._grpc.InferenceServerException as exc:
            reason = f"Triton at {self.url} is unreachable: {exc.message()}"
        if reason != self._not_ready:
            (logger.info if reason is None else logger.warning)(
                "%s", reason or f"Triton model {self.model_name!r} at {self.url} is ready again")
        self._not_ready = reason
        return reason

    def _poll(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.check_ready()

    # -- inference -------------------------------------------------------------------------------------

    def _run(self, batch_nchw: np.ndarray) -> np.ndarray:
        inp = self._grpc.InferInput(INPUT_NAME, list(batch_nchw.shape), "UINT8")
        inp.set_data_from_numpy(batch_nchw)
        try:
            result = self._client.infer(self.model_name, [inp], outputs=[self._output], client_timeout=self.timeout_s)
        except self._grpc.InferenceServerException as exc:
            status = str(exc.status() or "")
            if any(code in status for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")):
                self._not_ready = f"Triton at {self.url} is unreachable: {exc.message()}"
                raise ModelUnavailable(f"the Triton server at {self.url} did not answer ({status}); retry "
                                       f"shortly") from None
            raise RuntimeError(f"Triton inference failed: {exc.message()}") from None
        out = result.as_numpy(OUTPUT_NAME)
        if out is None:
            raise RuntimeError(f"Triton returned no {OUTPUT_NAME!r} output")
        return out

    def info(self) -> dict[str, Any]:
        return {**super().info(), "url": self.url, "model": self.model_name, "metadata": dict(self.metadata.raw)}

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        try:
            self._client.close()
        except Exception:  # closing a channel that is already gone must not mask the real shutdown status
            logger.debug("closing the Triton client failed", exc_info=True)

    def __repr__(self) -> str:
        return (f"TritonEmbedder(url={self.url!r}, model={self.model_name!r}, input={self.height}x{self.width}, "
                f"dim={self.dim}, fingerprint={self.fingerprint[:12]})")
