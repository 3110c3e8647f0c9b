"""Applies `agent.throttle` decisions to mitmproxy flows: stream, count, pace, log.

Large bodies are streamed (never buffered); every streamed chunk is counted in the client's
byte window; once a transfer is paced its socket gets its fair share of the client's and the
aggregate pool (`agent.pacing`), re-balanced whenever a paced transfer starts or ends.
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
    """One paced transfer: its flow and counters for the log line."""

    flow: http.HTTPFlow
    client: str
    started: float
    paced_bytes: int = 0
    upload: bool = False  # paces the server socket (the request body) instead of the client's


class Shaper:
    """Per-flow throttling for the enforce addon."""

    def __init__(
        self, throttle: Throttle, proxyserver: Callable[[], Any], census: PacedCensus | None = None
    ) -> None:
        self._census = census  # several workers: pools are shared host-wide through it
        self._elsewhere: dict[str, int] | None = {}
        self._synced = 0.0
        self.throttle = throttle
        self._proxyserver = proxyserver
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
        """Pace a large upload (request Content-Length over the threshold) on the server socket.

        Only streamed bodies (mitmproxy streams those over `stream_large_bodies`): the server
        connection is known at the first chunk, where the rate is applied.
        """
        size = _content_length(flow.request)
        if not flow.request.stream or size is None or size <= self.throttle.spec.threshold:
            return
        client = flow.client_conn.peername[0]
        if self.throttle.exempt(flow.request.pretty_host, groups):
            return
        if not self.throttle.should_pace(client, size, now):
            return
        key = _upload_key(flow)
        self._paced[key] = Transfer(flow, client, now, upload=True)
        self.throttle.start(key, client)
        self._sync(now)
        applied = False

        def count(chunk: bytes) -> bytes:
            nonlocal applied
            transfer = self._paced.get(key)
            if transfer is not None:
                transfer.paced_bytes += len(chunk)
                if not applied:  # the server connection exists from the first chunk on
                    applied = True
                    self._rebalance()
            self.throttle.window.add(client, len(chunk), time.time())
            return chunk

        flow.request.stream = count

    def _counter(self, flow: http.HTTPFlow, client: str) -> Callable[[bytes], bytes]:
        def count(chunk: bytes) -> bytes:
            now = time.time()
            total = self.throttle.window.add(client, len(chunk), now)
            transfer = self._paced.get(flow.id)
            if transfer is not None:
                transfer.paced_bytes += len(chunk)
                if self._census is not None and now - self._synced >= SYNC_EVERY:
                    self._sync(now)
                    self._rebalance()
            elif total > self.throttle.spec.threshold and self.throttle.should_pace(
                client, None, now
            ):
                self._start(flow, client, now)
            return chunk

        return count

    def _start(self, flow: http.HTTPFlow, client: str, now: float) -> None:
        self._paced[flow.id] = Transfer(flow, client, now)
        self.throttle.start(flow.id, client)
        self._sync(now)
        self._rebalance()

    def _rebalance(self) -> None:
        server = self._proxyserver()
        for key, rate in self.rates().items():
            transfer = self._paced.get(str(key))
            if transfer is None:
                continue
            conn = transfer.flow.client_conn
            target = transfer.flow.server_conn if transfer.upload else conn
            sock = pacing.connection_socket(server, conn, target)
            if sock is None:
                if not transfer.upload:  # an upload's server socket may not be open yet
                    log.warning("pacing_unavailable", flow=transfer.flow.id, reason="socket gone")
                continue
            pacing.set_rate(sock, rate)

    def on_done(self, flow: http.HTTPFlow, now: float) -> dict[str, Any] | None:
        """Count buffered bodies; end a paced transfer's share, log it and return its summary.

        The socket stays paced: mitmproxy finishes a flow when the body is handed to the
        transport, not when the client has it. `release` resets it at the connection's next
        request (keep-alive reuses sockets) or its end.
        """
        upload = self._finish_upload(flow, now)
        transfer = self._paced.pop(flow.id, None)
        if transfer is None and upload is not None:
            return upload
        if transfer is None:
            resp = flow.response
            if resp is not None and not resp.stream and resp.raw_content:
                self.throttle.window.add(flow.client_conn.peername[0], len(resp.raw_content), now)
            return None
        rate = self.throttle.rates().get(flow.id, 1)
        self.throttle.finish(flow.id)
        self._draining[flow.client_conn.id] = flow.client_conn
        self._sync(now)
        self._rebalance()
        took = max(now - transfer.started, transfer.paced_bytes / rate)
        summary = {
            "bytes": transfer.paced_bytes,
            "duration_s": round(took, 3),
            "avg_rate": round(transfer.paced_bytes / took),
        }
        log.info(
            "throttled_transfer", client=transfer.client, host=flow.request.pretty_host, **summary
        )
        return summary

    def _finish_upload(self, flow: http.HTTPFlow, now: float) -> dict[str, Any] | None:
        """End a paced upload: unpace its server socket (reused by later requests), log it."""
        key = _upload_key(flow)
        transfer = self._paced.pop(key, None)
        if transfer is None:
            return None
        rate = self.throttle.rates().get(key, 1)
        self.throttle.finish(key)
        sock = pacing.connection_socket(self._proxyserver(), flow.client_conn, flow.server_conn)
        if sock is not None:
            pacing.set_rate(sock, None)
        self._sync(now)
        self._rebalance()
        took = max(now - transfer.started, transfer.paced_bytes / rate, 1e-3)
        summary = {
            "bytes": transfer.paced_bytes,
            "duration_s": round(took, 3),
            "avg_rate": round(transfer.paced_bytes / took),
        }
        log.info(
            "throttled_transfer",
            client=transfer.client, host=flow.request.pretty_host, direction="upload", **summary,
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
        sock = pacing.connection_socket(self._proxyserver(), conn, conn)
        if sock is not None:
            pacing.set_rate(sock, None)

    def forget(self, client: Any) -> None:
        """The client connection closed: nothing left to unpace."""
        self._draining.pop(client.id, None)


def _upload_key(flow: http.HTTPFlow) -> str:
    return f"{flow.id}/upload"


def _content_length(message: http.Message) -> int | None:
    try:
        return int(message.headers["content-length"])
    except (KeyError, ValueError):
        return None
