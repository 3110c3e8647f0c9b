"""dns_server: settings from flags, rate limiting, trip records and the in-process core."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSRecord

from agent import dns_server
from agent.config import DnsRecords, DnsSection
from agent.datagrams import PlainDatagrams
from agent.dns_records import Recorder
from agent.dns_server import DnsFilter, Lookup, make_settings
from agent.dns_wire import Question
from agent.recent_answers import RecentAnswers, store_path
from agent.record_template import RecordTemplate
from agent.runtime import Runtime

POLICY = """\
layer: test
policy:
  timezone: UTC
  categories:
    gambling: {clause: "No gambling.", lists: [blocked.txt]}
  groups:
    local: {networks: [127.0.0.0/8]}
  rules:
    - {id: no-gambling, categories: [gambling], action: block}
dns:
  upstreams: ["127.0.0.1:9"]
records:
  notice: {text: "We monitor."}
lists:
  cache_dir: cache
"""


def args(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"listen": [], "upstream": [], "allow_clients": None, "records": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(
    ("flags", "listen", "upstreams", "nets"),
    [
        pytest.param(
            {}, [("127.0.0.1", 5353)], [("192.0.2.53", 53)], ["127.0.0.0/8", "::1/128"], id="config"
        ),
        pytest.param(
            {
                "listen": ["[::1]:5300", "127.0.0.1:0"],
                "upstream": ["192.0.2.9:5300"],
                "allow_clients": "10.0.0.0/8, 192.168.1.0/24",
            },
            [("::1", 5300), ("127.0.0.1", 0)],
            [("192.0.2.9", 5300)],
            ["10.0.0.0/8", "192.168.1.0/24"],
            id="flags-override",
        ),
    ],
)
def test_make_settings(
    flags: dict[str, Any], listen: list, upstreams: list, nets: list[str]
) -> None:
    """Flags override the dns section; IPv6 listens in brackets."""
    section = DnsSection(upstreams=("192.0.2.53",))
    settings = make_settings(section, args(**flags))
    assert list(settings.listen) == listen
    assert list(settings.upstreams) == upstreams
    assert [str(n) for n in settings.section.allow_clients] == nets


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param({"allow_clients": "10.0.0.0/33"}, id="bad-cidr"),
        pytest.param({"listen": ["[::1"]}, id="bad-listen"),
        pytest.param({}, id="no-upstreams"),
    ],
)
def test_make_settings_rejects(flags: dict[str, Any], tmp_path: Path) -> None:
    """Bad flags (or no upstream at all, not even in resolv.conf) raise ValueError for the CLI."""
    with pytest.raises(ValueError):
        make_settings(DnsSection(), args(**flags), resolv_conf=tmp_path / "no-resolv.conf")


def test_make_settings_falls_back_to_resolv_conf(tmp_path: Path) -> None:
    """With no upstream configured, the host's resolvers are used."""
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 192.0.2.53\n")
    assert make_settings(DnsSection(), args(), resolv_conf=conf).upstreams == (("192.0.2.53", 53),)


class ListWriter:
    """The writer's interface, keeping records as dicts (templated ones rendered, as the writer
    thread would)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def write(self, record: dict[str, Any]) -> bool:
        self.records.append(record)
        return True

    def stamp(self, template: RecordTemplate, now: float, dns_id: int) -> None:
        self.records.append(json.loads(template.render(now, dns_id)))


def dns_runtime(tmp_path: Path, extra: str = "") -> Runtime:
    """POLICY (plus `extra` YAML) with blocked.test listed, loaded from `tmp_path`."""
    (tmp_path / "blocked.txt").write_text("blocked.test\n")
    policy = POLICY.replace("cache_dir: cache", f"cache_dir: {tmp_path / 'cache'}") + extra
    (tmp_path / "policy.yaml").write_text(policy)
    return Runtime(tmp_path / "policy.yaml")


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return dns_runtime(tmp_path)


def core(
    runtime: Runtime, mode: DnsRecords = DnsRecords.DEFAULT, **flags: Any
) -> tuple[DnsFilter, ListWriter]:
    writer = ListWriter()
    recorder = Recorder(mode, writer, runtime)  # type: ignore[arg-type]
    settings = make_settings(runtime.engine.config.dns, args(**flags))
    return DnsFilter(settings, runtime, recorder), writer


def test_trips_are_recorded_once_per_interval(runtime: Runtime) -> None:
    """Refused queries from one client give one record per interval, with the count."""
    dns, writer = core(runtime, allow_clients="10.0.0.0/8")
    packet = bytes(DNSRecord.question("a.example").pack())
    for i in range(50):
        reply = dns.answer(packet, "127.0.0.1", 1000.0 + i * 0.1, udp=True)
        assert isinstance(reply, bytes)
        assert reply[3] & 0x0F == 5
    dns.recorder.sweep(1005.0)  # not due: the first record was written at 1000
    assert [r["aupguard"]["dns"]["count"] for r in writer.records] == [1]
    dns.recorder.sweep(1010.0)
    counts = [r["aupguard"]["dns"]["count"] for r in writer.records]
    assert counts == [1, 49]
    assert writer.records[1]["dns"]["question"]["name"] == "a.example"


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param("blocked.test", bytes, id="blocked-prepared"),
        pytest.param("x.blocked.test", bytes, id="subdomain-prepared"),
        pytest.param("fine.example", Lookup, id="allowed-needs-upstream"),
        pytest.param("use-application-dns.net", bytes, id="canary"),
    ],
)
def test_answer_paths(runtime: Runtime, name: str, kind: type) -> None:
    """Blocked and bypass names are answered at once; others need the upstreams."""
    dns, _ = core(runtime)
    result = dns.answer(bytes(DNSRecord.question(name).pack()), "127.0.0.1", 1000.0, udp=True)
    assert isinstance(result, kind)


def test_fail_closed_answers_servfail(runtime: Runtime) -> None:
    """While records cannot be kept under `spool_full: fail_closed`, every query gets SERVFAIL."""
    dns, writer = core(runtime)
    writer.halt.set()
    for name in ("fine.example", "blocked.test"):
        reply = dns.answer(bytes(DNSRecord.question(name).pack()), "127.0.0.1", 1000.0, udp=True)
        assert isinstance(reply, bytes)
        assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL
    writer.halt.clear()
    assert isinstance(
        dns.answer(bytes(DNSRecord.question("fine.example").pack()), "127.0.0.1", 1000.0, udp=True),
        Lookup,
    )


def test_reload_swaps_memo(runtime: Runtime, tmp_path: Path) -> None:
    """After a reload the new list decides, even for a memoised name."""
    dns, _ = core(runtime)
    packet = bytes(DNSRecord.question("late.test").pack())
    assert isinstance(dns.answer(packet, "127.0.0.1", 1000.0, udp=True), Lookup)
    (tmp_path / "blocked.txt").write_text("blocked.test\nlate.test\n")
    assert runtime.reload().ok
    assert isinstance(dns.answer(packet, "127.0.0.1", 1000.0, udp=True), bytes)


def test_allow_clients_membership(runtime: Runtime) -> None:
    """IPv6 and scoped addresses are checked against allow_clients."""
    dns, _ = core(runtime, allow_clients="::1/128,10.0.0.0/8")
    assert dns._is_allowed("::1")
    assert dns._is_allowed("10.1.2.3")
    assert not dns._is_allowed("127.0.0.1")
    assert not dns._is_allowed("not-an-ip")
    assert ipaddress.ip_network("10.0.0.0/8") in dns.allow_clients


# --- replays: a decided answer re-sent with the client's id ------------------------------

PER_QUERY = ("@timestamp", "event.id", "aupguard.reference_id", "dns.id", "network.transport")


def query(name: str, ident: int = 1) -> bytes:
    packet = DNSRecord.question(name)
    packet.header.id = ident
    return bytes(packet.pack())


def fill_cache(dns: DnsFilter, name: str, ttl: int, now: float) -> None:
    """Cache an upstream answer for `name` as the lookup path would."""
    reply = DNSRecord.question(name).reply()
    reply.add_answer(RR(name, rdata=A("192.0.2.7"), ttl=ttl))
    result = dns.answer(query(name), "127.0.0.1", now, udp=True)
    assert isinstance(result, Lookup)
    q: Question = result.q
    template, aliases = dns.answers.from_upstream(bytes(reply.pack()), q)
    dns.cache.put(q.key, template, q.qend, now, aliases)


def without(record: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    out = json.loads(json.dumps(record))
    for path in paths:
        *parents, leaf = path.split(".") if not path.startswith("@") else [path]
        target = out
        for part in parents:
            target = target[part]
        target.pop(leaf)
    return out


@pytest.mark.parametrize(
    ("name", "cached"),
    [
        pytest.param("blocked.test", False, id="blocked"),
        pytest.param("use-application-dns.net", False, id="canary"),
        pytest.param("fine.example", True, id="cached"),
    ],
)
def test_replay_is_a_fresh_answer(runtime: Runtime, name: str, *, cached: bool) -> None:
    """A replayed answer has the client's id and a record equal to a fresh one's (all mode)."""
    dns, writer = core(runtime, DnsRecords.ALL)
    if cached:
        fill_cache(dns, name, 300, 1000.0)
        writer.records.clear()
    first = dns.answer(query(name, 1), "127.0.0.1", 1000.0, udp=True)
    again = dns.answer(query(name, 2), "127.0.0.1", 1001.0, udp=True)
    fresh = dns.answer(query(name, 3), "127.0.0.1", 1001.0, udp=False)  # TCP: never replayed
    assert isinstance(first, bytes)
    assert isinstance(again, bytes)
    assert isinstance(fresh, bytes)
    assert (again[:2], fresh[:2]) == (b"\x00\x02", b"\x00\x03")
    assert again[2:] == fresh[2:]
    one, two, three = writer.records
    assert two["dns"]["id"] == 2
    assert two["@timestamp"] == "1970-01-01T00:16:41.000000Z"
    assert two["event"]["id"] == two["aupguard"]["reference_id"] != one["event"]["id"]
    assert without(one, PER_QUERY) == without(two, PER_QUERY) == without(three, PER_QUERY)
    assert two["network"]["transport"] == "udp"


def test_a_record_without_a_template_is_never_replayed(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a record cannot be templated, every answer is decided and recorded afresh."""
    dns, writer = core(runtime)
    monkeypatch.setattr(dns.recorder, "template", lambda *_a: None)
    for i in range(3):
        dns.answer(query("blocked.test", i), "127.0.0.1", 1000.0 + i, udp=True)
    assert [r["dns"]["id"] for r in writer.records] == [0, 1, 2]


def test_replay_counts_metrics(runtime: Runtime) -> None:
    """Replays are counted like fresh answers."""
    dns, _ = core(runtime)
    for i in range(3):
        dns.answer(query("blocked.test", i), "127.0.0.1", 1000.0 + i, udp=True)
    counts = {labels: cell[0] for (_, labels), cell in dns.tally.cells.items()}
    assert counts[("block",)] == 3
    assert counts[("dns", "block", "gambling")] == 3


def test_cached_replay_counts_ttl_down(runtime: Runtime) -> None:
    """A replayed cached answer's TTL keeps counting down; past its expiry it is looked up."""
    dns, _ = core(runtime)
    fill_cache(dns, "fine.example", 30, 1000.0)
    ttls = []
    times = (1000.0, 1000.999, 1001.0, 1003.5, 1003.999, 1004.0, 1010.0)
    for now in times:
        reply = dns.answer(query("fine.example"), "127.0.0.1", now, udp=True)
        assert isinstance(reply, bytes)
        ttls.append(DNSRecord.parse(reply).rr[0].ttl)
    assert ttls == [30, 30, 29, 27, 27, 26, 20]
    assert isinstance(dns.answer(query("fine.example"), "127.0.0.1", 1031.0, udp=True), Lookup)


def test_replay_follows_the_question_bytes(runtime: Runtime) -> None:
    """Another client, or the same name in other letter case, is decided on its own."""
    dns, _ = core(runtime, allow_clients="127.0.0.0/8")
    dns.answer(query("blocked.test"), "127.0.0.1", 1000.0, udp=True)
    reply = dns.answer(query("BLOCKED.test"), "127.0.0.2", 1000.0, udp=True)
    assert isinstance(reply, bytes)
    assert str(DNSRecord.parse(reply).q.qname) == "BLOCKED.test."


def test_remembered_answers_are_bounded(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Across clients, at most MAX_REPLAYS answers are remembered; then the store starts over.

    An answer decided again (here after a reload) replaces its old self: it is counted once.
    """
    monkeypatch.setattr(dns_server, "MAX_REPLAYS", 3)
    dns, _ = core(runtime, allow_clients="127.0.0.0/8")

    def ask(k: int) -> int:
        dns.answer(query(f"x{k}.blocked.test"), f"127.0.0.{k % 2 + 1}", 1000.0, udp=True)
        return sum(len(per_client) for per_client in dns._replays.values())

    assert [ask(0), ask(1)] == [1, 2]
    assert runtime.reload().ok  # both replays are stale now: asking again decides anew
    assert [ask(0), ask(1), ask(2), ask(3), ask(4)] == [2, 2, 3, 1, 2]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("reload", id="reload-swaps-engine"),
        pytest.param("fail-closed", id="spool-full-fail-closed"),
        pytest.param("rate-limit", id="rate-limit-still-applies"),
    ],
)
def test_replay_stops_when_inputs_change(runtime: Runtime, tmp_path: Path, change: str) -> None:
    """A replay never outlives a reload, fail-closed or the client's rate limit."""
    (tmp_path / "blocked.txt").write_text("blocked.test\nlate.test\n")
    assert runtime.reload().ok
    dns, writer = core(runtime)
    if change == "rate-limit":
        dns.limiter.rate, dns.limiter.burst = 1.0, 2.0  # type: ignore[union-attr]
    first = dns.answer(query("late.test"), "127.0.0.1", 1000.0, udp=True)
    assert isinstance(first, bytes)
    assert DNSRecord.parse(first).header.rcode == RCODE.NXDOMAIN
    expected = {"reload": Lookup, "fail-closed": RCODE.SERVFAIL, "rate-limit": RCODE.REFUSED}
    if change == "reload":
        (tmp_path / "blocked.txt").write_text("blocked.test\n")
        assert runtime.reload().ok
    elif change == "fail-closed":
        writer.halt.set()
    else:
        dns.answer(query("late.test"), "127.0.0.1", 1000.0, udp=True)  # the burst's last token
    result = dns.answer(query("late.test"), "127.0.0.1", 1000.1, udp=True)
    if isinstance(expected[change], type):
        assert isinstance(result, Lookup)
    else:
        assert isinstance(result, bytes)
        assert DNSRecord.parse(result).header.rcode == expected[change]


def test_rate_limited_clients_leave_no_replay_tables(runtime: Runtime) -> None:
    """A replay dropped for the rate limit takes its client's table with it when that empties:
    clients by the thousand (spoofed sources) must not grow memory past MAX_REPLAYS."""
    dns, _ = core(runtime)
    dns.limiter.rate, dns.limiter.burst = 1.0, 2.0  # type: ignore[union-attr]
    for k in range(300):
        ip = f"127.1.{k // 256}.{k % 256}"
        for _ in range(3):  # decided and remembered, replayed, then refused: replay dropped
            dns.answer(query("blocked.test"), ip, 1000.0, udp=True)
    assert dns._replays_kept == sum(len(kept) for kept in dns._replays.values()) == 0
    assert dns._replays == {}


MONDAY = dt.datetime(2026, 11, 23, tzinfo=dt.UTC).timestamp()


def clock(text: str) -> float:
    hours, minutes, seconds = map(int, text.split(":"))
    return MONDAY + hours * 3600 + minutes * 60 + seconds


@pytest.mark.parametrize(
    ("schedule", "first", "later", "answer", "decided_again"),
    [
        pytest.param(True, "16:58:30", "16:59:30", RCODE.NXDOMAIN, False, id="minute-replays-on"),
        pytest.param(True, "16:59:30", "17:00:30", Lookup, True, id="schedule-ends-decide-again"),
        pytest.param(False, "17:14:30", "17:15:30", RCODE.NXDOMAIN, True, id="quarter-hour-check"),
    ],
)
def test_replay_outlives_the_minute_only_while_decisions_hold(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    schedule: bool,
    first: str,
    later: str,
    answer: object,
    decided_again: bool,
) -> None:
    """A replay goes on into the next minute unless a schedule or the date check intervenes.

    The rule blocks during business hours (ending 17:00 on this Monday) or always; every
    quarter hour decisions are made again (exceptions expire by date).
    """
    runtime = dns_runtime(tmp_path)
    policy = (tmp_path / "policy.yaml").read_text()
    policy = policy.replace(
        "action: block}",
        "action: block, schedule: business-hours}" if schedule else "action: block}",
    ).replace(
        "  groups:\n",
        '  schedules:\n    business-hours: {days: [mon], start: "08:00", end: "17:00"}\n'
        "  groups:\n",
    )
    (tmp_path / "policy.yaml").write_text(policy)
    assert runtime.reload().ok
    dns, _ = core(runtime)
    decided: list[float] = []
    decide = dns._decide
    monkeypatch.setattr(dns, "_decide", lambda *a, **k: decided.append(a[2]) or decide(*a, **k))
    reply = dns.answer(query("blocked.test"), "127.0.0.1", clock(first), udp=True)
    assert isinstance(reply, bytes)
    assert DNSRecord.parse(reply).header.rcode == RCODE.NXDOMAIN
    reply = dns.answer(query("blocked.test", 2), "127.0.0.1", clock(later), udp=True)
    if answer is Lookup:
        assert isinstance(reply, Lookup)
    else:
        assert isinstance(reply, bytes)
        assert (reply[:2], DNSRecord.parse(reply).header.rcode) == (b"\x00\x02", answer)
    assert decided == ([clock(first), clock(later)] if decided_again else [clock(first)])


class FakeUpstream:
    label = "192.0.2.53:53"


NO_DECRYPT = "proxy: {no_decrypt_hosts: [bank.test]}\n"


@pytest.mark.parametrize(
    ("proxy", "answer", "stored"),
    [
        pytest.param(NO_DECRYPT, ["bank.test. 30 IN A 192.0.2.10"], True, id="recorded"),
        pytest.param("", ["bank.test. 30 IN A 192.0.2.10"], False, id="no-no-decrypt-lists"),
        pytest.param(
            NO_DECRYPT,
            ["bank.test. 30 IN CNAME x.blocked.test.", "x.blocked.test. 30 IN A 192.0.2.10"],
            False,
            id="cloaked-not-answered",
        ),
    ],
)
def test_upstream_answer_lands_in_recent_answers(
    tmp_path: Path, proxy: str, answer: list[str], *, stored: bool
) -> None:
    """An upstream answer (a cache fill) the client was given is recorded for the proxy; a
    cache hit is not, nor the addresses of an answer blocked as cloaking (never given)."""
    runtime = dns_runtime(tmp_path, proxy)
    dns, _ = core(runtime)
    upstream = DNSRecord.question("bank.test").reply()
    for line in answer:
        upstream.add_answer(*RR.fromZone(line))

    async def resolve(*_: Any, **__: Any) -> tuple[bytes, FakeUpstream]:
        return bytes(upstream.pack()), FakeUpstream()

    dns.pool.resolve = resolve  # type: ignore[method-assign]
    packet = bytes(DNSRecord.question("bank.test").pack())
    job = dns.answer(packet, "127.0.0.1", time.time(), udp=True)
    assert isinstance(job, Lookup)
    asyncio.run(dns.lookup(job))
    calls: list[bytes] = []
    dns.recent.record = lambda name, *_: calls.append(name)  # type: ignore[method-assign]
    assert isinstance(dns.answer(packet, "127.0.0.1", time.time(), udp=False), bytes)  # cached
    assert calls == []
    del dns.recent.record
    dns.recent.close()
    reader = RecentAnswers(store_path(runtime.engine.config))
    assert reader.answered("bank.test", "192.0.2.10", time.time()) is stored


CLOAKS = {
    "cname": ["alias.example. 60 IN CNAME x.blocked.test.", "x.blocked.test. 60 IN A 192.0.2.66"],
    "https-alias-mode": ["alias.example. 60 IN HTTPS 0 x.blocked.test."],
    "https-service-mode": ["alias.example. 60 IN HTTPS 1 x.blocked.test. ipv4hint=192.0.2.66"],
}


@pytest.mark.parametrize("cached", [False, True], ids=["fresh-lookup", "cached-answer"])
@pytest.mark.parametrize("cloak", CLOAKS)
def test_a_cloaked_block_is_recorded_and_counted_as_the_targets_block(
    runtime: Runtime, cloak: str, *, cached: bool
) -> None:
    """A name CNAMEing (or HTTPS-targeting) into a blocked domain: its record and metrics
    name the block that decided it (category, rule, target), not the asked name's allow."""
    dns, writer = core(runtime)
    qtype = "HTTPS" if cloak.startswith("https") else "A"
    upstream = DNSRecord.question("alias.example", qtype).reply()
    for line in CLOAKS[cloak]:
        upstream.add_answer(*RR.fromZone(line))

    async def resolve(*_: Any, **__: Any) -> tuple[bytes, FakeUpstream]:
        return bytes(upstream.pack()), FakeUpstream()

    dns.pool.resolve = resolve  # type: ignore[method-assign]
    asked = bytes(DNSRecord.question("alias.example", qtype).pack())
    job = dns.answer(asked, "127.0.0.1", time.time(), udp=True)
    assert isinstance(job, Lookup)
    reply = asyncio.run(dns.lookup(job))
    if cached:
        dns.tally.cells.clear()
        writer.records.clear()
        reply = dns.answer(asked, "127.0.0.1", time.time(), udp=False)
        assert isinstance(reply, bytes)
    assert DNSRecord.parse(reply).header.rcode == RCODE.NXDOMAIN
    (record,) = writer.records
    assert record["event"]["action"] == "block"
    assert record["rule"]["name"] == "no-gambling"
    assert record["dns"]["question"]["name"] == "alias.example"
    assert record["aupguard"]["dns"]["cloaked_by"] == "x.blocked.test"
    assert "gambling" in json.dumps(record["aupguard"])
    counts = {labels: cell[0] for (_, labels), cell in dns.tally.cells.items() if cell[0]}
    assert counts == {("dns", "block", "gambling"): 1, ("block",): 1}


@pytest.mark.parametrize(
    ("ttl", "clamp", "served"),
    [
        pytest.param(999_999, {"max_ttl": 120}, 120, id="max"),
        pytest.param(5, {"min_ttl": 60}, 60, id="min"),
        pytest.param(300, {}, 300, id="within"),
    ],
)
def test_the_first_answer_from_upstream_is_clamped_too(
    runtime: Runtime, ttl: int, clamp: dict[str, int], served: int
) -> None:
    """cache_min_ttl/cache_max_ttl apply to the answer that fills the cache, not only to the
    copies served from it."""
    dns, _ = core(runtime)
    for key, value in clamp.items():
        setattr(dns.cache, key, value)
    upstream = DNSRecord.question("fine.example").reply()
    upstream.add_answer(RR("fine.example", rdata=A("192.0.2.7"), ttl=ttl))

    async def resolve(*_: Any, **__: Any) -> tuple[bytes, FakeUpstream]:
        return bytes(upstream.pack()), FakeUpstream()

    dns.pool.resolve = resolve  # type: ignore[method-assign]
    job = dns.answer(query("fine.example"), "127.0.0.1", time.time(), udp=False)
    assert isinstance(job, Lookup)
    fresh = DNSRecord.parse(asyncio.run(dns.lookup(job)))
    cached = dns.answer(query("fine.example"), "127.0.0.1", time.time(), udp=False)
    assert isinstance(cached, bytes)
    assert fresh.rr[0].ttl == DNSRecord.parse(cached).rr[0].ttl == served


def test_a_query_shed_for_too_many_lookups_is_counted_and_recorded(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over MAX_INFLIGHT the answer is SERVFAIL at once, and a failure like any other."""
    monkeypatch.setattr(dns_server, "MAX_INFLIGHT", 0)
    dns, writer = core(runtime)
    reply = dns.answer(query("fine.example"), "127.0.0.1", 1000.0, udp=True)
    assert isinstance(reply, bytes)
    assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL
    (record,) = writer.records
    assert record["aupguard"]["dns"]["outcome"] == "servfail"
    assert "lookups under way" in record["error"]["message"]
    counts = {labels: cell[0] for (_, labels), cell in dns.tally.cells.items() if cell[0]}
    assert counts[("servfail",)] == 1


def test_an_internal_error_in_a_lookup_is_a_servfail(runtime: Runtime) -> None:
    """A bug below the lookup costs that query a SERVFAIL and a failure record, nothing more."""
    dns, writer = core(runtime, DnsRecords.ALL)

    async def broken(*_: Any, **__: Any) -> Any:
        raise OverflowError("int too large to convert to float")

    dns.pool.resolve = broken  # type: ignore[method-assign]
    job = dns.answer(query("fine.example"), "127.0.0.1", 1000.0, udp=True)
    assert isinstance(job, Lookup)
    reply = asyncio.run(dns.lookup(job))
    assert DNSRecord.parse(reply).header.rcode == RCODE.SERVFAIL
    assert writer.records[-1]["aupguard"]["dns"]["outcome"] == "servfail"
    assert "OverflowError" in writer.records[-1]["error"]["message"]


@pytest.mark.parametrize(
    ("records", "remembered"),
    [
        pytest.param(1, True, id="small-answer"),
        pytest.param(40, False, id="over-512-bytes-not-remembered"),
    ],
)
def test_only_small_answers_are_remembered(
    runtime: Runtime, records: int, *, remembered: bool
) -> None:
    """Replays are bounded in bytes as well as in number (the memory stays small)."""
    dns, _ = core(runtime)
    packet = DNSRecord.question("big.example")
    packet.add_ar(EDNS0(udp_len=4096))  # so that the client takes the large answer over UDP
    asked = bytes(packet.pack())
    reply = DNSRecord.question("big.example").reply()
    for i in range(records):
        reply.add_answer(RR("big.example", rdata=A(f"192.0.2.{i + 1}"), ttl=300))
    job = dns.answer(asked, "127.0.0.1", 1000.0, udp=True)
    assert isinstance(job, Lookup)
    q = job.q
    template, aliases = dns.answers.from_upstream(bytes(reply.pack()), q)
    dns.cache.put(q.key, template, q.qend, 1000.0, aliases)
    answer = dns.answer(asked, "127.0.0.1", 1000.0, udp=True)
    assert isinstance(answer, bytes)
    assert len(DNSRecord.parse(answer).rr) == records  # answered in full, not truncated
    assert bool(dns._replays) is remembered  # internal: a replay answers exactly like this


def test_do_and_plain_questions_are_resolved_and_cached_apart(runtime: Runtime) -> None:
    """A DNSSEC-aware client gets an answer fetched with DO; a plain one never gets it."""
    dns, _ = core(runtime)
    asked: list[bool] = []

    async def resolve(*_: Any, dnssec_ok: bool = False) -> tuple[bytes, FakeUpstream]:
        asked.append(dnssec_ok)
        reply = DNSRecord.question("signed.example").reply()
        reply.add_answer(RR("signed.example", rdata=A("192.0.2.9"), ttl=300))
        return bytes(reply.pack()), FakeUpstream()

    dns.pool.resolve = resolve  # type: ignore[method-assign]
    for do in (True, False, True):
        packet = DNSRecord.question("signed.example")
        packet.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
        result = dns.answer(bytes(packet.pack()), "127.0.0.1", time.time(), udp=True)
        if isinstance(result, Lookup):
            result = asyncio.run(dns.lookup(result))
        opt = [rr for rr in DNSRecord.parse(result).ar if rr.rtype == QTYPE.OPT]
        assert bool(opt[0].ttl & 0x8000) is do
    assert asked == [True, False]  # the third came from the cache


# --- the UDP transport ------------------------------------------------------------------------


class RefusingSocket:
    """A real bound socket whose sends fail for the listed replies (kernel buffer full)."""

    def __init__(self, sock: Any, refuse: set[int]) -> None:
        self.sock = sock
        self.refuse = refuse
        self.sends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sends += 1
        if self.sends in self.refuse:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return int(self.sock.sendto(data, addr))


@pytest.mark.parametrize(
    ("sizes", "refuse", "answered", "unsent"),
    [
        pytest.param([40] * 3, set(), 3, 0, id="all-answered"),
        pytest.param([40] * 3, {2}, 2, 1, id="refused-send-counted-and-skipped"),
        pytest.param([40, 4097, 40], set(), 2, 0, id="oversized-datagram-dropped"),
        pytest.param([40, 3, 40], set(), 2, 0, id="garbage-dropped"),
        pytest.param([40] * 70, set(), dns_server.UdpServer.RUN, 0, id="one-run-is-bounded"),
    ],
)
def test_udp_server_reads_runs_from_its_socket(
    runtime: Runtime, sizes: list[int], refuse: set[int], answered: int, unsent: int
) -> None:
    """Each waiting datagram is answered, up to RUN a call; refused sends are counted."""
    dns, _ = core(runtime)
    sock = dns_server.udp_socket("127.0.0.1", 0)
    server = dns_server.UdpServer(dns, sock)  # on Linux: recvmmsg/sendmmsg (test_datagrams)
    if refuse:  # sends refused by the kernel, counted into the metric
        refusing = RefusingSocket(sock, refuse)
        server.datagrams = PlainDatagrams(refusing, server.RUN, server.MAX_QUERY)  # type: ignore[arg-type]
    query = bytes(DNSRecord.question("blocked.test").pack())
    with sock, dns_server.udp_socket("127.0.0.1", 0) as client:
        client.settimeout(1.0)
        for size in sizes:  # 40: the query; otherwise that many bytes of garbage
            client.sendto(query if size == 40 else b"\x01" * size, sock.getsockname())
        time.sleep(0.05)  # loopback delivers at once; leave room for a busy machine
        server.readable()
        replies = []
        with contextlib.suppress(TimeoutError):
            client.settimeout(0.2)
            while True:
                replies.append(DNSRecord.parse(client.recv(4096)))
    assert len(replies) == answered
    assert all(r.header.rcode == RCODE.NXDOMAIN for r in replies)
    assert server.unsent[0] == unsent


def test_ipv6_udp_sockets_leave_ipv4_to_their_own() -> None:
    """`[::]:53` beside `0.0.0.0:53` binds: IPv6 listeners are IPv6-only, like the TCP ones."""
    with dns_server.udp_socket("::1", 0) as six:
        assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        with dns_server.udp_socket("127.0.0.1", six.getsockname()[1]) as four:
            assert four.family == socket.AF_INET
