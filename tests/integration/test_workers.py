# ruff: noqa: F811  (pytest fixtures imported from conftest_proxy)
"""Proxy workers sharing one port; the notice acknowledgment through a real mitmdump."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest_proxy import (  # noqa: F401  (fixtures)
    POLICY,
    ROOT,
    free_port,
    proxy_origins,
    proxy_pki,
    start_mitmdump,
    stop,
    write_lists,
)

pytestmark = pytest.mark.integration

NAV = {"accept": "text/html", "sec-fetch-dest": "document"}
API = {"accept": "application/json"}
ACK = "  acknowledge: {enabled: true, period_days: 1}\n"
WORKER = "x-aupguard-worker"


def fresh(proxy_url: str) -> httpx.Client:
    """A client on a new connection (SO_REUSEPORT spreads connections, not requests)."""
    return httpx.Client(proxy=proxy_url, timeout=10, follow_redirects=False)


def get(proxy_url: str, url: str, headers: dict[str, str]) -> httpx.Response:
    with fresh(proxy_url) as c:
        return c.get(url, headers=headers)


def acknowledge(proxy_url: str, notice: httpx.Response) -> httpx.Response:
    """Press the notice page's "I acknowledge" button (a POST to the same host)."""
    m = re.search(r'<form method="post" action="([^"]+)">', notice.text)
    assert m is not None, notice.text
    base = str(notice.request.url).split("/", 3)
    with fresh(proxy_url) as c:
        return c.post(f"{base[0]}//{base[2]}{unescape(m.group(1))}")


def test_acknowledge_through_mitmdump(tmp_path, proxy_pki, proxy_origins):
    """First navigation gets the notice; the button records, redirects back; then it passes,
    also after a restart of the proxy."""
    proxy = start_mitmdump(tmp_path, proxy_pki, proxy_extra=ACK)
    try:
        url = f"http://localhost:{proxy_origins.http}/page?x=1"
        api = get(proxy.url, url, API)
        assert api.status_code == 200  # never interrupted
        notice = get(proxy.url, url, NAV)
        assert notice.status_code == 200
        assert 'id="aup-acknowledge"' in notice.text
        done = acknowledge(proxy.url, notice)
        assert done.status_code == 303
        assert done.headers["location"] == url
        after = get(proxy.url, url, NAV)
        assert after.text == "origin:/page?x=1"
        (rec,) = [r for r in proxy.read_records(1) if r["event"]["action"] == "acknowledge"]
        assert rec["aupguard"]["acknowledged_notice_version"] == rec["aupguard"]["notice_version"]
    finally:
        stop(proxy)
    restarted = start_mitmdump(tmp_path, proxy_pki, proxy_extra=ACK)
    try:
        assert get(restarted.url, url, NAV).text == "origin:/page?x=1"
    finally:
        stop(restarted)


@dataclass
class Run:
    proc: subprocess.Popen[bytes]
    url: str
    records: Path


def start_run(tmp_path: Path, proxy_extra: str) -> Run:
    """`aupguard run --workers 2` with a test policy (DNS and metrics off) on a free port."""
    write_lists(tmp_path)
    port = free_port()
    extra = f"  listen: 127.0.0.1:{port}\n{proxy_extra}dns: {{enabled: false}}\nmetrics: {{listen: null}}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(tmp=tmp_path, proxy_extra=extra))
    records = tmp_path / "records.jsonl"
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path / "run"), "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-m", "agent", "run", "--config", str(policy), "--workers", "2"]
    with (tmp_path / "run.log").open("wb") as log:
        proc = subprocess.Popen(
            [*argv, "--records", str(records)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    return Run(proc, f"http://127.0.0.1:{port}", records)


def stop_run(run: Run) -> None:
    """SIGTERM the supervisor; it must stop its workers and exit 0 (bounded wait)."""
    run.proc.send_signal(signal.SIGTERM)
    try:
        assert run.proc.wait(20) == 0
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(5)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Run]:
    """Two workers with the notice acknowledgment on."""
    run = start_run(tmp_path, ACK)
    yield run
    stop_run(run)


def workers_seen(run: Run, url: str, headers: dict[str, str], tries: int = 40) -> set[str]:
    """Pids of the workers that answered `tries` requests on fresh connections (all must pass)."""
    seen: set[str] = set()
    for _ in range(tries):
        r = get(run.url, url, headers)
        assert r.status_code == 200, r.text[:300]
        seen.add(r.headers[WORKER])
    return seen


def wait_for_workers(run: Run, url: str, timeout: float = 30.0) -> set[str]:
    """Bounded wait until both workers answer (each loads the policy on its own)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline and len(seen) < 2:
        assert run.proc.poll() is None, "aupguard run exited"
        try:
            seen.add(get(run.url, url, API).headers.get(WORKER, "?"))
        except httpx.TransportError:
            time.sleep(0.2)
    return seen


def test_run_two_workers_share_port_and_grants(two_workers, proxy_origins):
    """Connections spread over both workers; a Continue and an acknowledgment made on one
    worker hold on the other (shared state), with one throttle pool share each."""
    origin = f"http://localhost:{proxy_origins.http}"
    pids = wait_for_workers(two_workers, f"{origin}/ready")
    assert len(pids) == 2, pids
    warned = get(two_workers.url, f"{origin}/games", API)
    assert warned.status_code == 403
    href = json.loads(warned.text)["continue"]
    assert get(two_workers.url, f"{origin}{href}", API).status_code == 302
    assert workers_seen(two_workers, f"{origin}/games", API) == pids  # continued on both
    notice = get(two_workers.url, f"{origin}/page", NAV)
    assert 'id="aup-acknowledge"' in notice.text
    assert acknowledge(two_workers.url, notice).status_code == 303
    assert workers_seen(two_workers, f"{origin}/page", NAV) == pids  # acknowledged on both


def test_reuse_port_loop_shares_a_port():
    """Servers on a ReusePortLoop share one port; a plain server on it is refused."""
    from agent.proxy import ReusePortLoop  # noqa: PLC0415

    port = free_port()
    loop = ReusePortLoop()
    try:
        servers = [
            loop.run_until_complete(loop.create_server(asyncio.Protocol, "127.0.0.1", port))
            for _ in range(2)
        ]
        plain = asyncio.new_event_loop()
        try:
            with pytest.raises(OSError, match="in use"):
                plain.run_until_complete(plain.create_server(asyncio.Protocol, "127.0.0.1", port))
        finally:
            plain.close()
        for s in servers:
            s.close()
    finally:
        loop.close()


def stream_bytes(
    proxy_url: str, url: str, counts: list[int], workers: list[str], i: int, stop: threading.Event
) -> None:
    """Download `url`, counting bytes into counts[i], until `stop` (bounded by the size)."""
    with fresh(proxy_url) as c, c.stream("GET", url, headers=API) as r:
        workers[i] = r.headers[WORKER]
        for chunk in r.iter_raw(65536):
            counts[i] += len(chunk)
            if stop.is_set():
                break


def test_client_pool_is_host_wide(tmp_path: Path, proxy_origins):
    """Paced downloads of one client spread over both workers share one client pool: the
    steady-state total is the client rate, not twice it."""
    from tests.integration.conftest_proxy import THROTTLE, THROTTLE_RATE  # noqa: PLC0415

    run = start_run(tmp_path, THROTTLE)
    n, stop = 6, threading.Event()
    counts, workers = [0] * n, [""] * n
    threads: list[threading.Thread] = []
    url = f"http://localhost:{proxy_origins.http}/big?n=50000000"
    try:
        pids = wait_for_workers(run, f"http://localhost:{proxy_origins.http}/ready")
        assert len(pids) == 2
        threads = [
            threading.Thread(target=stream_bytes, args=(run.url, url, counts, workers, i, stop))
            for i in range(n)
        ]
        for t in threads:
            t.start()
        time.sleep(2.0)  # start-up bursts fill socket buffers; the counts converge within 1 s
        before, t0 = sum(counts), time.monotonic()
        time.sleep(2.0)
        rate = (sum(counts) - before) / (time.monotonic() - t0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        stop_run(run)
    assert all(workers), counts  # every download ran
    if len(set(workers)) < 2:
        pytest.skip("the kernel put every download on one worker this time (p = 1/32)")
    assert rate <= 1.25 * THROTTLE_RATE, f"{rate:.0f} B/s for a {THROTTLE_RATE} B/s client pool"
    assert rate >= 0.5 * THROTTLE_RATE, f"{rate:.0f} B/s"
