"""Addresses the DNS filter answered, shared with the proxy: parsing, retention, the store."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from dnslib import AAAA, CNAME, QTYPE, RR, A, DNSRecord
from structlog.testing import capture_logs

from agent import recent_answers
from agent.config import DnsSection, ProxySection
from agent.dns_wire import to_wire
from agent.recent_answers import (
    AnswerRecorder,
    RecentAnswers,
    addresses,
    normalise_address,
    retention,
)


def reply(name: str, *records: RR, rcode: int = 0) -> bytes:
    """An upstream reply to `name` A carrying `records` in its answer section."""
    rec = DNSRecord.question(name).reply()
    rec.header.rcode = rcode
    for rr in records:
        rec.add_answer(rr)
    return bytes(rec.pack())


def a(name: str, addr: str, ttl: int = 60) -> RR:
    return RR(name, QTYPE.A, rdata=A(addr), ttl=ttl)


def aaaa(name: str, addr: str, ttl: int = 60) -> RR:
    return RR(name, QTYPE.AAAA, rdata=AAAA(addr), ttl=ttl)


def cname(name: str, target: str, ttl: int = 60) -> RR:
    return RR(name, QTYPE.CNAME, rdata=CNAME(target), ttl=ttl)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([a("bank.test", "192.0.2.10", 30)], [("192.0.2.10", 30)], id="a"),
        pytest.param([aaaa("bank.test", "2001:db8::a")], [("2001:db8::a", 60)], id="aaaa"),
        pytest.param(
            [
                cname("bank.test", "edge.cdn.test"),
                cname("edge.cdn.test", "e1.cdn.test"),
                a("e1.cdn.test", "198.51.100.7"),
            ],
            [("198.51.100.7", 60)],
            id="cname-chain",
        ),
        pytest.param(
            [
                a("e1.cdn.test", "198.51.100.7"),
                cname("edge.cdn.test", "e1.cdn.test"),
                cname("bank.test", "edge.cdn.test"),
            ],
            [("198.51.100.7", 60)],
            id="chain-out-of-order",
        ),
        pytest.param(
            [a("bank.test", "192.0.2.10"), a("evil.test", "203.0.113.66")],
            [("192.0.2.10", 60)],
            id="out-of-chain-ignored",
        ),
        pytest.param([a("BANK.test", "192.0.2.10")], [("192.0.2.10", 60)], id="owner-case"),
        pytest.param([], [], id="nodata"),
        pytest.param(
            RR.fromZone(
                "bank.test. 300 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.7 ipv6hint=2001:db8::7"
            ),
            [("192.0.2.7", 300), ("2001:db8::7", 300)],
            id="https-address-hints",
        ),
        pytest.param(
            [
                cname("bank.test", "edge.cdn.test"),
                *RR.fromZone("edge.cdn.test. 60 IN HTTPS 1 e1.cdn.test. ipv4hint=198.51.100.9"),
                *RR.fromZone("evil.test. 60 IN HTTPS 1 . ipv4hint=203.0.113.66"),
            ],
            [("198.51.100.9", 60)],
            id="hints-along-the-chain-only",
        ),
        pytest.param(RR.fromZone("bank.test. 60 IN HTTPS 0 edge.cdn.test."), [], id="alias-mode"),
    ],
)
def test_addresses(records: list[RR], expected: list[tuple[str, int]]) -> None:
    """A/AAAA and HTTPS address hints of the name and its CNAME chain, with their TTLs."""
    assert addresses(reply("bank.test", *records), to_wire("bank.test")) == expected


def test_addresses_rejects_garbage() -> None:
    """A reply that does not parse is a ValueError (the writer skips it)."""
    with pytest.raises(ValueError, match="unparsable"):
        addresses(b"\x00\x01\x81\x80\x00\x01\x00\x01", to_wire("bank.test"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("192.0.2.10", "192.0.2.10", id="v4"),
        pytest.param("2001:DB8:0::A", "2001:db8::a", id="v6-compressed"),
        pytest.param("::ffff:192.0.2.10", "192.0.2.10", id="v4-mapped"),
        pytest.param("[2001:db8::a]", "2001:db8::a", id="bracketed"),
        pytest.param("fe80::1%eth0", "fe80::1", id="zone"),
    ],
)
def test_normalise_address(text: str, expected: str) -> None:
    """Addresses compare in one spelling, as the DNS answer wrote them."""
    assert normalise_address(text) == expected


@pytest.mark.parametrize(
    ("ttl", "min_ttl", "max_ttl", "expected"),
    [
        pytest.param(30, 600, 86_400, 600, id="short-ttl-floored"),
        pytest.param(3_600, 600, 86_400, 3_600, id="ttl-kept"),
        pytest.param(172_800, 600, 86_400, 86_400, id="capped-at-cache-max"),
        pytest.param(5, 600, 300, 600, id="floor-above-cache-max"),
        pytest.param(0, 0, 86_400, 0, id="no-floor"),
    ],
)
def test_retention(ttl: int, min_ttl: int, max_ttl: int, expected: int) -> None:
    """Retention covers the cache's whole life for the answer, and a floor of slack."""
    assert retention(ttl, min_ttl, max_ttl) == expected


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "dns-answers.sqlite3"


def recorded(path: Path, *replies: tuple[str, bytes, float], **kw: int) -> AnswerRecorder:
    """A recorder that has written `replies` (name, wire, when), closed."""
    rec = AnswerRecorder(path, min_ttl=kw.get("min_ttl", 600), max_ttl=86_400)
    for name, wire, now in replies:
        rec.record(to_wire(name), wire, now)
    assert rec.flush()
    rec.close()
    return rec


NOW = 1_800_000_000.0
BANK = reply("bank.test", a("bank.test", "192.0.2.10", 30), aaaa("bank.test", "2001:db8::a", 30))


@pytest.mark.parametrize(
    ("name", "address", "at", "expected"),
    [
        pytest.param("bank.test", "192.0.2.10", NOW + 1, True, id="answered-v4"),
        pytest.param("bank.test", "2001:db8::a", NOW + 1, True, id="answered-v6"),
        pytest.param("Bank.Test.", "::ffff:192.0.2.10", NOW + 1, True, id="spelling"),
        pytest.param("bank.test", "192.0.2.10", NOW + 599, True, id="floor-outlives-ttl"),
        pytest.param("bank.test", "192.0.2.10", NOW + 601, False, id="expired"),
        pytest.param("bank.test", "192.0.2.99", NOW + 1, False, id="other-address"),
        pytest.param("www.bank.test", "192.0.2.10", NOW + 1, False, id="other-name"),
        pytest.param("bank.test", "bank.test", NOW + 1, False, id="not-an-address"),
    ],
)
def test_answered_across_processes(
    path: Path, name: str, address: str, at: float, expected: bool
) -> None:
    """What the DNS filter's recorder wrote, another connection (the proxy) reads."""
    recorded(path, ("bank.test", BANK, NOW))
    reader = RecentAnswers(path)
    try:
        assert reader.answered(name, address, at) is expected
    finally:
        reader.close()


def test_later_answer_extends_and_rotation_accumulates(path: Path) -> None:
    """A refill keeps the later end; an address from another answer is added, not replaced."""
    other = reply("bank.test", a("bank.test", "192.0.2.11", 30))
    recorded(
        path,
        ("bank.test", BANK, NOW),
        ("bank.test", other, NOW + 500),
        ("bank.test", BANK, NOW + 100),
    )
    reader = RecentAnswers(path)
    assert reader.answered("bank.test", "192.0.2.10", NOW + 650)  # NOW + 100 + 600
    assert reader.answered("bank.test", "192.0.2.11", NOW + 1050)
    assert not reader.answered("bank.test", "192.0.2.10", NOW + 750)


def test_store_is_wal_and_private(path: Path) -> None:
    """WAL (the proxy's reads never wait for the DNS filter's writes), mode 0600."""
    recorded(path, ("bank.test", BANK, NOW))
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("max_rows", "left"),
    [
        pytest.param(10, ["192.0.2.2", "192.0.2.3", "192.0.2.4"], id="expired-deleted"),
        pytest.param(2, ["192.0.2.3", "192.0.2.4"], id="soonest-ending-past-the-bound"),
    ],
)
def test_prune(path: Path, max_rows: int, left: list[str]) -> None:
    """Expired rows go; past the bound, the rows that end soonest go first."""
    recent_answers.prepare(path)
    conn = sqlite3.connect(path, isolation_level=None)
    rows = [("n.test", f"192.0.2.{i}", NOW + 100 * (i - 1)) for i in range(5)]  # 0 and 1 ended
    conn.executemany("INSERT INTO answers VALUES (?, ?, ?)", rows)
    AnswerRecorder.prune(conn, NOW + 1, max_rows)
    assert [r[0] for r in conn.execute("SELECT address FROM answers ORDER BY until")] == left


def test_writer_prunes_periodically(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread deletes expired rows when it writes, at most every PRUNE_EVERY."""
    monkeypatch.setattr(recent_answers, "PRUNE_EVERY", 0.0)
    old = reply("old.test", a("old.test", "192.0.2.1"))
    recorded(path, ("old.test", old, time.time() - 10_000), ("bank.test", BANK, time.time()))
    names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM answers")}
    assert names == {"bank.test"}


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param("parent-is-a-file", id="unopenable"),
        pytest.param("not-a-database", id="garbage-file"),
    ],
)
def test_unusable_store_reads_as_not_answered(tmp_path: Path, break_it: str) -> None:
    """A store that cannot be opened answers "not answered" and logs once; never raises."""
    if break_it == "parent-is-a-file":
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "dns-answers.sqlite3"
    else:
        path = tmp_path / "dns-answers.sqlite3"
        path.write_bytes(b"not a database" * 100)
    reader = RecentAnswers(path)
    recorder = AnswerRecorder(path, min_ttl=600, max_ttl=86_400)
    with capture_logs() as logs:
        assert not reader.answered("bank.test", "192.0.2.10", NOW)
        reader._failures.retry_at = 0.0  # retried at once, still failing: no second line
        assert not reader.answered("bank.test", "192.0.2.10", NOW)
        recorder.record(to_wire("bank.test"), BANK, NOW)
        assert recorder.flush()
        recorder.close()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "recent_answers_unreadable",
        "recent_answers_write_failed",
        "recent_answers_dropped",
    ]
    assert recorder.lost == 1


def test_busy_store_reads_as_not_answered(path: Path) -> None:
    """A store locked by another process answers "not answered" within the read timeout."""
    recorded(path, ("bank.test", BANK, NOW))
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA locking_mode=EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    locker.execute("DELETE FROM answers")
    reader = RecentAnswers(path)
    started = time.monotonic()
    assert not reader.answered("bank.test", "192.0.2.10", NOW + 1)
    assert time.monotonic() - started < 1.0
    locker.rollback()
    locker.close()


class Stalled(AnswerRecorder):
    """A recorder whose writer thread waits in its first write until released."""

    def __init__(self, path: Path, queue_size: int) -> None:
        self.release = threading.Event()
        self.writing = threading.Event()
        super().__init__(path, min_ttl=600, max_ttl=86_400, queue_size=queue_size)

    def _write(self, replies: list[tuple[bytes, bytes, float]]) -> None:
        self.writing.set()
        self.release.wait(5)
        super()._write(replies)


def test_full_queue_drops_and_counts(path: Path) -> None:
    """The query path never waits: past the bound, replies are dropped and counted."""
    rec = Stalled(path, queue_size=2)
    rec.record(to_wire("first.test"), reply("first.test", a("first.test", "192.0.2.1")), NOW)
    assert rec.writing.wait(5)  # the thread holds the first reply; the queue is empty
    started = time.monotonic()
    for n in range(5):
        name = f"n{n}.test"
        rec.record(to_wire(name), reply(name, a(name, f"192.0.2.{n + 10}")), NOW)
    assert time.monotonic() - started < 0.5
    assert rec.dropped == 3
    rec.release.set()
    assert rec.flush()
    with capture_logs() as logs:
        rec.close()
    assert logs[-1]["event"] == "recent_answers_dropped"
    reader = RecentAnswers(path)
    assert reader.answered("n1.test", "192.0.2.11", NOW + 1)
    assert not reader.answered("n2.test", "192.0.2.12", NOW + 1)


@pytest.mark.parametrize(
    ("dns", "proxy", "enabled"),
    [
        pytest.param(DnsSection(), ProxySection(no_decrypt_hosts=("bank.test",)), True, id="on"),
        pytest.param(
            DnsSection(), ProxySection(no_decrypt_categories=("health",)), True, id="categories"
        ),
        pytest.param(DnsSection(), ProxySection(), False, id="no-no-decrypt-lists"),
        pytest.param(
            DnsSection(recent_answers=False),
            ProxySection(no_decrypt_hosts=("bank.test",)),
            False,
            id="turned-off",
        ),
    ],
)
def test_from_config(tmp_path: Path, dns: DnsSection, proxy: ProxySection, enabled: bool) -> None:
    """Recording runs only when the proxy has something to pass through, unless turned off."""
    fields = {"dns": dns, "proxy": proxy, "state_dir": staticmethod(lambda: tmp_path)}
    config = type("Config", (), fields)()
    rec = AnswerRecorder.from_config(config)  # type: ignore[arg-type]
    try:
        assert rec.enabled is enabled
        assert rec.min_ttl == max(dns.recent_answers_min_ttl, dns.cache_min_ttl)
        rec.record(to_wire("bank.test"), BANK, NOW)  # a no-op when off
    finally:
        rec.close()


def test_writer_survives_bad_replies_and_bugs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply that does not parse is skipped; an unexpected error is logged, and writing goes on."""
    rec = AnswerRecorder(path, min_ttl=600, max_ttl=86_400)
    rec.record(to_wire("bad.test"), b"\x00garbage", NOW)
    assert rec.flush()
    assert rec.lost == 0
    real = rec._rows
    monkeypatch.setattr(rec, "_rows", lambda _replies: 1 / 0)
    with capture_logs() as logs:
        rec.record(to_wire("bank.test"), BANK, NOW)
        assert rec.flush()
    monkeypatch.setattr(rec, "_rows", real)
    rec.record(to_wire("bank.test"), BANK, NOW)
    assert rec.flush()
    rec.close()
    assert [e["event"] for e in logs] == ["recent_answers_writer_error"]
    assert rec.lost == 1
    assert RecentAnswers(path).answered("bank.test", "192.0.2.10", NOW + 1)
