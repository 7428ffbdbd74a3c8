"""API keys with roles: who may search, and who may change the gallery.

A keys file holds one key per line, ``name:role:sha256-hex-of-the-key`` (``#`` starts a comment), so the
server never stores a key, only its hash; clients send the key itself in ``X-API-Key``. Roles:

- ``search``: the searches, thumbnails, gallery stats and the operator pages' data;
- ``admin``: everything, including gallery changes and reloads.

The single ``XMREID_API_KEY`` of earlier versions is one ``admin`` key named ``api-key``. A presented key is
hashed and compared with every stored hash in constant time (``hmac.compare_digest``), all of them each
time, so the answer's timing does not tell which key nearly matched. Logs and the audit trail name the key,
never the key itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xmreid.errors import UserError

#: role -> the permissions it grants.
ROLES: dict[str, frozenset[str]] = {"search": frozenset({"search"}), "admin": frozenset({"search", "admin"})}
PERMISSIONS = ("search", "admin")
LEGACY_KEY_NAME = "api-key"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a keys file stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One configured key: its name (logged), role and SHA-256 digest."""

    name: str
    role: str
    digest: bytes

    def allows(self, permission: str) -> bool:
        """True when this key's role grants ``permission`` (``search`` or ``admin``)."""
        return permission in ROLES[self.role]


class KeyRing:
    """The configured keys; empty when the server runs without keys."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.keys = tuple(keys)
        names = [k.name for k in self.keys]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"API key names must be unique; repeated: {', '.join(duplicates)}")

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def load(cls, path: str | Path | None = None, legacy_key: str | None = None) -> KeyRing:
        """Keys from a keys file and/or the single legacy admin key.

        Raises:
            UserError: the file cannot be read, or a line is malformed (named by its number).
        """
        keys = list(parse_keys_file(path)) if path else []
        if legacy_key:
            keys.append(ApiKey(LEGACY_KEY_NAME, "admin", bytes.fromhex(hash_key(legacy_key))))
        return cls(keys)

    def identify(self, presented: str | None) -> ApiKey | None:
        """The key ``presented`` (the ``X-API-Key`` value) is, or None when it matches none."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for key in self.keys:  # every key, every time: no early exit to time
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def parse_keys_file(path: str | Path) -> list[ApiKey]:
    """Read ``name:role:sha256-hex`` lines (blank lines and ``#`` comments are skipped).

    Raises:
        UserError: unreadable file, a malformed line, an unknown role, a hash that is not 64 hex digits.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the API keys file {path}: {exc}") from None
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        where = f"{path} line {number}"
        if len(parts) != 3:
            raise UserError(f"{where}: expected name:role:sha256-hex-of-the-key, got {len(parts)} field(s)")
        name, role, digest = (p.strip() for p in parts)
        if not _NAME.match(name):
            raise UserError(f"{where}: a key name is 1-64 letters, digits or _.@- (got {name!r})")
        if role not in ROLES:
            raise UserError(f"{where}: unknown role {role!r}; roles: {', '.join(ROLES)}")
        if not _HEX.match(digest.lower()):
            raise UserError(f"{where}: the third field is the key's SHA-256 as 64 hex digits (not the key itself; "
                            f"make it with: printf %s KEY | sha256sum)")
        keys.append(ApiKey(name, role, bytes.fromhex(digest.lower())))
    if not keys:
        raise UserError(f"the API keys file {path} holds no key")
    return keys
