"""``python -m serving audit verify|show PATH``: check and read the server's audit trail (offline).

* ``verify PATH``: recompute every record's hash and follow the chain across the rotated files; exit 0 and
  the record count when intact, exit 1 with one sentence naming the first altered, removed or reordered
  record otherwise.
* ``show PATH [--key NAME] [--since T] [--until T] [--endpoint TEXT] [--json]``: the records that match, one
  line each (time, key, client, endpoint, query hashes, what was returned); ``--json`` prints the records
  themselves. ``T`` is an ISO-8601 time (``2026-12-07T10:00``, UTC unless it names a zone) or an age
  (``30d``, ``12h``, ``90m``: that long ago).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving.core.audit_log import iter_records, log_files, verify
from xmreid.errors import UserError

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> dt.timedelta:
    """``30d`` / ``12h`` / ``90m`` / ``45s`` / ``2w`` as a duration.

    Raises:
        UserError: not a number followed by one of s, m, h, d, w.
    """
    match = _AGE.match(text)
    if not match:
        raise UserError(f"{text!r} is not an age: write a number and a unit, e.g. 30d, 12h, 90m (units s, m, h, d, w)")
    return dt.timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])


def parse_time(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO-8601 time (UTC when it names no zone) or an age before ``now``, as an aware UTC datetime."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if _AGE.match(text):
        return now - parse_age(text)
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{text!r} is neither an ISO-8601 time (2026-12-07T10:00) nor an age (30d, 12h)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for file, number, line in iter_records(path):
        try:
            yield json.loads(line)
        except ValueError:
            raise UserError(f"{file.name} line {number} is not an audit record; run `audit verify`") from None


def select(path: Path, *, key: str | None = None, since: dt.datetime | None = None,
           until: dt.datetime | None = None, endpoint: str | None = None) -> list[dict[str, Any]]:
    """The records of the log at ``path`` that match every filter given."""
    out = []
    for record in _records(path):
        when = parse_time(record["time"])
        if (key is not None and record.get("key") != key) or (since is not None and when < since) \
                or (until is not None and when > until) \
                or (endpoint is not None and endpoint not in record["endpoint"]):
            continue
        out.append(record)
    return out


def summary(record: dict[str, Any]) -> str:
    """One human-readable line for a record."""
    parts = [record["time"], f"key={record.get('key') or '-'}", f"client={record.get('client') or '-'}",
             record.get("endpoint", "?")]
    if record.get("queries"):
        parts.append("queries=" + ",".join(q[:12] for q in record["queries"]))
    if "results" in record:
        tops = [",".join(str(hit[0]) for hit in answer[:5]) for answer in record["results"]]
        parts.append("top=" + " | ".join(tops))
    for field in ("thumbnail", "added", "removed"):
        if field in record:
            parts.append(f"{field}={record[field]}")
    return "  ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving audit", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="action", required=True)
    check = commands.add_parser("verify", help="check every record's hash and the chain "
                                               "(exit 1 names the first bad one)")
    check.add_argument("path", type=Path, help="the audit log (--audit-log of the server)")
    show = commands.add_parser("show", help="print the records that match")
    show.add_argument("path", type=Path, help="the audit log (--audit-log of the server)")
    show.add_argument("--key", help="only this API key's name")
    show.add_argument("--since", help="from this time: ISO-8601 or an age (30d, 12h, 90m)")
    show.add_argument("--until", help="up to this time: ISO-8601 or an age")
    show.add_argument("--endpoint", help="only endpoints containing this text (e.g. /search, thumbnail)")
    show.add_argument("--json", action="store_true", help="print the records as JSON lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``audit verify`` or ``audit show``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not log_files(args.path):
        raise UserError(f"no audit log at {args.path}")
    if args.action == "verify":
        verdict = verify(args.path)
        if not verdict.ok:
            print(f"audit log {args.path}: {verdict.problem}", file=sys.stderr)
            return 1
        print(f"audit log {args.path}: {verdict.records} records, intact")
        return 0
    records = select(args.path, key=args.key, since=parse_time(args.since) if args.since else None,
                     until=parse_time(args.until) if args.until else None, endpoint=args.endpoint)
    for record in records:
        print(json.dumps(record, sort_keys=True) if args.json else summary(record))
    return 0
