"""The grant store shared by proxy workers: cached reads, threaded durable writes."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import warnings
from concurrent.futures import Future
from pathlib import Path

import pytest

from agent import shared_state
from agent.shared_state import PacedCensus, SharedState, after_commit, worker_count
from agent.throttle import Throttle, ThrottleSpec

with warnings.catch_warnings():  # pyparsing deprecations inside mitmproxy's imports
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy.test import tflow, tutils

    from agent.shaping import Shaper
    from tests.agent.test_shaping import Handler, Server, Sock


@pytest.fixture
def store(tmp_path: Path):
    s = SharedState(tmp_path / "state.sqlite3")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("granted", "subject", "scope", "now", "expected"),
    [
        pytest.param(
            ("alice", "continue:games", 100.0), "alice", "continue:games", 50.0, True, id="held"
        ),
        pytest.param(
            ("alice", "continue:games", 100.0), "alice", "continue:games", 100.5, False, id="ended"
        ),
        pytest.param(
            ("alice", "continue:games", 100.0),
            "bob",
            "continue:games",
            50.0,
            False,
            id="other-subject",
        ),
        pytest.param(
            ("alice", "continue:games", 100.0), "alice", "notice:v1", 50.0, False, id="other-scope"
        ),
    ],
)
def test_allowed(store, granted, subject, scope, now, expected):
    """A grant holds for its subject and scope until it ends."""
    store.grant(*granted).result(5)
    assert store.allowed(subject, scope, now) is expected


def test_grant_visible_to_another_worker_and_after_restart(tmp_path: Path):
    """A grant written by one handle is read by another (a second worker, or after a restart)."""
    path = tmp_path / "state.sqlite3"
    a, b = SharedState(path), SharedState(path)
    try:
        assert not b.allowed("10.0.0.5", "notice:v1", 1.0)  # a miss is not cached
        a.grant("10.0.0.5", "notice:v1", 1000.0).result(5)
        assert b.allowed("10.0.0.5", "notice:v1", 1.0)
    finally:
        a.close()
        b.close()
    restarted = SharedState(path)
    try:
        assert restarted.until("10.0.0.5", "notice:v1", 1.0) == 1000.0
    finally:
        restarted.close()


def test_store_is_wal_and_private(store):
    """The store runs in WAL mode (readers never wait for the writer) and is mode 0600."""
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_racing_grants_keep_the_later_end(store):
    """Two grants of one scope keep the later end (two workers redeeming at once)."""
    store.grant("alice", "continue:games", 200.0)
    store.grant("alice", "continue:games", 150.0).result(5)
    fresh = SharedState(store.path)
    try:
        assert fresh.until("alice", "continue:games", 1.0) == 200.0
    finally:
        fresh.close()


def test_cache_is_bounded(store, monkeypatch):
    """The positive cache evicts its oldest entries past its bound."""
    monkeypatch.setattr(shared_state, "CACHE_MAX", 3)
    for n in range(5):
        store.grant(f"u{n}", "s", 100.0)
    store.flush()
    assert len(store._cache) == 3
    assert len(store) == 5


def test_unreadable_store_reads_as_no_grant(store):
    """A failing read is 'no grant' (the conservative side), not an exception on the hot path."""
    store._reader.close()
    assert store.until("alice", "s", 1.0) is None


def test_reads_from_another_thread(store):
    """A lookup from a thread other than the creator uses its own connection."""
    store.grant("alice", "s", 100.0).result(5)
    fresh = SharedState(store.path)
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(fresh.allowed("alice", "s", 1.0)))
    t.start()
    t.join(5)
    fresh.close()
    assert out == [True]


async def test_after_commit_pauses_until_durable():
    """With a running loop the flow is paused until the write is done, then resumed on the loop."""
    events: list[str] = []
    resumed = asyncio.Event()
    durable: Future[None] = Future()

    def resume() -> None:
        events.append("resume")
        resumed.set()

    after_commit(durable, lambda: events.append("pause"), resume)
    assert events == ["pause"]
    threading.Thread(target=durable.set_result, args=(None,)).start()
    await asyncio.wait_for(resumed.wait(), 5)
    assert events == ["pause", "resume"]


def test_after_commit_without_loop_waits():
    """Without a running loop the caller waits for the write; a failure is logged, not raised."""
    failed: Future[None] = Future()
    failed.set_exception(sqlite3.OperationalError("database is locked"))
    calls: list[str] = []
    after_commit(failed, lambda: calls.append("pause"), lambda: calls.append("resume"))
    assert calls == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(None, 1, id="unset"),
        pytest.param("4", 4, id="four"),
        pytest.param("0", 1, id="zero"),
        pytest.param("many", 1, id="garbage"),
    ],
)
def test_worker_count(monkeypatch, env, expected):
    """The worker count comes from AUPGUARD_WORKERS, at least 1."""
    if env is None:
        monkeypatch.delenv(shared_state.WORKERS_ENV, raising=False)
    else:
        monkeypatch.setenv(shared_state.WORKERS_ENV, env)
    assert worker_count() == expected


def test_ended_grants_are_pruned(store, monkeypatch):
    """The writer deletes ended grants once per PRUNE_EVERY (here: at every write)."""
    monkeypatch.setattr(shared_state, "PRUNE_EVERY", 0.0)
    store.grant("old", "s", 1.0)
    store.grant("new", "s", 4e9).result(5)
    assert len(store) == 1


# --- host-wide throttle pools (PacedCensus + Shaper) ------------------------------------

SPEC = ThrottleSpec(threshold=100_000, client_rate=8_000, aggregate_rate=10_000, window=60)


def paced(shaper: Shaper, server: Server, ip: str, now: float) -> Sock:
    """Start one paced 500 kB transfer for `ip` on `shaper`; the socket it paces."""
    sock = Sock()
    f = tflow.tflow(resp=tutils.tresp(content=b""))
    f.response.headers["content-length"] = "500000"
    f.client_conn.peername = (ip, 40000)
    server.connections[f.client_conn.id] = Handler(f.client_conn, sock)
    shaper.on_response_headers(f, (), now)
    sock.stream = f.response.stream  # the transfer's counting callable
    return sock


@pytest.mark.parametrize(
    ("other_ip", "other_age", "readable", "rate"),
    [
        pytest.param(None, 0.0, True, 8_000, id="alone-client-pool"),
        pytest.param("10.0.0.2", 0.0, True, 5_000, id="other-client-elsewhere-halves-aggregate"),
        pytest.param("10.0.0.1", 0.0, True, 4_000, id="same-client-elsewhere-halves-client"),
        pytest.param("10.0.0.2", 10.0, True, 8_000, id="stale-worker-ignored"),
        pytest.param(None, 0.0, False, 5_000, id="unreadable-static-share"),
    ],
)
def test_pools_are_host_wide(tmp_path: Path, other_ip, other_age, readable, rate):
    """A paced transfer's rate counts the transfers other workers pace (client and aggregate)."""
    path = tmp_path / "state.sqlite3"
    mine, theirs = SharedState(path), SharedState(path)
    now = 1_000.0
    if other_ip is not None:
        theirs.publish_paced(2, {other_ip: 1}, now - other_age).result(5)
    server = Server()
    shaper = Shaper(Throttle(SPEC, lambda _n: True), lambda: server, PacedCensus(mine, 2, 1))
    if not readable:
        mine._reader.close()
    sock = paced(shaper, server, "10.0.0.1", now)
    mine.flush()
    assert sock.rates[-1] == rate
    if readable:
        assert theirs.paced_elsewhere(2, now) == {"10.0.0.1": 1}
    mine.close()
    theirs.close()


def test_counts_follow_transfers_and_resync(tmp_path: Path):
    """A worker re-reads the others' counts at most every SYNC_EVERY while it paces."""
    path = tmp_path / "state.sqlite3"
    mine, theirs = SharedState(path), SharedState(path)
    server = Server()
    shaper = Shaper(Throttle(SPEC, lambda _n: True), lambda: server, PacedCensus(mine, 2, 1))
    sock = paced(shaper, server, "10.0.0.1", 1_000.0)
    assert sock.rates[-1] == 8_000
    count = sock.stream
    theirs.publish_paced(2, {"10.0.0.2": 3}, time.time()).result(5)
    count(b"x")  # the last exchange was long ago (at t=1000): re-read and re-balance
    assert sock.rates[-1] == 2_500  # aggregate 10,000 over 4 transfers on the host
    theirs.publish_paced(2, {"10.0.0.2": 9}, time.time()).result(5)
    count(b"x")  # within SYNC_EVERY of the last exchange: no re-read
    assert sock.rates[-1] == 2_500
    mine.close()
    theirs.close()
