"""The Host allow-list (DNS-rebinding guard): names, ports, IPv6, wildcards, the exempt health checks."""

from __future__ import annotations

import pytest

from serving.api.hosts import HostAllowList, host_name


@pytest.mark.parametrize("header, name", [
    ("localhost:8000", "localhost"), ("LocalHost", "localhost"), ("127.0.0.1:80", "127.0.0.1"),
    ("[::1]:8000", "::1"), ("[::1]", "::1"), ("::1", "::1"), ("search.example.com", "search.example.com"),
])
def test_host_name_strips_port_brackets_and_case(header: str, name: str) -> None:
    assert host_name(header) == name


def test_default_list_is_loopback_and_a_specific_bind_address() -> None:
    hosts = HostAllowList([], bind="127.0.0.1")
    for ok in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "[0:0:0:0:0:0:0:1]:80", None):
        assert hosts.allows(ok), ok
    for bad in ("evil.example", "evil.example:8000", "localhost.evil.example", "10.0.0.5", ""):
        assert not hosts.allows(bad), bad
    assert HostAllowList([], bind="10.0.0.5").allows("10.0.0.5:8000")
    assert not HostAllowList([], bind="0.0.0.0").allows("0.0.0.0")  # a wildcard bind is not a usable name


def test_named_hosts_wildcards_and_any() -> None:
    hosts = HostAllowList(["reid.example.org", "*.cams.example.org"])
    assert hosts.allows("reid.example.org:443") and hosts.allows("REID.example.org.")
    assert hosts.allows("north.cams.example.org") and not hosts.allows("cams.example.org.evil")
    assert not hosts.allows("example.org")
    assert HostAllowList(["*"]).allows("anything.at.all")


def test_server_refuses_a_foreign_host_with_json_and_answers_its_own(make_client) -> None:
    client = make_client()
    refused = client.get("/gallery/stats", headers={"Host": "rebind.attacker.example"})
    assert refused.status_code == 400
    assert refused.json()["error"] == "host_not_allowed" and "--allowed-hosts" in refused.json()["detail"]
    assert client.get("/gallery/stats", headers={"Host": "127.0.0.1:8000"}).status_code == 200
    assert client.get("/gallery/stats").status_code == 200  # localhost
    # Health checks answer whatever the name (orchestrators probe by address); they reveal nothing.
    assert client.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200


def test_allowed_hosts_setting_from_flag_values_and_env_text(make_client) -> None:
    from serving.core.config import Settings

    client = make_client(allowed_hosts=["reid.example.org,*.lan", "kiosk"])
    for host in ("reid.example.org", "cam.lan:8000", "kiosk"):
        assert client.get("/gallery/stats", headers={"Host": host}).status_code == 200, host
    assert client.get("/gallery/stats", headers={"Host": "other.example"}).status_code == 400
    settings = Settings(model="m.onnx", gallery="g", allowed_hosts="a.example, b.example")
    assert settings.allowed_hosts == ["a.example", "b.example"]
