"""Applies `agent.throttle` decisions to transfers: stream, count, pace, log.

Large bodies are streamed (never buffered); every streamed chunk is counted in the client's
byte window; once a transfer is paced its sockets get their fair share of the client's and
the aggregate pool (`agent.pacing`), re-balanced whenever a paced transfer starts or ends.
A transfer is an HTTP download, an HTTP upload or a pass-through connection
(`agent.passthrough`, which counts from the kernel instead of a stream callable).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from mitmproxy import http

from agent import pacing
from agent.shared_state import PacedCensus
from agent.throttle import Throttle

SYNC_EVERY = 1.0  # seconds between exchanges of paced-transfer counts with other workers
STREAM_ABOVE = 1_000_000  # bodies above this (or of unknown size) are streamed and counted
log = structlog.get_logger("aupguard.throttle")


@dataclass(slots=True)
class Transfer:
    """One paced transfer: the sockets it paces and counters for the log line."""

    client_conn: Any  # the client connection whose handler holds the sockets
    targets: tuple[Any, ...]  # the connections whose sockets are paced
    client: str
    host: str
    started: float
    direction: str = "download"  # download (client socket), upload (server), passthrough (both)
    paced_bytes: int = 0
    applied: bool = False  # an upload's server socket is paced from its first chunk


class Shaper:
    """Per-transfer throttling for the enforce addon."""

    def __init__(
        self, throttle: Throttle, proxyserver: Callable[[], Any], census: PacedCensus | None = None
    ) -> None:
        self._census = census  # several workers: pools are shared host-wide through it
        self._elsewhere: dict[str, int] | None = {}
        self._synced = 0.0
        self.throttle = throttle
        self.proxyserver = proxyserver
        self._paced: dict[str, Transfer] = {}
        self._draining: dict[str, Any] = {}  # client connection id -> connection still paced

    def on_response_headers(self, flow: http.HTTPFlow, groups: Iterable[str], now: float) -> None:
        """Decide whether to pace; stream and count large or unknown-size bodies."""
        resp = flow.response
        if resp is None or self.throttle.exempt(flow.request.pretty_host, groups):
            return
        client = flow.client_conn.peername[0]
        size = _content_length(resp)
        if self.throttle.should_pace(client, size, now):
            self._start(flow, client, now)
        if flow.id in self._paced or size is None or size > STREAM_ABOVE:
            resp.stream = self._counter(flow, client)

    def on_request_headers(self, flow: http.HTTPFlow, groups: Iterable[str], now: float) -> None:
        """Count a streamed or unknown-size upload; pace it once it is (or turns out) large.

        An upload of unknown size (chunked) is streamed from its first byte. The server socket
        is paced: it exists from the body's first chunk on, where the rate is applied.
        """
        req = flow.request
        size = _content_length(req)
        if (not req.stream and size is not None) or self.throttle.exempt(req.pretty_host, groups):
            return
        client, key = flow.client_conn.peername[0], _upload_key(flow)
        if self.throttle.should_pace(client, size, now):
            self.begin(key, _upload(flow, client, now), now, apply=False)

        def count(chunk: bytes) -> bytes:
            now = time.time()
            total = self.throttle.window.add(client, len(chunk), now)
            transfer = self._paced.get(key)
            over = total > self.throttle.spec.threshold
            if transfer is None and over and self.throttle.should_pace(client, None, now):
                transfer = self.begin(key, _upload(flow, client, now), now, apply=False)
            if transfer is not None:
                transfer.paced_bytes += len(chunk)
                if not transfer.applied:  # the server connection is chosen by now
                    transfer.targets, transfer.applied = (flow.server_conn,), True
                    self.rebalance()
                else:
                    self._resync(now)
            return chunk

        req.stream = count

    def _counter(self, flow: http.HTTPFlow, client: str) -> Callable[[bytes], bytes]:
        def count(chunk: bytes) -> bytes:
            now = time.time()
            total = self.throttle.window.add(client, len(chunk), now)
            transfer = self._paced.get(flow.id)
            if transfer is not None:
                transfer.paced_bytes += len(chunk)
                self._resync(now)
            elif total > self.throttle.spec.threshold and self.throttle.should_pace(
                client, None, now
            ):
                self._start(flow, client, now)
            return chunk

        return count

    def _start(self, flow: http.HTTPFlow, client: str, now: float) -> None:
        conn = flow.client_conn
        self.begin(flow.id, Transfer(conn, (conn,), client, flow.request.pretty_host, now), now)

    def begin(self, key: str, transfer: Transfer, now: float, *, apply: bool = True) -> Transfer:
        """Register a paced transfer and re-balance every paced socket (unless `apply` waits)."""
        self._paced[key] = transfer
        self.throttle.start(key, transfer.client)
        self._sync(now)
        if apply:
            transfer.applied = True
            self.rebalance()
        return transfer

    def paced(self, key: str) -> Transfer | None:
        """The paced transfer under `key`, if any."""
        return self._paced.get(key)

    def _resync(self, now: float) -> None:
        """With several workers, re-read the others' counts now and then and re-balance."""
        if self._census is not None and now - self._synced >= SYNC_EVERY:
            self._sync(now)
            self.rebalance()

    def rebalance(self) -> None:
        """Give every paced transfer's sockets its current share."""
        server = self.proxyserver()
        for key, rate in self.rates().items():
            transfer = self._paced.get(str(key))
            if transfer is None or not transfer.applied:
                continue
            for target in transfer.targets:
                sock = pacing.connection_socket(server, transfer.client_conn, target)
                if sock is not None:
                    pacing.set_rate(sock, rate)
                elif transfer.direction == "download":  # an upload's socket may not be open yet
                    log.warning("pacing_unavailable", transfer=key, reason="socket gone")

    def on_done(self, flow: http.HTTPFlow, now: float) -> dict[str, Any] | None:
        """Count buffered bodies; end a paced transfer's share, log it and return its summary.

        A download's socket stays paced: mitmproxy finishes a flow when the body is handed to
        the transport, not when the client has it. `release` resets it at the connection's
        next request (keep-alive reuses sockets) or its end. An upload's server socket is
        unpaced at once (upstream connections are reused).
        """
        upload = self.end(_upload_key(flow), now, unpace=True)
        if flow.id not in self._paced:
            client = flow.client_conn.peername[0]
            for message in (flow.request, flow.response):
                if message is not None and not message.stream and message.raw_content:
                    self.throttle.window.add(client, len(message.raw_content), now)
            return upload
        self._draining[flow.client_conn.id] = flow.client_conn
        return self.end(flow.id, now)

    def end(self, key: str, now: float, *, unpace: bool = False) -> dict[str, Any] | None:
        """End a paced transfer: free its share, log it; its summary (None if not paced)."""
        transfer = self._paced.get(key)
        if transfer is None:
            return None
        rate = self.rates().get(key, 1)
        del self._paced[key]
        self.throttle.finish(key)
        if unpace:
            server = self.proxyserver()
            for target in transfer.targets:
                sock = pacing.connection_socket(server, transfer.client_conn, target)
                if sock is not None:
                    pacing.set_rate(sock, None)
        self._sync(now)
        self.rebalance()
        took = max(now - transfer.started, transfer.paced_bytes / rate, 1e-3)
        summary = {
            "bytes": transfer.paced_bytes,
            "duration_s": round(took, 3),
            "avg_rate": round(transfer.paced_bytes / took),
        }
        log.info(
            "throttled_transfer",
            client=transfer.client, host=transfer.host, direction=transfer.direction, **summary,
        )  # fmt: skip
        return summary

    def rates(self) -> dict[object, int]:
        """Each paced transfer's rate; with several workers, shares of the host-wide pools.

        min(client rate / the client's transfers on every worker, aggregate / all transfers);
        if the other workers' counts cannot be read, a static 1/N share of the aggregate.
        """
        if self._census is None:
            return self.throttle.rates()
        spec = self.throttle.spec
        local = Counter(t.client for t in self._paced.values())
        others, aggregate = self._elsewhere, float(spec.aggregate_rate)
        if others is None:
            others, aggregate = {}, aggregate / self._census.workers
        total = sum(local.values()) + sum(others.values())
        rates: dict[object, int] = {}
        for key, t in self._paced.items():
            client_share = spec.client_rate / (local[t.client] + others.get(t.client, 0))
            rates[key] = max(1, int(min(client_share, aggregate / total)))
        return rates

    def _sync(self, now: float) -> None:
        """Publish this worker's paced transfers and read the others' (several workers only)."""
        if self._census is None:
            return
        self._synced = now
        self._census.publish(Counter(t.client for t in self._paced.values()), now)
        self._elsewhere = self._census.elsewhere(now)

    def release(self, client: Any) -> None:
        """Unpace a connection whose paced response is delivered (its next request came)."""
        conn = self._draining.pop(client.id, None)
        if conn is None:
            return
        sock = pacing.connection_socket(self.proxyserver(), conn, conn)
        if sock is not None:
            pacing.set_rate(sock, None)

    def forget(self, client: Any) -> None:
        """The client connection closed: nothing left to unpace."""
        self._draining.pop(client.id, None)


def _upload(flow: http.HTTPFlow, client: str, now: float) -> Transfer:
    conn = flow.client_conn
    return Transfer(conn, (flow.server_conn,), client, flow.request.pretty_host, now, "upload")


def _upload_key(flow: http.HTTPFlow) -> str:
    return f"{flow.id}/upload"


def _content_length(message: http.Message) -> int | None:
    try:
        return int(message.headers["content-length"])
    except (KeyError, ValueError):
        return None
