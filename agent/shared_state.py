"""Grants shared by every proxy worker and kept across restarts (Continue, acknowledgments).

A grant says: `subject` (user, else client address) holds `scope` (``continue:<category>``,
``notice:<version>``) until a time. Grants live in one SQLite file in the state directory,
opened by every worker:

- WAL mode: readers never wait for the (single, short) writer, so a lookup on the request
  path is a local B-tree read of a few microseconds; a busy store reads as "no grant", the
  conservative side (the user sees the page again).
- Writes go through one thread per worker (`grant` returns a Future); the grant is in the
  local cache at once, and callers that must not race another worker wait for the Future
  without blocking the event loop (`agent.enforcement` pauses the flow with
  `flow.intercept()` until the commit).
- Positive lookups are cached in-process until the grant ends (grants are never revoked),
  bounded LRU; misses always ask the store, so a grant written by another worker counts on
  the next request.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

STATE_FILE = "proxy-state.sqlite3"
WORKERS_ENV = "AUPGUARD_WORKERS"  # set by `aupguard run --workers N` / `aupguard proxy --workers`
READ_BUSY_MS = 20  # a reader waits at most this long (WAL readers normally never wait)
WRITE_BUSY_MS = 5_000  # the writer thread may wait for another worker's commit
PRUNE_EVERY = 3_600.0  # seconds between deletions of ended grants
CACHE_MAX = 100_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    subject TEXT NOT NULL,
    scope TEXT NOT NULL,
    until REAL NOT NULL,
    PRIMARY KEY (subject, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS paced (
    worker INTEGER NOT NULL,
    client TEXT NOT NULL,
    transfers INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (worker, client)
) WITHOUT ROWID;
"""
PACED_MAX_AGE = 5.0  # a worker's paced-transfer counts older than this are ignored (crashed)
log = structlog.get_logger("aupguard.state")


def connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    """An autocommit connection that waits at most `busy_ms` for another writer."""
    conn = sqlite3.connect(path, timeout=busy_ms / 1000, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    return conn


def prepare_store(path: Path, schema: str, busy_ms: int = WRITE_BUSY_MS) -> None:
    """Create a store (WAL, `schema`, mode 0600) if needed; OSError when it cannot be used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        init = connect(path, busy_ms)
        try:
            init.execute("PRAGMA journal_mode=WAL")
            init.executescript(schema)
        finally:
            init.close()
        path.chmod(0o600)
    except sqlite3.Error as e:
        raise OSError(f"{path}: {e}") from e


class SharedState:
    """One worker's handle on the shared grant store: cached reads, threaded writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.prepare(path)
        self._reader = connect(path, READ_BUSY_MS)
        self._reader_thread = threading.get_ident()
        self._cache: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()  # the cache is written from the writer thread too
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="aupguard-state")
        self._local = threading.local()
        self._last_prune = time.monotonic()  # first prune an interval after start

    @staticmethod
    def prepare(path: Path) -> None:
        """Create the store (WAL, schema, mode 0600) if needed; OSError when it cannot be used."""
        prepare_store(path, _SCHEMA)

    def until(self, subject: str, scope: str, now: float) -> float | None:
        """When `subject`'s grant for `scope` ends, or None when there is none (or it ended)."""
        key = (subject, scope)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached >= now:
            return cached
        try:
            row = self._read(key)
        except sqlite3.Error as e:
            log.warning("state_read_failed", error=str(e), path=str(self.path))
            return None
        if row is None or row < now:
            return None
        self._remember(key, row)
        return row

    def allowed(self, subject: str, scope: str, now: float) -> bool:
        """True while `subject` holds `scope`."""
        return self.until(subject, scope, now) is not None

    def _read_conn(self) -> sqlite3.Connection:
        if threading.get_ident() != self._reader_thread:
            return self._thread_conn(READ_BUSY_MS)
        return self._reader

    def _read(self, key: tuple[str, str]) -> float | None:
        row = (
            self._read_conn()
            .execute("SELECT until FROM grants WHERE subject = ? AND scope = ?", key)
            .fetchone()
        )
        return None if row is None else float(row[0])

    def _remember(self, key: tuple[str, str], until: float) -> None:
        with self._lock:
            self._cache[key] = until
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)

    def grant(self, subject: str, scope: str, until: float) -> Future[None]:
        """Grant `scope` to `subject` until `until`: cached now, durable when the Future is done."""
        self._remember((subject, scope), until)
        return self._writer.submit(self._write, subject, scope, until)

    def _thread_conn(self, busy_ms: int) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, busy_ms)
        return conn

    def _write(self, subject: str, scope: str, until: float) -> None:
        conn = self._thread_conn(WRITE_BUSY_MS)
        with conn:  # one short transaction; keep the later end when two workers race
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO grants (subject, scope, until) VALUES (?, ?, ?) "
                "ON CONFLICT (subject, scope) DO UPDATE SET until = max(until, excluded.until)",
                (subject, scope, until),
            )
        if time.monotonic() - self._last_prune >= PRUNE_EVERY:
            self._last_prune = time.monotonic()
            with conn:
                conn.execute("DELETE FROM grants WHERE until < ?", (time.time(),))
                conn.execute("DELETE FROM paced WHERE updated < ?", (time.time() - PRUNE_EVERY,))

    def publish_paced(self, worker: int, counts: Mapping[str, int], now: float) -> Future[None]:
        """Replace `worker`'s paced-transfer counts per client (written by the thread)."""
        rows = [(worker, client, n, now) for client, n in counts.items()]
        return self._writer.submit(self._write_paced, worker, rows)

    def _write_paced(self, worker: int, rows: list[tuple[int, str, int, float]]) -> None:
        conn = self._thread_conn(WRITE_BUSY_MS)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM paced WHERE worker = ?", (worker,))
            conn.executemany("INSERT INTO paced VALUES (?, ?, ?, ?)", rows)

    def paced_elsewhere(self, worker: int, now: float) -> dict[str, int] | None:
        """Other workers' fresh paced-transfer counts per client; None when unreadable."""
        try:
            rows = (
                self._read_conn()
                .execute(
                    "SELECT client, sum(transfers) FROM paced WHERE worker != ? AND updated >= ? "
                    "GROUP BY client",
                    (worker, now - PACED_MAX_AGE),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            log.warning("state_read_failed", error=str(e), path=str(self.path))
            return None
        return {str(client): int(n) for client, n in rows}

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every grant submitted so far is durable."""
        self._writer.submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Finish pending writes and close the store."""
        self._writer.shutdown(wait=True)
        self._reader.close()

    def __len__(self) -> int:
        """Grants in the store (ended ones included until pruned)."""
        row = self._thread_conn(READ_BUSY_MS).execute("SELECT count(*) FROM grants").fetchone()
        return int(row[0])


def after_commit(
    durable: Future[None], pause: Callable[[], None], resume: Callable[[], None]
) -> None:
    """Pause (e.g. `flow.intercept`) until `durable` is done, then `resume` on the event loop.

    The loop is never blocked: the writer thread's completion schedules `resume`. Without a
    running loop (tests, tools) it waits here, bounded by the writer's busy timeout.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _report(durable, wait=True)
        return
    if durable.done():
        _report(durable)
        return
    pause()

    def done(f: Future[None]) -> None:
        _report(f)
        loop.call_soon_threadsafe(resume)

    durable.add_done_callback(done)


def _report(durable: Future[None], *, wait: bool = False) -> None:
    """Log a failed write: the grant still holds on this worker (its cache), not on others."""
    try:
        durable.result(WRITE_BUSY_MS / 1000 + 1 if wait else 0)
    except (sqlite3.Error, OSError, TimeoutError) as e:
        log.error("state_write_failed", error=str(e))


def worker_count() -> int:
    """How many proxy workers share the listen port (`aupguard run --workers`), from the env."""
    try:
        return max(1, int(os.environ.get(WORKERS_ENV, "1")))
    except ValueError:
        return 1


class PacedCensus:
    """One worker's view of every worker's paced transfers, for host-wide throttle pools."""

    __slots__ = ("state", "worker", "workers")

    def __init__(self, state: SharedState, workers: int, worker: int | None = None) -> None:
        self.state = state
        self.workers = workers
        self.worker = os.getpid() if worker is None else worker

    def publish(self, counts: Mapping[str, int], now: float) -> None:
        """Tell the other workers how many transfers this one paces per client."""
        self.state.publish_paced(self.worker, counts, now)

    def elsewhere(self, now: float) -> dict[str, int] | None:
        """Paced transfers per client on the other workers; None when the store is unreadable."""
        return self.state.paced_elsewhere(self.worker, now)
