"""API keys with roles: the keys file, hashing at rest, identification and what each role allows."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.api.keys import LEGACY_KEY_NAME, KeyRing, hash_key, parse_keys_file
from xmreid.errors import UserError


def _keys_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    return path


def test_a_keys_file_holds_names_roles_and_hashes(tmp_path: Path) -> None:
    text = f"# operators\nalice:admin:{hash_key('a-secret')}\n\nkiosk:search:{hash_key('k-secret').upper()}  # lobby\n"
    ring = KeyRing.load(_keys_file(tmp_path, text))
    assert len(ring) == 2
    alice, kiosk = ring.identify("a-secret"), ring.identify("k-secret")
    assert (alice.name, alice.role, kiosk.name, kiosk.role) == ("alice", "admin", "kiosk", "search")
    assert alice.allows("admin") and alice.allows("search")
    assert kiosk.allows("search") and not kiosk.allows("admin")
    assert ring.identify("wrong") is None and ring.identify("") is None and ring.identify(None) is None
    assert "a-secret" not in _keys_file(tmp_path, text).read_text()  # only the hash is stored


def test_the_legacy_single_key_is_one_admin_key(tmp_path: Path) -> None:
    ring = KeyRing.load(None, legacy_key="s3cret")
    key = ring.identify("s3cret")
    assert (key.name, key.role) == (LEGACY_KEY_NAME, "admin")
    assert not KeyRing.load(None, None)


@pytest.mark.parametrize("line, message", [
    ("alice:admin", "expected name:role:sha256-hex-of-the-key, got 2 field(s)"),
    (f"alice:root:{'0' * 64}", "unknown role 'root'; roles: search, admin"),
    ("alice:admin:the-key-itself", "the key's SHA-256 as 64 hex digits"),
    (f"al ice:admin:{'0' * 64}", "a key name is 1-64 letters"),
])
def test_a_malformed_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(UserError, match="line 2") as info:
        parse_keys_file(_keys_file(tmp_path, f"ok:search:{'1' * 64}\n{line}\n"))
    assert message in str(info.value)


def test_duplicate_names_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="repeated: a"):
        KeyRing.load(_keys_file(tmp_path, f"a:search:{'1' * 64}\na:admin:{'2' * 64}\n"))
    with pytest.raises(UserError, match="holds no key"):
        parse_keys_file(_keys_file(tmp_path, "# nothing\n"))
    with pytest.raises(UserError, match="cannot read the API keys file"):
        parse_keys_file(tmp_path / "absent")
