"""No-decrypt pass-through connections, counted from the kernel and paced like HTTP transfers.

mitmproxy relays a pass-through connection (`ignore_connection`) as raw TCP without hooks,
so a periodic `sweep` reads its byte counts from the kernel (`agent.pacing.kernel_counts`:
what was sent on the client socket is downloaded, on the server socket uploaded; bytes
received and not yet relayed are counted as on their way, so that a connection that ends
between sweeps is recorded whole, the relay's own buffer of at most ~128 KB aside). The
bytes count towards the client's window; once the connection or the window passes the
threshold in the schedule, both sockets get the transfer's share of the same pools
(`Shaper.begin`). Its end is logged and returned for the `throttle` record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent import pacing
from agent.shaping import Shaper, Transfer

SWEEP_EVERY = 0.5  # seconds between kernel reads; bounds how late pacing starts
MAX_TUNNELS = 10_000  # watched at once; further connections are counted only by the window


@dataclass(slots=True)
class Tunnel:
    """One watched pass-through connection and its last kernel counts (client, server)."""

    client_conn: Any
    server_conn: Any
    host: str
    acked: list[int] = field(default_factory=lambda: [0, 0])  # delivered to each peer
    # on this host, not yet delivered: each socket's send queue plus what it received and the
    # relay has not read yet (bound for the other peer)
    queued: list[int] = field(default_factory=lambda: [0, 0])
    paced_from: int = 0  # acknowledged bytes when pacing began
    last: float = 0.0  # when the counts last grew
    linked: bool = False  # the server socket has been seen (opened after the ClientHello)

    @property
    def key(self) -> str:
        """The transfer key of this connection in the shaper."""
        return f"{self.client_conn.id}/passthrough"

    @property
    def written(self) -> int:
        """Bytes delivered or on their way through this host, both ways."""
        return sum(self.acked) + sum(self.queued)


class Passthroughs:
    """The pass-through connections of one worker, swept every SWEEP_EVERY seconds."""

    def __init__(self, shaper: Shaper, proxyserver: Callable[[], Any]) -> None:
        self.shaper = shaper
        self._proxyserver = proxyserver
        self._tunnels: dict[str, Tunnel] = {}

    def watch(
        self, client_conn: Any, server_conn: Any, host: str, groups: Iterable[str], now: float
    ) -> bool:
        """Start counting a pass-through connection; False for exempt ones (or too many).

        Paced at once when the client's window is already over the threshold.
        """
        throttle = self.shaper.throttle
        if throttle.exempt(host, groups) or len(self._tunnels) >= MAX_TUNNELS:
            return False
        tunnel = self._tunnels[client_conn.id] = Tunnel(client_conn, server_conn, host, last=now)
        if throttle.should_pace(client_conn.peername[0], None, now):
            self._pace(tunnel, now)
        return True

    def sweep(self, now: float) -> None:
        """Count every watched connection's new bytes; pace those that passed the threshold."""
        if not self._tunnels:
            return
        server = self._proxyserver()
        unpaced_socket = False
        for tunnel in list(self._tunnels.values()):
            unpaced_socket |= self._count(tunnel, server, now)
        if unpaced_socket:
            self.shaper.rebalance()

    def _count(self, tunnel: Tunnel, server: Any, now: float) -> bool:
        """Count new bytes, pace once over the threshold; True: a paced socket needs its rate."""
        before, snapshot, appeared = tunnel.written, (*tunnel.acked, *tunnel.queued), False
        for i, conn in enumerate((tunnel.client_conn, tunnel.server_conn)):
            sock = pacing.connection_socket(server, tunnel.client_conn, conn)
            counts = None if sock is None else pacing.kernel_counts(sock)
            if counts is None:
                continue  # not open yet, or gone: its last counts stand
            appeared |= i == 1 and not tunnel.linked
            tunnel.linked |= i == 1
            acked, queued, unread = counts
            tunnel.acked[i], tunnel.queued[i] = acked, queued + unread
        grown = tunnel.written - before
        transfer = self.shaper.paced(tunnel.key)
        if transfer is not None:  # delivered while paced, and what is still to come (paced)
            transfer.paced_bytes = sum(tunnel.acked) - tunnel.paced_from + sum(tunnel.queued)
        if snapshot != (*tunnel.acked, *tunnel.queued):
            tunnel.last = now
        if grown > 0:
            throttle, client = self.shaper.throttle, tunnel.client_conn.peername[0]
            recent = throttle.window.add(client, grown, now)
            over = max(tunnel.written, recent) > throttle.spec.threshold
            if transfer is None and over and throttle.in_schedule(now):
                self._pace(tunnel, now)
                return False
        return appeared and transfer is not None

    def _pace(self, tunnel: Tunnel, now: float) -> None:
        conns = (tunnel.client_conn, tunnel.server_conn)
        client = tunnel.client_conn.peername[0]
        paced = Transfer(tunnel.client_conn, conns, client, tunnel.host, now, "passthrough")
        paced.paced_bytes = sum(tunnel.queued)  # queued bytes leave paced from now on
        tunnel.paced_from = sum(tunnel.acked)
        self.shaper.begin(tunnel.key, paced, now)

    def close(self, client_conn: Any) -> tuple[str, dict[str, Any]] | None:
        """The connection ended: stop watching; (host, summary) when it was paced."""
        tunnel = self._tunnels.pop(client_conn.id, None)
        if tunnel is None:
            return None
        summary = self.shaper.end(tunnel.key, tunnel.last)
        return None if summary is None else (tunnel.host, summary)
