"""The one command-line dispatcher of ``python -m training|export|serving <command>``, and the version.

Each room's ``__main__`` names its commands (``{name: (module, help)}``); this module prints the usage,
``--version`` (the installed package's metadata: ``pyproject.toml``'s ``version``, the one version source),
refuses an unknown command with exit 2, imports the command's module only when it runs (``synth`` and
``triton`` need no torch models, ``serve`` no indexer), and turns a :class:`~xmreid.errors.UserError` into
one ``error: …`` line and its exit status instead of a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import metadata

from xmreid.errors import UserError

DISTRIBUTION = "xmreid"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@lru_cache
def package_version() -> str:
    """The installed ``xmreid`` version, or ``0+unknown`` when running from a checkout that was never installed
    (``pip install -e .`` fixes that; a PEP 440 local version, so tools that parse it still can)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def version_string(prog: str) -> str:
    """``--version`` output: ``<prog> <version>``."""
    return f"{prog} {package_version()}"


def usage(prog: str, commands: Mapping[str, tuple[str, str]]) -> str:
    """The usage text listing ``commands``."""
    lines = [f"usage: {prog} [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in commands.items()]
    return "\n".join(lines)


def _basic_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=_LOG_FORMAT)


def run(prog: str, commands: Mapping[str, tuple[str, str]], argv: list[str] | None = None,
        configure_logging: Callable[[], None] = _basic_logging) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to one of ``commands``; returns the exit status.

    Args:
        prog: the command as typed, e.g. ``python -m export``.
        commands: ``{name: (module, one-line help)}``; the module exposes ``main(argv) -> int``.
        argv: the arguments after ``prog``.
        configure_logging: called once before the command's module is imported.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage(prog, commands))
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_string(prog))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"unknown command {name!r}; valid commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    configure_logging()
    module = importlib.import_module(commands[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
