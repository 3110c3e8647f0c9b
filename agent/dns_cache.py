"""Answer cache: wire-format responses keyed by question, TTLs honoured and clamped, bounded.

An entry is a prepared response (id 0, question at offset 12) plus the offsets of its TTL
fields; a hit re-stamps the TTLs with the time left (at most once per second per entry) and
the server patches in the client's id. Negative answers (NXDOMAIN, NODATA) are cached for
the SOA minimum, clamped to `negative_ttl` (RFC 2308).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent import dns_wire
from agent.model import Action, Classification, Client, Decision, Request, Source

if TYPE_CHECKING:
    from agent.metrics import Cell
    from agent.pipeline import Engine
    from agent.record_template import RecordTemplate
    from agent.runtime import Runtime

CacheKey = tuple[bytes, int, int, bool, bool]  # Question.key: name, type, class, EDNS, DO


@dataclass(slots=True)
class Entry:
    """One cached response: its bytes at `stored`, TTL fields, expiry and CNAME targets.

    `aliases` are the names the answer CNAMEs into: the server checks them per client
    (CNAME cloaking), because the cache is shared by clients of every group.
    """

    wire: bytes
    offsets: list[tuple[int, int]]
    stored: float
    expires: float
    aliases: tuple[bytes, ...] = ()
    stamped: tuple[int, bytes] = field(default=(-1, b""))

    def render(self, now: float) -> bytes:
        """The response with TTLs lowered by the whole seconds since it was stored."""
        elapsed = int(now - self.stored)
        if self.stamped[0] != elapsed:
            self.stamped = (elapsed, dns_wire.set_ttls(self.wire, self.offsets, elapsed))
        return self.stamped[1]


@dataclass(slots=True)
class Replay:
    """A decided UDP answer, re-sent with the client's id while nothing it depends on changed.

    Keyed by (client address, query without its id): the same client asking the same
    question (same flags, case and EDNS) gets the same answer until `until` (the end of the
    minute, or the cached answer's expiry) or until `engine` is replaced by a reload. At the
    end of a minute, when schedules and exception expiry are re-checked, a replay whose
    decision `generation` (`Verdicts.generation_at`) is still in force goes on for another
    minute. Re-sending counts `counts` and queues the record `template` (if any), so a replay
    is indistinguishable from a fresh decision.
    """

    engine: object
    generation: int
    tail: bytes  # the reply after its 2-byte id
    question: dns_wire.Question
    counts: tuple[Cell, ...]  # Tally cells: counted again on every replay
    template: RecordTemplate | None
    entry: Entry | None = None  # a cached answer: `tail` is re-rendered as its TTLs count down
    refresh_at: float = math.inf  # when `tail`'s TTLs are a second too high (`rendered`)
    until: float = 0.0  # replayed before this time (`extend`)

    def extend(self, now: float) -> bool:
        """Replay until the end of `now`'s minute or the cached answer's expiry; True if live."""
        self.until = (now // 60 + 1) * 60  # decisions are re-checked every minute
        if self.entry is not None:
            self.until = min(self.until, self.entry.expires)
        return now < self.until

    def rendered(self, now: float) -> None:
        """Note that `tail` holds a cached answer's TTLs as of `now`'s whole second.

        The hot path compares one float (`now >= refresh_at`) on every replay.
        """
        entry = self.entry
        if entry is not None:
            self.refresh_at = entry.stored + int(now - entry.stored) + 1

    def refresh(self, query: bytes, now: float) -> None:
        """Re-render a cached answer's tail with its TTLs counted down to `now`."""
        entry = self.entry
        if entry is not None:
            self.tail = dns_wire.patch(entry.render(now), query, self.question)[2:]
            self.rendered(now)


class DnsCache:
    """A bounded TTL cache; the oldest insertion is evicted first when full."""

    def __init__(
        self,
        max_entries: int = 100_000,
        min_ttl: int = 0,
        max_ttl: int = 86_400,
        negative_ttl: int = 300,
    ) -> None:
        self.max_entries = max_entries
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self._entries: dict[CacheKey, Entry] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, now: float) -> Entry | None:
        """The live entry (`entry.render(now)` gives the bytes) or None."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if now >= entry.expires:
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(
        self, key: CacheKey, wire: bytes, qend: int, now: float, aliases: tuple[bytes, ...] = ()
    ) -> bytes | None:
        """Cache a response with its question ending at `qend`.

        Returns it with the TTLs clients get (a fresh answer is clamped like a cached one),
        or None when it is not cacheable (it goes out as the upstream sent it).
        """
        prepared = self._prepare(wire, qend)
        if prepared is None:
            return None
        served, offsets, lifetime = prepared
        if self.max_entries > 0:
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._evict(now)
            self._entries[key] = Entry(served, offsets, now, now + lifetime, aliases)
        return served

    def _prepare(self, wire: bytes, qend: int) -> tuple[bytes, list[tuple[int, int]], int] | None:
        """(response with its served TTLs, their offsets, lifetime); None if not cacheable.

        Not cacheable: malformed, SERVFAIL/REFUSED, truncated, or a lifetime of 0.
        """
        offsets = dns_wire.rr_ttl_offsets(wire, qend)
        rcode = wire[3] & 0x0F
        if offsets is None or rcode not in (0, dns_wire.RCODE_NXDOMAIN) or wire[2] & 0x02:
            return None
        lifetime = self.lifetime(wire, offsets, rcode)
        if lifetime <= 0:
            return None
        offsets = self._served(wire, offsets, rcode, lifetime)
        return dns_wire.set_ttls(wire, offsets, 0), offsets, lifetime

    def _served(
        self, wire: bytes, offsets: list[tuple[int, int]], rcode: int, lifetime: int
    ) -> list[tuple[int, int]]:
        """The TTLs clients get, which count down to 0 when the entry expires, not before.

        A record's TTL is clamped like the entry's lifetime, so `cache_max_ttl` also bounds how
        long a client keeps an answer (a name blocked later is not resolved from its cache
        for days), and `cache_min_ttl` never has an answer served with TTL 0. A negative
        answer's records get its lifetime (RFC 2308 section 5).
        """
        if rcode == dns_wire.RCODE_NXDOMAIN or int.from_bytes(wire[6:8]) == 0:
            return [(off, lifetime) for off, _ in offsets]
        low, high = self.min_ttl, self.max_ttl
        return [(off, min(max(ttl, low), high)) for off, ttl in offsets]

    def lifetime(self, wire: bytes, offsets: list[tuple[int, int]], rcode: int) -> int:
        """Seconds to keep a response: smallest answer TTL clamped, or the negative TTL."""
        answers = int.from_bytes(wire[6:8])
        if rcode == dns_wire.RCODE_NXDOMAIN or answers == 0:
            soa = min((ttl for _, ttl in offsets), default=self.negative_ttl)
            return min(max(soa, self.min_ttl), self.negative_ttl)
        smallest = min(ttl for _, ttl in offsets[:answers]) if offsets else self.min_ttl
        return min(max(smallest, self.min_ttl), self.max_ttl)

    def _evict(self, now: float) -> None:
        """Drop expired entries, or else the oldest tenth."""
        expired = [k for k, e in self._entries.items() if e.expires <= now]
        if not expired:
            expired = list(self._entries)[: max(1, self.max_entries // 10)]
        for k in expired:
            del self._entries[k]

    def clear(self) -> None:
        """Forget everything (policy reloads clear it: answers depend on the policy)."""
        self._entries.clear()


# --- decisions ----------------------------------------------------------------------------

Verdict = tuple[Request, Decision]


class Verdicts:
    """`Engine.evaluate()` memoised per (client groups, name) for one engine and time epoch.

    The memo is emptied when the runtime swaps engines (reload), when a schedule starts or
    ends, and every quarter hour (date-based expiry), so the hot path is a dict hit and never
    stale.
    """

    # A decision (request, decision, classification) weighs ~1.1 KB: 200,000 of them took a
    # flood of unique blocked names to 400 MB of RSS; 50,000 bound it near 55 MB and still
    # hold every name a gateway's clients ask in a quarter hour (bench_dns asks 20,000).
    def __init__(self, runtime: Runtime, max_entries: int = 50_000) -> None:
        self.runtime = runtime
        self.max_entries = max_entries
        self.engine: Engine | None = None
        self._minute = -1
        self._epoch: tuple[int, tuple[bool, ...]] = (-1, ())
        self._clients: dict[str, Client] = {}
        self._memo: dict[tuple[frozenset[str], bytes], Verdict | None] = {}
        self.generation = 0  # bumped whenever the memo is emptied: decisions may have changed

    def _refresh(self, now: float) -> Engine:
        """Swap to a reloaded engine; empty the memo when a time-dependent input changed."""
        engine = self.runtime.engine
        minute = int(now // 60)
        if engine is self.engine and minute == self._minute:
            return engine
        # Checked once a minute: which schedules are in force, and the quarter hour (dates,
        # and so exception expiry, change on quarter hours in every time zone).
        epoch = (int(now // 900), tuple(s.is_active(now) for s in engine.policy.schedules.values()))
        if engine is not self.engine:
            self._clients.clear()
            self._memo.clear()
            self.generation += 1
        elif epoch != self._epoch:
            self._memo.clear()
            self.generation += 1
        self.engine, self._minute, self._epoch = engine, minute, epoch
        return engine

    def generation_at(self, now: float) -> int:
        """The generation of decisions in force at `now`: within one, decisions do not change."""
        self._refresh(now)
        return self.generation

    def client(self, ip: str, now: float) -> Client:
        """The client's address groups (no user: DNS never sees one)."""
        engine = self._refresh(now)
        client = self._clients.get(ip)
        if client is None:
            if len(self._clients) >= 65_536:
                self._clients.clear()
            client = self._clients[ip] = engine.identity.identify(ip)
        return client

    def decide(self, client: Client, name: bytes, now: float) -> Verdict | None:
        """(request, decision) for a wire name; None for a name that is not a valid host."""
        key = (client.groups, name)
        try:
            return self._memo[key]
        except KeyError:
            pass
        engine = self._refresh(now)
        try:
            ev = engine.evaluate(
                client.ip, dns_wire.to_text(name), now=now, source=Source.DNS, host_only=True
            )
        except ValueError:
            verdict = None  # not a host name: no list can hold it, so it resolves as usual
        else:
            verdict = (ev.request, ev.decision)
        if len(self._memo) >= self.max_entries:
            self._memo.clear()
        self._memo[key] = verdict
        return verdict

    def cloaked(self, client: Client, aliases: tuple[bytes, ...], now: float) -> Verdict | None:
        """The verdict that blocks an answer CNAMEing into a name blocked for this client."""
        for alias in aliases:
            verdict = self.decide(client, alias, now)
            if verdict is not None and self.enforced(verdict[1]):
                return verdict
        return None

    @staticmethod
    def enforced(decision: Decision) -> bool:
        """DNS enforces host-level blocks that hold for every user behind the address."""
        return decision.action is Action.BLOCK and decision.user_independent

    @staticmethod
    def synthetic(name: str, kind: str) -> Verdict:
        """A decision for a query refused before policy (outside allow_clients, rate limit)."""
        reason = {
            "refused": "client outside dns.allow_clients",
            "rate-limited": "client over dns.rate_limit",
        }.get(kind, kind)
        label = kind.replace("-", "_")
        decision = Decision(
            Action.BLOCK,
            None,
            (),
            f"dns-{kind}",
            None,
            None,
            reason,
            f"dns_{label}",
            Classification(name, None),
        )
        return Request(host=name, source=Source.DNS), decision
