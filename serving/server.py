"""``python -m serving serve``: load the model and gallery, then run the HTTP server with uvicorn.

Every option can also come from the environment (``XMREID_MODEL``, ``XMREID_GALLERY``, ``XMREID_API_KEY``,
...; see :class:`serving.core.config.Settings`); a command-line option wins over its variable. Prefer
``XMREID_API_KEY`` to ``--api-key``: command lines are visible to every user of the machine.

The model and gallery are loaded here, before uvicorn starts, so a wrong path or a gallery built with
another model is a one-line error and exit status 1 rather than a traceback from inside the server.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serving.core.config import BACKENDS, Settings
from serving.errors import UserError

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
        0 after a clean shutdown.

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
    from serving.state import load_components

    embedder, gallery = load_components(settings)
    app = create_app(settings, embedder=embedder, gallery=gallery)
    if settings.host not in {"127.0.0.1", "localhost", "::1"}:
        logger.warning("listening on %s: the API is reachable from other machines%s", settings.host,
                       "" if settings.api_key else " and gallery changes need no API key")
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
                    timeout_graceful_shutdown=10)
        if stopped_by:
            logger.info("stopped by %s after a graceful shutdown", signal.Signals(stopped_by[0]).name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close = getattr(embedder, "close", None)
        if callable(close):
            close()
    return 0
