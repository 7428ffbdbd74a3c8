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
from typing import Any

from pydantic import ValidationError

from serving.core.config import Settings
from xmreid.errors import EXIT_UNCLEAN, UserError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``serve`` command line: one flag per :class:`Settings` field (:mod:`serving.core.cli`), defaults None so
    unset options fall back to env vars, then to the field's default (which ``--help`` shows)."""
    from serving.core.cli import SettingsHelpFormatter, add_settings_arguments
    from xmreid.cli import version_string

    p = argparse.ArgumentParser(prog="python -m serving serve", description=__doc__.split("\n\n")[0],
                                formatter_class=SettingsHelpFormatter)
    p.add_argument("--version", action="version", version=version_string("python -m serving serve"))
    add_settings_arguments(p)
    return p


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge command-line options over the environment into validated :class:`Settings`.

    Raises:
        UserError: a required value is missing or a value is invalid (the message names it).
    """
    from serving.core.cli import FLAG_NAMES, settings_overrides

    try:
        return Settings(**settings_overrides(args))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"])
            if not name:  # a check across fields (model_validator): its message names the flags
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
            if err["type"] == "missing":
                problems.append(f"{flag} is required (or set XMREID_{name.upper()})")
            else:
                problems.append(f"{flag}: {str(err['msg']).removeprefix('Value error, ')}")
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
    if settings.model is not None and settings.backend != "triton" and not settings.model.is_file():
        raise UserError(f"model file not found: {settings.model}")
    for root in settings.image_roots:
        if not root.is_dir():
            raise UserError(f"--image-root {root} is not a directory")

    from serving.core import opencv_limits

    opencv_limits.apply(settings.max_pixels, settings.max_side)  # before anything imports cv2
    from serving.core import logs

    restore_logging = logs.configure(settings.log_format, settings.log_level.upper())
    try:
        return _serve(settings)
    finally:
        restore_logging()


def _serve(settings: Settings) -> int:
    """:func:`main` once the settings are valid and logging is set up."""
    import uvicorn

    from serving.api.connections import fit_to_descriptors, protocol_class
    from serving.app import create_app
    from serving.core import heap, logfilter
    from serving.runtime.state import load_components

    tls = tls_options(settings)  # a bad certificate is one sentence before the model loads
    embedder, gallery = load_components(settings)
    app = create_app(settings, embedder=embedder, gallery=gallery)
    heap.freeze()  # the model, gallery and modules live as long as the process (serving.core.heap)
    access = app.state.access
    logger.info("access: %s", access.describe())
    if access.search_is_open:
        logger.warning("searches need no API key: anyone who reaches %s:%d can search the gallery%s",
                       settings.host, settings.port,
                       " (--open-search)" if access.keys else "; configure keys with --api-keys-file")
    if settings.host not in {"127.0.0.1", "localhost", "::1"}:
        logger.warning("listening on %s: the API is reachable from other machines", settings.host)
    limit, backlog = fit_to_descriptors(settings.limit_concurrency, settings.backlog)
    try:
        protocol = protocol_class(settings.header_timeout_s, limit, parser=settings.http_parser,
                                  max_header_bytes=settings.max_header_bytes)
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
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1,
                    timeout_graceful_shutdown=settings.graceful_shutdown_s, limit_concurrency=limit,
                    backlog=backlog, timeout_keep_alive=settings.keep_alive_s,
                    http=protocol, loop=settings.event_loop, **tls,
                    log_config=log_config(settings.log_repeat_s, settings.log_format))
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


def log_config(repeat_s: float, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging configuration with the repeat filter (:mod:`serving.core.logfilter`) and the request-id
    filter and format (:mod:`serving.core.logs`) on its handlers."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    from serving.core.logs import uvicorn_log_config

    config = uvicorn_log_config(copy.deepcopy(LOGGING_CONFIG), log_format)
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


def tls_options(settings: Settings) -> dict[str, str]:
    """uvicorn's HTTPS arguments for the settings (none for plain HTTP).

    Raises:
        UserError: a certificate or key file that cannot be read, or that does not load as a pair.
    """
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return {}
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UserError(f"cannot use --ssl-certfile {settings.ssl_certfile} with --ssl-keyfile "
                        f"{settings.ssl_keyfile}: {exc}") from None
    return {"ssl_certfile": str(settings.ssl_certfile), "ssl_keyfile": str(settings.ssl_keyfile)}
