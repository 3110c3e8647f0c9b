"""Identity: addresses, user names and directory groups map to policy groups."""

from __future__ import annotations

import ipaddress

import pytest

from agent.config import GroupConfig
from agent.identity import Identity

GROUPS = {
    "staff": GroupConfig(
        networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    ),
    "hr": GroupConfig(
        networks=(ipaddress.ip_network("10.20.30.0/24"),), user_groups=("HR-Recruiting",)
    ),
    "auditors": GroupConfig(users=("Alice",)),
}


@pytest.mark.parametrize(
    ("ip", "user", "user_groups", "expected"),
    [
        pytest.param("10.1.2.3", None, (), {"staff"}, id="address-only"),
        pytest.param("10.20.30.9", None, (), {"staff", "hr"}, id="nested-networks"),
        pytest.param("192.0.2.1", None, (), set(), id="outside-every-network"),
        pytest.param("fd00::1", None, (), {"staff"}, id="ipv6"),
        pytest.param("::ffff:10.1.2.3", None, (), {"staff"}, id="ipv4-mapped-ipv6"),
        pytest.param("fe80::1%eth0", None, (), set(), id="scoped-ipv6"),
        pytest.param("192.0.2.1", "alice", (), {"auditors"}, id="user-name-case-insensitive"),
        pytest.param("192.0.2.1", "bob", ("hr-recruiting",), {"hr"}, id="directory-group"),
        pytest.param("192.0.2.1", None, ("hr-recruiting",), set(), id="groups-need-a-user"),
        pytest.param("not-an-ip", None, (), set(), id="garbage-address"),
    ],
)
def test_identify(
    ip: str, user: str | None, user_groups: tuple[str, ...], expected: set[str]
) -> None:
    """The client is in every group its address, name or directory groups put it in."""
    client = Identity(GROUPS).identify(ip, user, user_groups)
    assert client.groups == expected
    assert client.user == user


def test_user_based_groups() -> None:
    """Groups defined by users or directory groups are known, so DNS can tell decisions may vary."""
    assert Identity(GROUPS).user_based == {"hr", "auditors"}
