"""Retention ages as operators write them: ``30d``, ``12h``, ``90m`` (a whole number and one unit).

One parser for the ``gallery expire --older-than`` option and the ``expire_older_than`` / ``expire_every``
settings, so a value that one accepts the other accepts too. Minutes are the smallest unit: retention is a
policy over days and hours, and a schedule finer than a minute would only rewrite the gallery for nothing.
"""

from __future__ import annotations

import re

_AGE = re.compile(r"^\s*(\d+)\s*([mhd])\s*$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}


def parse_age(text: str) -> int:
    """The age ``text`` names, in seconds.

    Args:
        text: a positive whole number followed by ``m`` (minutes), ``h`` (hours) or ``d`` (days).

    Raises:
        ValueError: anything else (one sentence naming the accepted form).
    """
    match = _AGE.match(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an age: write a positive whole number and a unit, e.g. 30d, 12h or 90m "
                         f"(units: m minutes, h hours, d days)")
    return int(match.group(1)) * _UNIT_S[match.group(2)]
