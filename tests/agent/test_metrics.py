"""Metrics: the endpoint serves the shared counters, in one process or summed across children."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter

from agent import metrics

ROOT = Path(__file__).resolve().parents[2]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("127.0.0.1:9108", ("127.0.0.1", 9108), id="ipv4"),
        pytest.param("[::1]:9108", ("::1", 9108), id="ipv6"),
        pytest.param("9108", None, id="no-host"),
        pytest.param("127.0.0.1:http", None, id="named-port"),
    ],
)
def test_split_listen(listen: str, expected: tuple[str, int] | None) -> None:
    """ADDRESS:PORT parses; anything else is a ValueError naming the value."""
    if expected is None:
        with pytest.raises(ValueError, match="expected ADDRESS:PORT"):
            metrics.split_listen(listen)
    else:
        assert metrics.split_listen(listen) == expected


def test_serve_exposes_the_shared_metrics() -> None:
    """The in-process endpoint shows decisions, DNS queries and reloads with their labels."""
    metrics.DECISIONS.labels(source="dns", action="block", category="webmail").inc()
    metrics.RELOADS.labels(result="ok").inc()
    metrics.DNS_QUERIES.labels(result="blocked").inc()
    metrics.UPSTREAM_LATENCY.labels(source="dns").observe(0.02)
    port = metrics.serve("127.0.0.1:0")
    text = scrape(port)
    assert 'aupguard_decisions_total{action="block",category="webmail",source="dns"}' in text
    assert 'aupguard_reloads_total{result="ok"}' in text
    assert "aupguard_upstream_latency_seconds_bucket" in text


def test_serve_custom_registry() -> None:
    """A service may serve its own registry."""
    registry = CollectorRegistry()
    Counter("probe", "a probe", registry=registry).inc()
    assert "probe_total 1.0" in scrape(metrics.serve("127.0.0.1:0", registry))


def test_multiprocess_sums_children(tmp_path: Path) -> None:
    """Children writing to the shared dir are summed by the supervisor's endpoint."""
    directory = tmp_path / "metrics"
    code = (
        "from agent import metrics\n"
        "metrics.DECISIONS.labels(source='http', action='block', category='gambling').inc()\n"
    )
    port = metrics.serve_multiprocess("127.0.0.1:0", directory)
    try:
        env = {**os.environ, metrics.MULTIPROC_ENV: str(directory)}
        for _ in range(2):
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=30)
        text = scrape(port)
    finally:
        os.environ.pop(metrics.MULTIPROC_ENV, None)
    assert 'aupguard_decisions_total{action="block",category="gambling",source="http"} 2.0' in text


def test_list_collector_reports_age_and_entries(tmp_path: Path) -> None:
    """List age and entries are read at scrape time; a missing file is left out."""
    (tmp_path / "a.txt").write_text("# c\none.example\ntwo.example\n")
    os.utime(tmp_path / "a.txt", (1, time.time() - 3600))
    registry = CollectorRegistry()
    registry.register(
        metrics.ListCollector(lambda: [("webmail", tmp_path / "a.txt"), ("gone", tmp_path / "x")])
    )
    text = scrape(metrics.serve("127.0.0.1:0", registry))
    assert 'aupguard_list_entries{category="webmail"} 2.0' in text
    age = next(line for line in text.splitlines() if line.startswith("aupguard_list_age_seconds{"))
    assert 3590 < float(age.split()[-1]) < 3700
    assert 'category="gone"' not in text


def test_tally_counts_locally_until_flushed() -> None:
    """Hot-path counts reach the Prometheus counter only on flush, summed per label set."""
    registry = CollectorRegistry()
    counter = Counter("t_decisions", "test", ["action"], registry=registry)
    tally = metrics.Tally()
    for action in ("block", "block", "allow"):
        tally.add(counter, action)
    assert registry.get_sample_value("t_decisions_total", {"action": "block"}) is None
    tally.flush()
    assert registry.get_sample_value("t_decisions_total", {"action": "block"}) == 2
    assert registry.get_sample_value("t_decisions_total", {"action": "allow"}) == 1
    tally.flush()
    assert registry.get_sample_value("t_decisions_total", {"action": "block"}) == 2


def test_tally_cells_are_flushed_with_the_counts() -> None:
    """A cell is the same for the same labels, adds to `add()`'s counts and restarts at 0."""
    registry = CollectorRegistry()
    counter = Counter("t_answers", "test", ["kind"], registry=registry)
    tally = metrics.Tally()
    cell = tally.cell(counter, "block")
    assert tally.cell(counter, "block") is cell
    metrics.bump((cell, cell))
    tally.add(counter, "block")
    tally.flush()
    assert registry.get_sample_value("t_answers_total", {"kind": "block"}) == 3
    assert cell == [0]
    metrics.bump((cell,))
    tally.flush()
    assert registry.get_sample_value("t_answers_total", {"kind": "block"}) == 4
