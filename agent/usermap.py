"""Address -> user map for transparent mode (exported from DHCP/directory), reloaded on change.

File format: one `address user` pair per line; `#` starts a comment. The file is re-read
when its mtime or size changes (checked at most once per `interval` seconds); a file that
fails to read keeps the last good map.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path


def parse_user_map(text: str) -> dict[str, str]:
    """`{address: user}` from the file text; malformed lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.partition("#")[0].split()
        if len(fields) != 2:
            continue
        try:
            addr = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        out[addr] = fields[1]
    return out


class UserMap:
    """Looks up the user behind a client address; None when unmapped or no file is set."""

    def __init__(
        self,
        path: Path | None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._interval = interval
        self._clock = clock
        self._checked = float("-inf")
        self._stamp: tuple[int, int] | None = None
        self._map: dict[str, str] = {}

    def lookup(self, ip: str) -> str | None:
        """The user mapped to `ip` (IPv4-mapped IPv6 addresses count as IPv4)."""
        if self.path is None:
            return None
        self._refresh()
        ip = ip.removeprefix("::ffff:")
        return self._map.get(ip)

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval or self.path is None:
            return
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._map = parse_user_map(self.path.read_text(encoding="utf-8"))
                self._stamp = stamp
        except OSError:
            return  # keep the last good map
