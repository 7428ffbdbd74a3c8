"""``python -m serving serve``: load the model and gallery, then run the HTTP server with uvicorn.

Every option can also come from the environment (``XMREID_MODEL``, ``XMREID_GALLERY``, ``XMREID_API_KEY``,
...; see :class:`serving.core.config.Settings`); a command-line option wins over its variable. Prefer
``XMREID_API_KEY`` to ``--api-key``: command lines are visible to every user of the machine.

The model and gallery are loaded here, before uvicorn starts, so a wrong path or a gallery built with
another model is a one-line error and exit status 1 rather than a traceback from inside the server, and a
damaged gallery one line and exit status 2 (it is never served).

Connections are bounded (``--limit-concurrency``, lowered to fit the open-file limit; ``--backlog``;
``--keep-alive-s``; ``--header-timeout-s`` and ``--body-timeout-s``): beyond the cap a client gets 503 at
once, and an idle or slow client is closed instead of holding a descriptor. Repeated warnings and errors
are logged once per ``XMREID_LOG_REPEAT_S`` with a count.

Exit status 3 after a shutdown that was not clean: requests still running after the grace period were
cancelled, or gallery changes held in memory (``--no-save``) were never saved. The log says which.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serving.core.config import BACKENDS, Settings
from serving.errors import EXIT_UNCLEAN, UserError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` command line (defaults None: unset options fall back to env vars, then Settings)."""
    p = argparse.ArgumentParser(prog="python -m serving serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="exported model (.onnx, .plan, .pt) [env XMREID_MODEL]")
    p.add_argument("--gallery", type=Path, help="gallery directory [env XMREID_GALLERY]")
    p.add_argument("--backend", choices=BACKENDS, help="embedder backend (default auto)")
    p.add_argument("--host", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--api-key", help="require this X-API-Key for gallery changes (prefer env XMREID_API_KEY)")
    p.add_argument("--max-batch-size", type=int, help="largest micro-batch (default 16; 1 disables batching)")
    p.add_argument("--max-wait-ms", type=float, help="longest micro-batch wait in ms (default 0: batch what queued while the model was busy)")
    p.add_argument("--max-upload-bytes", type=int, help="largest accepted image file (default 10 MiB)")
    p.add_argument("--max-top-k", type=int, help="largest top_k (default 100)")
    p.add_argument("--image-root", dest="image_roots", action="append", type=Path,
                   help="folder gallery images may be read from (repeatable)")
    p.add_argument("--thumbnail-max-side", type=int, help="largest thumbnail side in pixels (default 256)")
    p.add_argument("--create-gallery", action="store_true", default=None,
                   help="start with an empty gallery when --gallery holds none")
    p.add_argument("--no-save", dest="save_on_mutation", action="store_false", default=None,
                   help="do not persist the gallery after POST/DELETE /gallery")
    p.add_argument("--read-only", dest="read_only", action="store_true", default=None,
                   help="serve the gallery read-only (a replica): no write lock, changes answer 409")
    p.add_argument("--exclusive", action="store_true", default=None,
                   help="take the gallery's write lock at start; refuse to start if another process writes it")
    p.add_argument("--staging-gallery", type=Path,
                   help="a copy of the gallery to index into offline; POST /gallery/reload installs it")
    p.add_argument("--limit-concurrency", type=int, help="most open connections (default 1000, lowered to fit "
                                                          "`ulimit -n`); beyond it 503 at once")
    p.add_argument("--backlog", type=int, help="kernel accept queue length (default 2048)")
    p.add_argument("--keep-alive-s", type=float, help="idle keep-alive connections close after this (default 5)")
    p.add_argument("--header-timeout-s", type=float, help="a request head must arrive within this (default 10)")
    p.add_argument("--body-timeout-s", type=float, help="longest wait for the next piece of a body (default 30)")
    p.add_argument("--graceful-shutdown-s", type=float, help="time running requests get at shutdown (default 10)")
    p.add_argument("--http", dest="http_parser", choices=["auto", "httptools", "h11"],
                   help="HTTP/1.1 parser (default auto: httptools when installed, else h11)")
    p.add_argument("--loop", dest="event_loop", choices=["asyncio", "uvloop"],
                   help="event loop (default asyncio; uvloop must be installed, and loses the 503 of a connection "
                        "over the limit when descriptors run out)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge command-line options over the environment into validated :class:`Settings`.

    Raises:
        UserError: a required value is missing or a value is invalid (the message names it).
    """
    fields = set(Settings.model_fields)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            flag = "--" + name.replace("_", "-")
            if err["type"] == "missing":
                problems.append(f"{flag} is required (or set XMREID_{name.upper()})")
            else:
                problems.append(f"{flag}: {err['msg']}")
        raise UserError("; ".join(problems)) from None


def main(argv: list[str] | None = None) -> int:
    """Run the server until interrupted (SIGINT/SIGTERM stop it gracefully).

    Args:
        argv: command-line arguments (without the ``serve`` command).

    Returns:
        0 after a clean shutdown, 3 when requests were cancelled or changes left unsaved.

    Raises:
        UserError: bad options, a missing model or gallery, or a gallery built with another model.
    """
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    if not settings.model.is_file():
        raise UserError(f"model file not found: {settings.model}")
    for root in settings.image_roots:
        if not root.is_dir():
            raise UserError(f"--image-root {root} is not a directory")

    import uvicorn

    from serving.app import create_app
    from serving.core import logfilter
    from serving.core.connections import fit_to_descriptors, protocol_class
    from serving.state import load_components

    embedder, gallery = load_components(settings)
    app = create_app(settings, embedder=embedder, gallery=gallery)
    if settings.host not in {"127.0.0.1", "localhost", "::1"}:
        logger.warning("listening on %s: the API is reachable from other machines%s", settings.host,
                       "" if settings.api_key else " and gallery changes need no API key")
    limit, backlog = fit_to_descriptors(settings.limit_concurrency, settings.backlog)
    try:
        protocol = protocol_class(settings.header_timeout_s, limit, parser=settings.http_parser)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if settings.event_loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            raise UserError("--loop uvloop: the uvloop package is not installed (pip install uvloop)") from None
    logger.info("HTTP parser %s, event loop %s", protocol.__name__.removeprefix("Bounded"),
                settings.event_loop)
    logfilter.install(settings.log_repeat_s)  # the root handler (python -m serving's basicConfig)
    # One process: the gallery lives in this process's memory, so several workers would each hold and
    # save their own diverging copy. Scale with micro-batching and more replicas behind a proxy instead.
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the handler that was
    # installed before it; these no-op handlers turn that into a normal return and exit status 0, instead
    # of a KeyboardInterrupt traceback (Ctrl-C) or a death by signal (SIGTERM from an orchestrator).
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level, workers=1,
                    timeout_graceful_shutdown=settings.graceful_shutdown_s, limit_concurrency=limit,
                    backlog=backlog, timeout_keep_alive=settings.keep_alive_s,
                    http=protocol, loop=settings.event_loop, log_config=log_config(settings.log_repeat_s))
        if stopped_by:
            logger.info("stopped by %s after a graceful shutdown", signal.Signals(stopped_by[0]).name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close = getattr(embedder, "close", None)
        if callable(close):
            close()
        gallery.close()  # releases the directory's write lock (the kernel would, at exit, anyway)
    return shutdown_status(app, settings)


def log_config(repeat_s: float) -> dict[str, Any]:
    """uvicorn's logging configuration with the repeat filter on its handlers (see :mod:`serving.core.logfilter`)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["repeat"] = {"()": "serving.core.logfilter.RepeatFilter", "interval_s": repeat_s}
    for handler in config.get("handlers", {}).values():
        handler.setdefault("filters", []).append("repeat")
    return config


def shutdown_status(app: Any, settings: Settings) -> int:
    """0 after a clean shutdown; otherwise log what was not clean and return :data:`EXIT_UNCLEAN`."""
    problems = []
    cancelled = int(app.state.counters.get("cancelled", 0))
    if cancelled:
        problems.append(f"{cancelled} request(s) still running after the {settings.graceful_shutdown_s:g} s grace "
                        f"period were cancelled")
    report = dict(app.state.shutdown_report or {})
    if report.get("unsaved_changes"):
        problems.append(f"{report['unsaved_changes']} gallery change(s) were held in memory only and are lost "
                        f"(--no-save: nothing was written to {settings.gallery})")
    if report.get("diverged"):
        problems.append(f"the gallery in memory had diverged from its last save ({report['diverged']})")
    if not problems:
        return 0
    logger.error("shutdown was not clean: %s", "; ".join(problems))
    return EXIT_UNCLEAN
