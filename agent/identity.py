"""Who is asking: address, user name and directory groups -> the policy groups they are in."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache

from agent.config import GroupConfig
from agent.model import Client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Identity:
    """Resolves a client to policy groups; built once per config, safe to share between threads."""

    __slots__ = ("_by_network", "_by_user", "_by_user_group", "address_groups", "user_based")

    def __init__(self, groups: Mapping[str, GroupConfig]) -> None:
        self._by_network = tuple(
            (net, name) for name, g in sorted(groups.items()) for net in g.networks
        )
        self._by_user: dict[str, frozenset[str]] = _invert({n: g.users for n, g in groups.items()})
        self._by_user_group = _invert({n: g.user_groups for n, g in groups.items()})
        self.user_based = frozenset(n for n, g in groups.items() if g.user_based)
        self.address_groups = lru_cache(maxsize=65536)(self._address_groups)

    def _address_groups(self, ip: str) -> frozenset[str]:
        """Groups whose networks contain `ip`; an unparsable address is in none."""
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return frozenset()
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return frozenset(name for net, name in self._by_network if addr in net)

    def identify(self, ip: str, user: str | None = None, user_groups: Iterable[str] = ()) -> Client:
        """The client with every group its address, user name and directory groups put it in."""
        groups = self.address_groups(ip)
        if user:
            groups |= self._by_user.get(user.lower(), frozenset())
            for ug in user_groups:
                groups |= self._by_user_group.get(ug.lower(), frozenset())
        return Client(ip=ip, user=user or None, groups=groups)


def _invert(members: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for group, names in members.items():
        for name in names:
            out.setdefault(name.lower(), set()).add(group)
    return {k: frozenset(v) for k, v in out.items()}
