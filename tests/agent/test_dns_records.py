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
        recorder.trip("refused", client, "x.test", 100.0 + i * 0.001)
    assert len(writer.records) == 1
    recorder.sweep(100.0 + TRIP_INTERVAL)
    counts = [r["aupguard"]["dns"]["count"] for r in writer.records]
    assert counts == [1, 999]
    assert all(r["dns"]["response_code"] == "REFUSED" for r in writer.records)
    recorder.sweep(100.0 + 3 * TRIP_INTERVAL)  # idle clients are forgotten: bounded state
    assert recorder._trips == {}
