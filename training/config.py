"""YAML configs as argparse defaults, the way timm's ``train.py`` does it.

A two-pass parse: a tiny parser reads only ``--config``; the YAML file's keys (argparse ``dest``
names, e.g. ``batch_pairs``) become the main parser's defaults; then the full command line is
parsed, so explicit flags override the file. The resolved namespace is written next to the
checkpoint as ``args.yaml``, which is itself a valid config for re-running the same job.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from xmreid.atomic import atomic_write
from xmreid.errors import UserError


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        UserError: the file is missing, is not YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"config {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of option: value, found {type(data).__name__}")
    return data


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with ``--config FILE`` supplying defaults.

    Args:
        parser: The full parser; it must define ``--config``.
        argv: Command-line arguments (``None`` = ``sys.argv[1:]``).

    Returns:
        The namespace: built-in defaults < YAML values < explicit flags.

    Raises:
        UserError: unreadable config, or a key that is not an option of ``parser`` (named, with the
            valid keys, because a misspelt key would otherwise be silently ignored).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = load_yaml(known.config)
        values.pop("config", None)  # an args.yaml written by save_args names its own source; ignore it
        dests = {a.dest for a in parser._actions if a.dest not in ("help", "config")}
        unknown = sorted(set(values) - dests)
        if unknown:
            raise UserError(f"config {known.config}: unknown keys {unknown}; valid keys: {', '.join(sorted(dests))}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    return parser.parse_args(argv)


def plain(value: Any) -> Any:
    """Namespace values as YAML/checkpoint-safe plain types (paths become strings)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def save_args(args: argparse.Namespace | dict[str, Any], path: str | Path) -> Path:
    """Write the resolved arguments as YAML, atomically and fsynced (``xmreid.atomic.atomic_write``)."""
    data = plain(vars(args) if isinstance(args, argparse.Namespace) else args)
    return atomic_write(path, lambda fh: fh.write(yaml.safe_dump(data, sort_keys=True).encode()))
