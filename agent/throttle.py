"""Throttling large transfers: bounded token buckets, per-client byte windows, fair shares.

Pure: every function takes `now` (or a clock) and does no I/O. The proxy asks `Throttle`
whether a transfer is paced and at what rate; `agent.pacing` applies the rate to sockets.
Like Squid's delay pools, each client has a pool and all throttled transfers share an
aggregate pool; a client's bytes add up over a window so that Range requests and parallel
connections below the threshold cannot add up to an unpaced large transfer.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MAX_CLIENTS = 65_536
MIN_PACED_SIZE = 65_536  # smaller bodies fit in socket buffers: pacing them only costs shares
MAX_WINDOW_SLOTS = 3_600


class TokenBucket:
    """`rate` bytes/s with at most `burst` saved up; `reserve(n)` says how long to wait."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self, n: float) -> float:
        """Take `n` bytes (possibly into debt); seconds until the debt is paid (0 if none)."""
        self._refill()
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class ByteWindow:
    """Bytes per client over the last `window` seconds, in one-second slots; bounded."""

    __slots__ = ("_clients", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._clients: OrderedDict[str, deque[tuple[int, int]]] = OrderedDict()

    def add(self, client: str, n: int, now: float) -> int:
        """Count `n` bytes for `client`; the client's total within the window."""
        slots = self._clients.get(client)
        if slots is None:
            slots = self._clients[client] = deque(maxlen=MAX_WINDOW_SLOTS)
            while len(self._clients) > MAX_CLIENTS:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        second = int(now)
        if slots and slots[-1][0] == second:
            slots[-1] = (second, slots[-1][1] + n)
        else:
            slots.append((second, n))
        return self.total(client, now)

    def total(self, client: str, now: float) -> int:
        """The client's bytes within the window (expired slots are dropped)."""
        slots = self._clients.get(client)
        if not slots:
            return 0
        while slots and slots[0][0] <= now - self.window:
            slots.popleft()
        return sum(n for _, n in slots)


@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """Throttle settings (from ProxySection), parsed once."""

    threshold: int
    client_rate: int
    aggregate_rate: int
    window: float
    exempt_groups: frozenset[str] = frozenset()
    exempt_hosts: frozenset[str] = frozenset()


class Throttle:
    """Which transfers are paced, and each one's share of its client's and the aggregate pool."""

    def __init__(self, spec: ThrottleSpec, active: Callable[[float], bool]) -> None:
        self.spec = spec
        self._in_schedule = active
        self.window = ByteWindow(spec.window)
        self._transfers: dict[object, str] = {}  # transfer key -> client

    def exempt(self, host: str, groups: Iterable[str]) -> bool:
        """Exempt groups (backup servers) and hosts (update mirrors, with subdomains)."""
        if self.spec.exempt_groups.intersection(groups):
            return True
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.spec.exempt_hosts for i in range(len(parts)))

    def in_schedule(self, now: float) -> bool:
        """True while the throttle schedule is active."""
        return self._in_schedule(now)

    def should_pace(self, client: str, size: int | None, now: float) -> bool:
        """True in the schedule when `size` or the client's recent bytes pass the threshold.

        Bodies known to be smaller than MIN_PACED_SIZE are never paced.
        """
        if (size is not None and size < MIN_PACED_SIZE) or not self._in_schedule(now):
            return False
        recent = self.window.total(client, now)
        return (size or 0) > self.spec.threshold or recent + (size or 0) > self.spec.threshold

    def start(self, key: object, client: str) -> None:
        """Register a paced transfer."""
        self._transfers[key] = client

    def finish(self, key: object) -> bool:
        """Forget a transfer; True when it was paced."""
        return self._transfers.pop(key, None) is not None

    def rates(self) -> dict[object, int]:
        """Each paced transfer's rate: min(client pool / its transfers, aggregate / all)."""
        per_client: dict[str, int] = {}
        for c in self._transfers.values():
            per_client[c] = per_client.get(c, 0) + 1
        total = len(self._transfers)
        return {
            key: max(
                1, int(min(self.spec.client_rate / per_client[c], self.spec.aggregate_rate / total))
            )
            for key, c in self._transfers.items()
        }


class ClientRateLimiter:
    """A token bucket per client address (DNS queries): `rate` per second, bursts of twice that.

    Lists instead of TokenBucket objects: it runs for every query. Bounded: the table is
    emptied when it holds `max_clients` addresses.
    """

    def __init__(self, rate: int, max_clients: int = 100_000) -> None:
        self.rate = float(rate)
        self.burst = 2.0 * rate
        self.max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}

    def allow(self, ip: str, now: float) -> bool:
        """Take one token for `ip`; False when its bucket is empty."""
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.clear()
            self._buckets[ip] = [self.burst - 1, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True
