"""Server settings: typed, validated, read from ``XMREID_*`` environment variables.

Follows the FastAPI template's ``core/config.py`` with one deliberate change (STYLE.md, serving/):
nothing is built at import time. :func:`get_settings` is an ``lru_cache``'d function, as FastAPI's settings
documentation shows, that ``create_app()`` calls when given no settings; a test builds its own
:class:`Settings` and hands it to ``create_app(settings)`` instead of patching a module global. Routes get
their app's settings through ``serving.api.deps.SettingsDep`` (not a ``dependency_overrides`` entry, which
costs every request a rebuilt dependency tree; see ``serving/api/deps.py``).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Embedder backends: what ``--backend`` and ``serving.embedders.load_embedder`` accept (``triton`` has no local
#: file). Here, below the embedders, so settings are validated without importing them.
BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "tensorrt", "torch", "triton")
LOG_LEVELS: tuple[str, ...] = ("critical", "error", "warning", "info", "debug")
LogFormat = Literal["text", "json"]

KIB = 1024
MIB = 1024 * KIB


class Settings(BaseSettings):
    """Everything the server can be told; each field is also the env var ``XMREID_<FIELD>``.

    ``model`` (unless the model is in a Triton server) and ``gallery`` have no defaults on purpose: a server
    that silently starts on some default model would answer searches with descriptors that match nothing.
    """

    model_config = SettingsConfigDict(env_prefix="XMREID_", extra="ignore", frozen=True)

    # Required except with backend triton (checked below), where the model lives in the Triton server.
    model: Path | None = Field(None, description="exported model artifact (.onnx, TensorRT .plan, or .pt "
                                                 "checkpoint); not used with backend triton")
    gallery: Path = Field(description="gallery directory (index + metadata + manifest)")
    backend: str = Field("auto", description=f"embedder backend, one of {', '.join(BACKENDS)}")
    host: str = Field("127.0.0.1", description="bind address; loopback by default so nothing is exposed "
                                               "until an operator asks for it")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header names the server answers besides localhost, 127.0.0.1, ::1 and a specific bind "
                    "address (DNS-rebinding guard): names, *.example.com, or * for any; env: comma-separated")
    ssl_certfile: Path | None = Field(None, description="serve HTTPS with this PEM certificate (chain) file; "
                                                        "needs --ssl-keyfile too")
    ssl_keyfile: Path | None = Field(None, description="the PEM private key of --ssl-certfile")
    api_key: SecretStr | None = Field(None, description="one admin key, sent by clients in the X-API-Key header "
                                                        "(the keys file holds named keys with roles)")
    api_keys_file: Path | None = Field(None, description="API keys, one per line: name:role:sha256-hex-of-the-key "
                                                         "(roles: search, admin); with any key configured, searches "
                                                         "need a search or admin key and changes an admin key")
    open_search: bool = Field(False, description="let searches, thumbnails and stats through without a key even "
                                                 "when keys are configured (a kiosk); warned about at start")
    allow_unauthenticated_changes: bool = Field(False, description="with no API key configured, accept gallery "
                                                                   "changes from anyone who reaches the port "
                                                                   "(refused otherwise)")
    audit_log: Path | None = Field(None, description="append-only, hash-chained JSON-lines record of every search, "
                                                     "thumbnail view and gallery change (python -m serving audit "
                                                     "verify|show)")
    audit_max_bytes: int = Field(64 * MIB, ge=4 * KIB, description="rotate the audit log to a numbered file at "
                                                                  "this size")
    audit_failure: Literal["refuse", "serve"] = Field("refuse", description="when the audit record cannot be "
                                                                           "written: refuse the request (503) or "
                                                                           "answer anyway and log the error")
    max_batch_size: int = Field(16, ge=1, le=1024, description="largest micro-batch given to the model; "
                                                              "1 disables micro-batching")
    # 0 by default: requests that arrive while the model is busy queue up and form the next batch anyway
    # (the batcher takes a model slot before collecting), so waiting on purpose only adds latency to a lone
    # request (+5 ms at concurrency 1 in benchmarks/end_to_end.py). Raise it for bursty GPU serving.
    max_wait_ms: float = Field(0.0, ge=0, le=10_000, description="longest a request waits for others to "
                                                                 "join its micro-batch (requests queued while "
                                                                 "the model is busy are batched regardless)")
    model_concurrency: int = Field(1, ge=1, le=64, description="micro-batches in flight at once when the "
                                                              "backend is thread-safe (never more than 1 otherwise)")
    max_queue: int = Field(1024, ge=1, description="images waiting for the model before /search answers 503")
    max_upload_bytes: int = Field(10 * MIB, ge=1, description="largest accepted image file in bytes")
    max_pixels: int = Field(36_000_000, ge=1, description="largest accepted width x height of an upload "
                                                          "(decompression-bomb guard)")
    max_side: int = Field(16_384, ge=1, description="largest accepted image width or height")
    max_images_per_request: int = Field(32, ge=1, le=1024, description="most files in one /search/batch or "
                                                                       "POST /gallery request")
    max_track_crops: int = Field(50, ge=1, le=1024, description="most crops in one POST /search/track query (a "
                                                                "night camera sees a person for 10-50 crops)")
    max_top_k: int = Field(100, ge=1, le=10_000, description="largest top_k a search may ask for")
    decode_threads: int = Field(2, ge=1, le=64, description="threads decoding uploads (OpenCV releases the GIL)")
    image_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="folders gallery images may be read from (thumbnails); env: os.pathsep-separated or JSON")
    thumbnail_max_side: int = Field(256, ge=16, le=4096, description="largest side in pixels of a gallery "
                                                                     "thumbnail, and its default size")
    save_on_mutation: bool = Field(True, description="persist the gallery after every add/delete")
    create_gallery: bool = Field(False, description="start with an empty gallery when the directory has none")
    read_only: bool = Field(False, description="open the gallery read-only (a replica serving a snapshot): no "
                                               "write lock is taken, changes answer 409 read_only")
    exclusive: bool = Field(False, description="take the gallery's write lock at start (refuse to start when "
                                               "another process writes it); by default it is taken by the first "
                                               "saved change")
    staging_gallery: Path | None = Field(None, description="a copy of the gallery to index into offline "
                                                           "(python -m serving gallery copy); POST /gallery/reload "
                                                           "installs it")
    # Connections: uvicorn's own limits, plus a header/body read timeout (serving.api.connections). An idle
    # client holds a socket and a file descriptor; without these, a few hundred of them exhaust the process.
    limit_concurrency: int = Field(1000, ge=1, description="most open connections (and requests in flight); "
                                                           "beyond it new ones get 503 at once. Lowered at start to "
                                                           "fit under the process's file-descriptor limit")
    backlog: int = Field(2048, ge=1, description="connections the kernel queues before the server accepts them")
    keep_alive_s: float = Field(5.0, gt=0, le=3600, description="an idle keep-alive connection is closed after this")
    header_timeout_s: float = Field(10.0, gt=0, le=3600, description="a connection that has not sent a complete "
                                                                      "request head by then is closed (408)")
    body_timeout_s: float = Field(30.0, gt=0, le=3600, description="longest wait for the next piece of a request "
                                                                    "body before answering 408")
    min_body_rate: float = Field(4 * KIB, ge=0, description="bytes per second a request body must average "
                                                            "after its first body_timeout_s (a drip-fed upload "
                                                            "is answered 408); 0 turns the check off")
    upload_budget_bytes: int = Field(512 * MIB, ge=MIB, description="upload bytes all requests together may hold "
                                                                    "at once; beyond it, 503 with Retry-After")
    max_header_bytes: int = Field(64 * KIB, ge=4 * KIB, le=16 * MIB, description="largest request head (request "
                                                                                 "line and headers) in bytes; "
                                                                                 "beyond it, 431 and the "
                                                                                 "connection is closed")
    graceful_shutdown_s: float = Field(10.0, ge=0, le=3600, description="on SIGTERM, how long running requests may "
                                                                         "finish before they are cancelled")
    log_repeat_s: float = Field(10.0, gt=0, le=3600, description="warnings and errors of one kind are logged "
                                                                  "once per this interval, then as a count")
    log_level: str = Field("info", description=f"log level, one of {', '.join(LOG_LEVELS)}")
    log_format: LogFormat = Field("text", description="text: one human-readable line per record; json: one JSON "
                                                      "object per line (ts, level, logger, message, request_id) "
                                                      "for container log collectors")
    # Triton (backend "triton"): the model runs in a Triton Inference Server; this process decodes, batches
    # and searches. The model's H, W, descriptor size and fingerprint come from its Triton config.
    triton_url: str | None = Field(None, description="Triton gRPC endpoint, host:port or grpc://host:port "
                                                     "(backend triton; its --model is then not read)")
    triton_model: str = Field("xmreid", description="model name in the Triton repository "
                                                    "(python -m export triton --name)")
    triton_timeout_s: float = Field(30.0, gt=0, le=3600, description="longest wait for one Triton inference "
                                                                      "or metadata call")

    http_parser: str = Field("auto", description="HTTP/1.1 parser: httptools (C, the default when installed) or "
                                                  "h11 (pure Python); auto picks httptools when it imports")
    event_loop: str = Field("asyncio", description="event loop: the standard asyncio loop, or uvloop (when "
                                                   "installed; under file-descriptor exhaustion it dropped 1 in 4 "
                                                   "connections that asyncio answers 503, see serving.api.connections)")

    # Retention (serving.runtime.expiry): items stamped before now minus this age are removed on a schedule,
    # through the same durable delete as DELETE /gallery; items without a timestamp are kept.
    expire_older_than: str | None = Field(None, description="remove gallery items whose timestamp is older than "
                                                            "this age (30d, 12h, 90m) at start and then every "
                                                            "--expire-every; off when unset")
    expire_every: str = Field("1h", description="how often the server expires items (with --expire-older-than)")

    @field_validator("expire_older_than", mode="before")
    @classmethod
    def _retention_off_when_blank(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("expire_older_than", "expire_every")
    @classmethod
    def _retention_age(cls, value: str | None) -> str | None:
        from serving.core.ages import parse_age  # here, to keep the retention settings in one block

        if value is not None:
            parse_age(value)  # ValueError: one sentence naming the accepted form
        return None if value is None else value.strip()

    @model_validator(mode="after")
    def _retention_needs_writer(self) -> Settings:
        if self.expire_older_than is not None and self.read_only:
            raise ValueError("--expire-older-than removes items, so it needs a writable gallery, not --read-only")
        return self

    @field_validator("http_parser")
    @classmethod
    def _known_parser(cls, value: str) -> str:
        if value not in ("auto", "httptools", "h11"):
            raise ValueError(f"unknown HTTP parser {value!r}; valid: auto, httptools, h11")
        return value

    @field_validator("event_loop")
    @classmethod
    def _known_loop(cls, value: str) -> str:
        if value not in ("asyncio", "uvloop"):
            raise ValueError(f"unknown event loop {value!r}; valid: asyncio, uvloop")
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; valid backends: {', '.join(BACKENDS)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() in LOG_LEVELS:
            return value.lower()
        raise ValueError(f"unknown log level {value!r}; valid levels: {', '.join(LOG_LEVELS)}")

    @field_validator("triton_url", mode="before")
    @classmethod
    def _blank_url_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
        return self

    @model_validator(mode="after")
    def _model_source(self) -> Settings:
        if self.backend == "triton" and not self.triton_url:
            raise ValueError("backend triton needs --triton-url (XMREID_TRITON_URL), e.g. localhost:8001")
        if self.backend != "triton" and self.model is None:
            raise ValueError("--model is required (or set XMREID_MODEL), except with --backend triton")
        return self

    @field_validator("image_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        # Env vars arrive as one string; PATH-style lists are what operators type, JSON also works.
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        if isinstance(value, Path):
            return [value]
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):  # the env var: comma-separated (or JSON)
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [text]
        if isinstance(value, (list, tuple)):  # --allowed-hosts a,b --allowed-hosts c
            return [h.strip() for item in value for h in str(item).split(",") if h.strip()]
        return value

    @model_validator(mode="after")
    def _budget_fits_a_request(self) -> Settings:
        largest = self.body_limit(max(self.max_images_per_request, self.max_track_crops))
        if self.upload_budget_bytes < largest:
            raise ValueError(f"--upload-budget-bytes {self.upload_budget_bytes} is smaller than the largest request "
                             f"body the limits allow ({largest} bytes: max_upload_bytes x the most files per "
                             f"request + 1 MiB); raise it or lower those limits")
        return self

    @field_validator("staging_gallery", "api_keys_file", "audit_log", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty XMREID_API_KEY= would otherwise "enable" a key every client trivially matches.
        if value is not None and not value.get_secret_value():
            return None
        return value

    @property
    def max_wait_s(self) -> float:
        """``max_wait_ms`` in seconds (what asyncio wants)."""
        return self.max_wait_ms / 1000.0

    def body_limit(self, files: int) -> int:
        """Largest request body accepted for a request carrying up to ``files`` images.

        The multipart framing and a JSON metadata field add a little on top of the files themselves;
        1 MiB of slack per request covers both without letting a client stream an unbounded body.
        """
        return files * self.max_upload_bytes + MIB


@lru_cache
def get_settings() -> Settings:
    """Settings from the environment, built once per process (FastAPI's documented settings pattern).

    Returns:
        The process-wide :class:`Settings`.

    Raises:
        pydantic.ValidationError: a required variable (``XMREID_MODEL``, ``XMREID_GALLERY``) is missing
            or a value is invalid.
    """
    return Settings()  # type: ignore[call-arg]  # required fields come from the environment
