"""dns_cache: TTL-honouring answer cache (clamped, negative, bounded)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dnslib import RR, DNSRecord

from agent import dns_wire
from agent.dns_cache import DnsCache, Verdicts
from agent.model import Action, Client, Request


def reply(name: str, lines: list[str], rcode: int = 0, auth: list[str] = ()) -> tuple[bytes, int]:
    rec = DNSRecord.question(name).reply()
    rec.header.rcode = rcode
    for line in lines:
        rec.add_answer(*RR.fromZone(line))
    for line in auth:
        rec.add_auth(*RR.fromZone(line))
    wire = bytes(rec.pack())
    q = dns_wire.parse_query(bytes(DNSRecord.question(name).pack()))
    assert q is not None
    return wire, q.qend


KEY = (b"\x01a\x03com\x00", 1, 1, False)
SOA = "a.com. 120 IN SOA ns.a.com. h.a.com. 1 2 3 4 60"


@pytest.mark.parametrize(
    ("lines", "rcode", "auth", "cache", "lifetime"),
    [
        pytest.param(["a.com. 300 IN A 1.2.3.4"], 0, [], DnsCache(), 300, id="ttl-honoured"),
        pytest.param(
            ["a.com. 300 IN A 1.2.3.4", "a.com. 100 IN A 1.2.3.5"],
            0,
            [],
            DnsCache(),
            100,
            id="smallest-ttl",
        ),
        pytest.param(["a.com. 1 IN A 1.2.3.4"], 0, [], DnsCache(min_ttl=30), 30, id="clamped-up"),
        pytest.param(
            ["a.com. 99999 IN A 1.2.3.4"], 0, [], DnsCache(max_ttl=3600), 3600, id="clamped-down"
        ),
        pytest.param([], 3, [SOA], DnsCache(), 60, id="nxdomain-soa-minimum"),
        pytest.param([], 3, [SOA.replace("120", "30")], DnsCache(), 30, id="nxdomain-soa-ttl"),
        pytest.param([], 3, [SOA], DnsCache(negative_ttl=30), 30, id="nxdomain-capped"),
        pytest.param([], 0, [SOA], DnsCache(), 60, id="nodata"),
    ],
)
def test_lifetime(
    lines: list[str], rcode: int, auth: list[str], cache: DnsCache, lifetime: int
) -> None:
    """Entries live for the smallest TTL (clamped), negative answers for the lesser of the SOA's
    TTL and MINIMUM (capped)."""
    wire, qend = reply("a.com", lines, rcode, auth)
    assert cache.put(KEY, wire, qend, 1000.0)
    assert cache.get(KEY, 1000.0 + lifetime - 0.5) is not None
    assert cache.get(KEY, 1000.0 + lifetime) is None


@pytest.mark.parametrize(
    ("lines", "rcode", "auth", "cache", "served"),
    [
        pytest.param(
            ["a.com. 99999 IN A 1.2.3.4"], 0, [], DnsCache(max_ttl=3600), [3600, 3590], id="max"
        ),
        pytest.param(["a.com. 5 IN A 1.2.3.4"], 0, [], DnsCache(min_ttl=60), [60, 50], id="min"),
        pytest.param(
            ["a.com. 300 IN A 1.2.3.4", "a.com. 30 IN A 1.2.3.5"],
            0,
            [],
            DnsCache(),
            [300, 290, 30, 20],
            id="each-record-its-own",
        ),
        pytest.param([], 3, [SOA], DnsCache(), [60, 50], id="nxdomain-soa-minimum"),
        pytest.param([], 3, [SOA], DnsCache(negative_ttl=30), [30, 20], id="nxdomain-capped"),
    ],
)
def test_served_ttls_are_clamped_and_count_down(
    lines: list[str], rcode: int, auth: list[str], cache: DnsCache, served: list[int]
) -> None:
    """Clients get the clamped TTLs, counting down to 0 when the entry expires (not before)."""
    wire, qend = reply("a.com", lines, rcode, auth)
    assert cache.put(KEY, wire, qend, 1000.0)
    entry = cache.get(KEY, 1010.0)
    assert entry is not None
    ttls = []
    for record in range(len(served) // 2):
        for now in (1000.0, 1010.0):
            parsed = DNSRecord.parse(entry.render(now))
            ttls.append([*parsed.rr, *parsed.auth][record].ttl)
    assert ttls == served


def test_ttls_count_down() -> None:
    """A hit re-stamps TTLs with the whole seconds left."""
    cache = DnsCache()
    wire, qend = reply("a.com", ["a.com. 300 IN A 1.2.3.4"])
    cache.put(KEY, wire, qend, 1000.0)
    entry = cache.get(KEY, 1010.7)
    assert entry is not None
    assert DNSRecord.parse(entry.render(1010.7)).rr[0].ttl == 290


@pytest.mark.parametrize("rcode", [pytest.param(2, id="servfail"), pytest.param(5, id="refused")])
def test_failures_are_not_cached(rcode: int) -> None:
    """SERVFAIL and REFUSED are never cached."""
    wire, qend = reply("a.com", [], rcode)
    assert not DnsCache().put(KEY, wire, qend, 0.0)


def test_truncated_not_cached() -> None:
    """A TC answer is not cached (the full one comes over TCP)."""
    wire, qend = reply("a.com", ["a.com. 300 IN A 1.2.3.4"])
    wire = wire[:2] + bytes([wire[2] | 0x02]) + wire[3:]
    assert not DnsCache().put(KEY, wire, qend, 0.0)


def test_bounded() -> None:
    """The cache never holds more than max_entries."""
    cache = DnsCache(max_entries=10)
    wire, qend = reply("a.com", ["a.com. 300 IN A 1.2.3.4"])
    for i in range(100):
        cache.put((bytes([i]) + b"\x00", 1, 1, False), wire, qend, 0.0)
        assert len(cache) <= 10
    assert cache.get((bytes([99]) + b"\x00", 1, 1, False), 1.0) is not None


class _Schedule:
    def __init__(self) -> None:
        self.active = False

    def is_active(self, _now: float) -> bool:
        return self.active


class _Engine:
    """Counts evaluations; one schedule the test switches."""

    def __init__(self) -> None:
        self.calls = 0
        self.schedule = _Schedule()
        self.policy = SimpleNamespace(schedules={"business-hours": self.schedule})
        self.identity = SimpleNamespace(identify=lambda ip: Client(ip, groups=frozenset({"g"})))

    def evaluate(self, _ip: str, host: str, **_kw: object) -> SimpleNamespace:
        self.calls += 1
        if not host:
            raise ValueError("empty")
        decision = SimpleNamespace(action=Action.ALLOW, user_independent=True)
        return SimpleNamespace(request=Request(host), decision=decision)


@pytest.mark.parametrize(
    ("later", "switch", "calls"),
    [
        pytest.param(30.0, False, 1, id="same-minute-memo-hit"),
        pytest.param(120.0, False, 1, id="next-minute-nothing-changed"),
        pytest.param(120.0, True, 2, id="schedule-started"),
        pytest.param(1000.0, False, 2, id="next-quarter-hour"),
    ],
)
def test_verdict_memo_epochs(later: float, switch: bool, calls: int) -> None:
    """The decision memo survives minutes, not schedule changes or quarter hours."""
    engine = _Engine()
    runtime = SimpleNamespace(engine=engine)
    verdicts = Verdicts(runtime)  # type: ignore[arg-type]
    client = verdicts.client("10.0.0.1", 0.0)
    verdicts.decide(client, b"\x01a\x03com\x00", 0.0)
    engine.schedule.active = switch
    verdicts.client("10.0.0.1", later)
    verdicts.decide(client, b"\x01a\x03com\x00", later)
    assert engine.calls == calls


def test_verdict_memo_swaps_engine_and_skips_invalid_names() -> None:
    """A reloaded engine decides afresh; a name the engine rejects resolves undecided (None)."""
    runtime = SimpleNamespace(engine=_Engine())
    verdicts = Verdicts(runtime)  # type: ignore[arg-type]
    client = verdicts.client("10.0.0.1", 0.0)
    assert verdicts.decide(client, b"\x00", 0.0) is None
    runtime.engine = fresh = _Engine()
    verdicts.decide(client, b"\x01a\x00", 1.0)
    assert fresh.calls == 1
