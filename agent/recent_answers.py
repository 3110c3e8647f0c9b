"""Which addresses the gateway's DNS filter recently answered for which name, host-wide.

The proxy passes a no-decrypt host through untouched in transparent mode only when the
connection's original destination is an address the DNS filter answered for the SNI
(`agent.enforcement`): the SNI is then consistent with where the connection goes. The DNS
filter (its own process) writes, the proxy workers read, through one SQLite file in the
state directory (`answers` table: name, address, until):

- The DNS query path never waits: `AnswerRecorder.record` puts the upstream reply on a
  bounded queue (full: dropped and counted) and returns; one thread parses the replies
  (A/AAAA and HTTPS/SVCB address hints of the question name and its CNAME chain, all stored
  under the question name: the SNI a client then sends) and commits
  whatever has queued in one transaction, at once (no linger: a client connects a round trip
  after its answer).
- Only upstream answers (cache fills) a client was given are recorded (not one blocked as
  CNAME cloaking: its addresses were never handed out), so a row lives at least as long as the
  cache may serve its answer: `until = now + clamp(TTL, min_ttl, max(cache_max_ttl, min_ttl))`
  where `min_ttl` is at least `dns.cache_min_ttl` (see `retention`).
- Expired rows are deleted when writing, at most once a minute, and the soonest-ending
  ones past `max_rows`.
- WAL mode (`agent.shared_state`): readers never wait for the writer. A store that cannot
  be opened or read answers "not answered" (the conservative side: intercept) and logs once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import structlog
from dnslib import QTYPE, DNSBuffer, DNSError, DNSRecord

from agent.config import Config
from agent.dns_wire import address_hints, label_wire, to_text
from agent.shared_state import READ_BUSY_MS, WRITE_BUSY_MS, connect, prepare_store

STORE_FILE = "dns-answers.sqlite3"
QUEUE_MAX = 10_000  # upstream replies waiting for the writer thread
BATCH_MAX = 1_000  # replies per transaction
MAX_ROWS = 1_000_000  # (name, address) rows kept at most (~100 MB)
PRUNE_EVERY = 60.0  # seconds between deletions of expired rows
RETRY_EVERY = 30.0  # seconds before a store that failed is opened again
DROP_REPORT_EVERY = 60.0  # seconds between reports of dropped replies
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (name, address)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_until ON answers (until);
"""
_UPSERT = (
    "INSERT INTO answers (name, address, until) VALUES (?, ?, ?) "
    "ON CONFLICT (name, address) DO UPDATE SET until = max(until, excluded.until)"
)
log = structlog.get_logger("aupguard.recent_answers")


def store_path(config: Config) -> Path:
    """The store both sides open: `dns-answers.sqlite3` in the state directory."""
    return config.state_dir() / STORE_FILE


def prepare(path: Path, busy_ms: int = WRITE_BUSY_MS) -> None:
    """Create the store (WAL, schema, mode 0600) if needed; OSError when it cannot be used."""
    prepare_store(path, _SCHEMA, busy_ms)


def normalise_address(text: str) -> str:
    """An address as stored: compressed, no zone, IPv4-mapped IPv6 as IPv4; ValueError if bad."""
    addr = ipaddress.ip_address(text.strip().strip("[]").partition("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def addresses(wire: bytes, name: bytes) -> list[tuple[str, int]]:
    """(address, TTL) of the A/AAAA records for wire name `name` or its CNAME chain.

    The address hints of HTTPS/SVCB records count too: a client may connect to them before
    (or instead of) asking for A/AAAA, with the SNI of the name it asked about. Records for
    other owners (out-of-chain data an upstream added) are ignored. ValueError for a reply
    that does not parse.
    """
    try:
        rrs = DNSRecord.parse(wire).rr
    except (DNSError, ValueError, IndexError, UnicodeError) as e:
        raise ValueError(f"unparsable reply: {e}") from e
    owners = {name}
    cnames = [
        (label_wire(rr.rname), label_wire(rr.rdata.label)) for rr in rrs if rr.rtype == QTYPE.CNAME
    ]
    grew = True
    while grew:  # follow the chain whatever the records' order
        grew = False
        for owner, target in cnames:
            if owner in owners and target not in owners:
                owners.add(target)
                grew = True
    found: list[tuple[str, int]] = []
    for rr in rrs:
        if label_wire(rr.rname) not in owners:
            continue
        if rr.rtype in (QTYPE.A, QTYPE.AAAA):
            found.append((normalise_address(str(rr.rdata)), int(rr.ttl)))
        elif rr.rtype in (QTYPE.HTTPS, QTYPE.SVCB):
            rdata = DNSBuffer()
            rr.rdata.pack(rdata)
            hints = address_hints(bytes(rdata.data))
            found += [(normalise_address(hint), int(rr.ttl)) for hint in hints]
    return found


def retention(ttl: int, min_ttl: int, max_ttl: int) -> int:
    """Seconds an answered address counts: the TTL, at least `min_ttl`, at most `max_ttl`."""
    return min(max(ttl, min_ttl), max(max_ttl, min_ttl))


class _Failures:
    """Log a store failure once per outage; hold off reopening for `RETRY_EVERY` seconds."""

    __slots__ = ("event", "failing", "path", "retry_at")

    def __init__(self, event: str, path: Path | None) -> None:
        self.event = event
        self.path = path
        self.failing = False
        self.retry_at = 0.0

    def failed(self, error: BaseException) -> None:
        self.retry_at = time.monotonic() + RETRY_EVERY
        if not self.failing:
            self.failing = True
            log.warning(self.event, error=str(error), path=str(self.path))

    def may_retry(self) -> bool:
        return time.monotonic() >= self.retry_at


_STOP = object()


class AnswerRecorder:
    """The DNS filter's side: upstream answers queued to one writer thread, never waited for."""

    def __init__(
        self,
        path: Path | None,
        *,
        min_ttl: int,
        max_ttl: int,
        queue_size: int = QUEUE_MAX,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.path = path
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.max_rows = max_rows
        self.dropped = 0  # replies not recorded: the queue was full (counted on the loop)
        self.lost = 0  # replies not recorded: the store failed (counted by the writer)
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._failures = _Failures("recent_answers_write_failed", path)
        self._conn: sqlite3.Connection | None = None
        self._last_prune = 0.0
        self._reported = (0, time.monotonic())
        self._thread: threading.Thread | None = None
        if path is not None:
            self._thread = threading.Thread(target=self._run, name="aupguard-answers", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(cls, config: Config) -> AnswerRecorder:
        """Recording on when `dns.recent_answers` is and the proxy has no-decrypt lists."""
        dns, proxy = config.dns, config.proxy
        wanted = dns.recent_answers and bool(proxy.no_decrypt_hosts or proxy.no_decrypt_categories)
        return cls(
            store_path(config) if wanted else None,
            min_ttl=max(dns.recent_answers_min_ttl, dns.cache_min_ttl),
            max_ttl=dns.cache_max_ttl,
        )

    @property
    def enabled(self) -> bool:
        """True when answers are recorded."""
        return self._thread is not None

    def record(self, name: bytes, wire: bytes, now: float) -> None:
        """Queue an upstream reply to wire name `name` (the question); never blocks or raises."""
        if self._thread is None:
            return
        try:
            self._queue.put_nowait((name, wire, now))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is written (or failed); False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread and close the store."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):  # else a daemon thread: it ends with the process
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None
        if self.dropped or self.lost:
            log.warning("recent_answers_dropped", dropped=self.dropped, lost=self.lost)

    # --- the writer thread ------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            replies = [item for item in batch if isinstance(item, tuple)]
            try:
                self._write(replies)
            except Exception:  # a bug must not end the thread: the queue would only fill
                self.lost += len(replies)
                log.exception("recent_answers_writer_error")
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()
            self._report_drops()
            if any(item is _STOP for item in batch):
                if self._conn is not None:
                    self._conn.close()
                return

    def _rows(self, replies: Iterable[tuple[bytes, bytes, float]]) -> list[tuple[str, str, float]]:
        rows = []
        for name, wire, now in replies:
            try:
                found = addresses(wire, name)
            except ValueError:
                continue  # the cache took it, so this does not happen; never fail the batch
            text = to_text(name)
            for address, ttl in found:
                rows.append((text, address, now + retention(ttl, self.min_ttl, self.max_ttl)))
        return rows

    def _write(self, replies: list[tuple[bytes, bytes, float]]) -> None:
        rows = self._rows(replies)
        if not rows:
            return
        conn = self._open()
        if conn is None:
            self.lost += len(replies)
            return
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_UPSERT, rows)
            if time.monotonic() - self._last_prune >= PRUNE_EVERY:
                self._last_prune = time.monotonic()
                self.prune(conn, time.time(), self.max_rows)
        except sqlite3.Error as e:  # busy past WRITE_BUSY_MS, disk full, file replaced
            self.lost += len(replies)
            self._failures.failed(e)
            conn.close()
            self._conn = None  # reopened (after RETRY_EVERY) in case the file was replaced
            return
        self._failures.failing = False

    def _open(self) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if self.path is None or not self._failures.may_retry():
            return None
        try:
            prepare(self.path)
            conn = connect(self.path, WRITE_BUSY_MS)
            conn.execute("PRAGMA synchronous=NORMAL")  # a cache: no fsync per commit
        except (OSError, sqlite3.Error) as e:
            self._failures.failed(e)
            return None
        self._conn = conn
        return conn

    @staticmethod
    def prune(conn: sqlite3.Connection, now: float, max_rows: int) -> None:
        """Delete expired rows, then the soonest-ending ones beyond `max_rows`."""
        with conn:
            conn.execute("DELETE FROM answers WHERE until < ?", (now,))
            (count,) = conn.execute("SELECT count(*) FROM answers").fetchone()
            if count > max_rows:
                conn.execute(
                    "DELETE FROM answers WHERE (name, address) IN "
                    "(SELECT name, address FROM answers ORDER BY until LIMIT ?)",
                    (count - max_rows,),
                )

    def _report_drops(self) -> None:
        dropped, at = self._reported
        if self.dropped != dropped and time.monotonic() - at >= DROP_REPORT_EVERY:
            log.warning("recent_answers_dropped", dropped=self.dropped - dropped)
            self._reported = (self.dropped, time.monotonic())


class RecentAnswers:
    """The proxy's side: was `address` recently answered for `name`? Reads only, never waits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._failures = _Failures("recent_answers_unreadable", path)

    def answered(self, name: str, address: str, now: float) -> bool:
        """True while the DNS filter's answer for `name` (or its CNAME chain) held `address`."""
        try:
            addr = normalise_address(address)
        except ValueError:
            return False  # a host name, not an address: nothing DNS answered
        conn = self._conn()
        if conn is None:
            return False
        try:
            row = conn.execute(
                "SELECT 1 FROM answers WHERE name = ? AND address = ? AND until >= ?",
                (name.lower().rstrip("."), addr, now),
            ).fetchone()
        except sqlite3.Error as e:  # busy or broken: the conservative side
            self._failures.failed(e)
            return False
        self._failures.failing = False
        return row is not None

    def _conn(self) -> sqlite3.Connection | None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if not self._failures.may_retry():
            return None
        try:
            prepare(self.path, READ_BUSY_MS)  # the proxy may start before the DNS filter
            conn = self._local.conn = connect(self.path, READ_BUSY_MS)
        except (OSError, sqlite3.Error) as e:
            self._failures.failed(e)
            return None
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
