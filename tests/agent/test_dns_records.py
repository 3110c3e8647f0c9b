"""DNS records: which queries are recorded, and floods recorded once per interval with a count."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DnsRecords
from agent.dns_records import TRIP_INTERVAL, Recorder
from agent.model import Action, Client, Source
from agent.runtime import Runtime
from tests.agent.test_dns_server import ListWriter, dns_runtime


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    return dns_runtime(tmp_path)


@pytest.mark.parametrize(
    ("mode", "name", "wanted"),
    [
        pytest.param(DnsRecords.DEFAULT, "blocked.test", True, id="default-block"),
        pytest.param(DnsRecords.DEFAULT, "fine.test", False, id="default-allow"),
        pytest.param(DnsRecords.ALL, "fine.test", True, id="all-allow"),
        pytest.param(DnsRecords.OFF, "blocked.test", False, id="off-block"),
    ],
)
def test_which_queries_are_recorded(
    runtime: Runtime, mode: DnsRecords, name: str, wanted: bool
) -> None:
    """Default records non-allow decisions, `all` every query, `off` none."""
    recorder = Recorder(mode, ListWriter(), runtime)  # type: ignore[arg-type]
    ev = runtime.engine.evaluate("127.0.0.1", name, source=Source.DNS, host_only=True)
    assert (ev.decision.action is Action.BLOCK) is (name == "blocked.test")
    assert recorder.wants(ev.decision) is wanted


def test_a_flood_is_recorded_once_per_interval_with_its_count(runtime: Runtime) -> None:
    """1,000 refused queries in one interval become two records: the first, then the count."""
    writer = ListWriter()
    recorder = Recorder(DnsRecords.DEFAULT, writer, runtime)  # type: ignore[arg-type]
    client = Client("192.0.2.7")
    for i in range(1000):
        recorder.trip("refused", client, "x.test", 1, 100.0 + i * 0.001)
    assert len(writer.records) == 1
    recorder.sweep(100.0 + TRIP_INTERVAL)
    counts = [r["aupguard"]["dns"]["count"] for r in writer.records]
    assert counts == [1, 999]
    assert all(r["dns"]["response_code"] == "REFUSED" for r in writer.records)
    recorder.sweep(100.0 + 3 * TRIP_INTERVAL)  # idle clients are forgotten: bounded state
    assert recorder._trips == {}


@pytest.mark.parametrize(
    ("sweeps", "counts"),
    [
        pytest.param([(105.0, False)], [1], id="pending-count-waits-for-its-interval"),
        pytest.param([(105.0, False), (110.0, False)], [1, 3], id="recorded-when-due"),
        pytest.param([(105.0, True)], [1, 3], id="final-sweep-records-everything"),
    ],
)
def test_each_client_is_recorded_at_most_once_per_interval(
    runtime: Runtime, sweeps: list[tuple[float, bool]], counts: list[int]
) -> None:
    """A client's trip records are an interval apart, whenever the sweep runs; the last sweep
    (shutdown) records what is still pending, with the last name and type asked."""
    writer = ListWriter()
    recorder = Recorder(DnsRecords.DEFAULT, writer, runtime)  # type: ignore[arg-type]
    for i, (now, qtype) in enumerate(((100.0, 1), (101.0, 28), (102.0, 65), (103.0, 15))):
        recorder.trip("rate-limited", Client("192.0.2.7"), f"n{i}.test", qtype, now)
    for now, final in sweeps:
        recorder.sweep(now, final=final)
    assert [r["aupguard"]["dns"]["count"] for r in writer.records] == counts
    last = [(r["dns"]["question"]["name"], r["dns"]["question"]["type"]) for r in writer.records]
    assert last[1:] == [("n3.test", "MX")][: len(counts) - 1]


def test_trips_from_more_clients_than_tracked_are_counted_together(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood from many (spoofed) addresses: memory and records stay bounded, nothing is
    lost from the counts."""
    monkeypatch.setattr("agent.dns_records.MAX_TRIP_CLIENTS", 5)
    writer = ListWriter()
    recorder = Recorder(DnsRecords.DEFAULT, writer, runtime)  # type: ignore[arg-type]
    for i in range(1000):
        recorder.trip("refused", Client(f"198.51.{i // 256}.{i % 256}"), "x.test", 1, 100.0)
    assert len(recorder._trips) == 6
    recorder.sweep(100.0, final=True)
    sources = [r["source"]["ip"] for r in writer.records]
    assert len(sources) == 7  # five clients, and "the rest" on its first trip and at the end
    assert sources[5:] == ["0.0.0.0", "0.0.0.0"]
    assert sum(r["aupguard"]["dns"]["count"] for r in writer.records) == 1000
    assert writer.records[-1]["aupguard"]["dns"]["untracked"] is True
