"""The ``serve`` command line, generated from :class:`serving.core.config.Settings` so the two cannot drift.

Every settings field becomes one flag (``max_queue`` -> ``--max-queue``); its type, choices, help text and
the default shown in ``--help`` come from the field itself, and the help names the ``XMREID_*`` variable
that sets it too. Parsed values default to None so that an option not given falls back to its
environment variable, then to the field's default (pydantic-settings does that merge; a flag wins).

A few fields keep the flag spelling operators already use: ``image_roots`` is the repeatable
``--image-root``, and ``save_on_mutation`` keeps ``--no-save`` beside the generated
``--save-on-mutation / --no-save-on-mutation``.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from serving.core.config import BACKENDS, LOG_LEVELS, Settings

#: Fields whose flag is not the field name with dashes (kept for the command lines already in use).
FLAG_NAMES: dict[str, str] = {"image_roots": "--image-root", "http_parser": "--http", "event_loop": "--loop"}
#: Extra flags, beside the generated one: (flag, argparse keyword arguments).
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "save_on_mutation": ("--no-save", {"action": "store_false", "help": "same as --no-save-on-mutation"}),
}
#: Choices that a field's validator enforces (argparse shows and checks them too).
CHOICES: dict[str, tuple[str, ...]] = {"backend": BACKENDS, "log_level": LOG_LEVELS,
                                       "http_parser": ("auto", "httptools", "h11"), "event_loop": ("asyncio", "uvloop")}


class SettingsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, but for a settings flag the default shown is the settings field's
    (the parsed default is None on purpose), with the environment variable that also sets it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        field = getattr(action, "settings_field", None)
        if field is None:
            return super()._get_help_string(action)
        default = getattr(action, "settings_default", None)
        shown = "required" if default is PydanticUndefined else _shown(default)
        text = (action.help or "").replace("%", "%%")
        return f"{text} (default: {shown.replace('%', '%%')}; env XMREID_{field.upper()})"


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None`` (and whether None was allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _argument(name: str, field: FieldInfo) -> tuple[list[str], dict[str, Any]]:
    """The ``add_argument`` flags and keyword arguments for one settings field."""
    annotation, _ = _unwrap(field.annotation)
    # Annotated[...] metadata (e.g. NoDecode) is already stripped by pydantic into field.metadata.
    flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
    kwargs: dict[str, Any] = {"dest": name, "default": None, "help": field.description or name}
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        kwargs.update(action="append", type=item, metavar=name.removesuffix("s").upper())
        kwargs["help"] += " (repeatable)"
    elif typing.get_origin(annotation) is Literal:
        kwargs["choices"] = [str(c) for c in typing.get_args(annotation)]
    elif annotation is SecretStr:
        kwargs.update(type=str, metavar="SECRET")
    elif annotation in (int, float, str, Path):
        kwargs["type"] = annotation
        kwargs["metavar"] = {int: "N", float: "X", str: "TEXT", Path: "PATH"}[annotation]
    else:  # a new field of a type this generator does not know: fail loudly in the tests, not at 3 am
        raise TypeError(f"Settings.{name}: no command-line form for type {annotation!r}; extend serving.core.cli")
    if name in CHOICES:
        kwargs.pop("metavar", None)
        kwargs["choices"] = list(CHOICES[name])
    return [flag], kwargs


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`Settings` field (and the :data:`ALIASES`) to ``parser``."""
    group = parser.add_argument_group("settings", "each also read from its XMREID_* environment variable; a flag "
                                                  "wins over the variable")
    for name, field in Settings.model_fields.items():
        flags, kwargs = _argument(name, field)
        action = group.add_argument(*flags, **kwargs)
        action.settings_field = name  # type: ignore[attr-defined]  # read by SettingsHelpFormatter
        default = field.get_default(call_default_factory=True)
        action.settings_default = default  # type: ignore[attr-defined]
        if name in ALIASES:
            alias, extra = ALIASES[name]
            group.add_argument(alias, dest=name, default=None, **extra)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (None means "not given": the environment decides)."""
    fields = set(Settings.model_fields)
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}
