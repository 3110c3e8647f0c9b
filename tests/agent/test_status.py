"""`aupguard status`: versions, list ages, expiring exceptions, holiday coverage, what runs."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from agent import status
from agent.config import load_config
from agent.index import lists_version

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC).timestamp()


def write_config(tmp_path: Path, holidays: str, expires: str) -> Path:
    (tmp_path / "webmail.txt").write_text("# comment\nmail.yahoo.com\n\nhotmail.com\n")
    os.utime(tmp_path / "webmail.txt", (NOW - 20 * 86400, NOW - 20 * 86400))
    path = tmp_path / "policy.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        layer: test
        policy:
          timezone: America/New_York
          holidays: {holidays}
          categories:
            webmail: {{clause: "No personal mail.", lists: [webmail.txt]}}
            jobsearch: {{clause: "No job search.", lists: [jobsearch.txt]}}
          groups:
            staff: {{networks: [10.0.0.0/8]}}
          rules:
            - {{id: personal, categories: [webmail], action: block}}
          exceptions:
            - {{id: ex1, groups: [staff], hosts: [mail.yahoo.com], approved_by: CIO,
                reference: R-1, expires: {expires}}}
        records:
          notice: {{text: "We monitor."}}
        """)
    )
    (tmp_path / "jobsearch.txt").write_text("indeed.com\n")
    return path


def collect(
    tmp_path: Path, holidays: str = "[]", expires: str = "2030-01-01", state: dict | None = None
) -> status.Status:
    config = load_config(write_config(tmp_path, holidays, expires))
    if state is not None:
        state.setdefault("revision", config.revision)
    return status.collect(config, NOW, state)


@pytest.mark.parametrize(
    ("holidays", "expected"),
    [
        pytest.param("[]", ["2026", "2027"], id="none"),
        pytest.param("[{date: 2026-12-25}]", ["2027"], id="next-year-missing"),
        pytest.param("[{date: 2026-12-25}, {date: 2027-01-01}]", [], id="covered"),
    ],
)
def test_holiday_coverage(tmp_path: Path, holidays: str, expected: list[str]) -> None:
    """A year without holidays (this one or next) is a warning."""
    got = [w for w in collect(tmp_path, holidays=holidays).warnings if w.startswith("holidays")]
    assert [w.split("for ")[1][:4] for w in got] == expected


@pytest.mark.parametrize(
    ("expires", "flagged"),
    [
        pytest.param("2026-11-01", True, id="expired"),
        pytest.param("2026-12-20", True, id="within-30-days"),
        pytest.param("2027-03-01", False, id="later"),
    ],
)
def test_expiring_exceptions(tmp_path: Path, expires: str, flagged: bool) -> None:
    """Exceptions that expired or expire within 30 days are listed."""
    st = collect(tmp_path, expires=expires)
    assert bool(st.expiring) is flagged
    if flagged:
        assert "ex1 (test) expires" in st.expiring[0]


def test_lists_entries_and_age(tmp_path: Path) -> None:
    """Each list shows its entries (comments and blanks not counted) and age; stale is a warning."""
    st = collect(tmp_path)
    webmail = next(item for item in st.lists if item.category == "webmail")
    assert (webmail.entries, webmail.age_days) == (2, 20.0)
    assert any("webmail.txt: not updated for 20 days" in w for w in st.warnings)


@pytest.mark.parametrize(
    ("state", "needle"),
    [
        pytest.param(None, "not running", id="stopped"),
        pytest.param(
            {"pid": 1, "revision": "sha256:old"}, "differs from the config", id="stale-policy"
        ),
    ],
)
def test_running_state_warnings(tmp_path: Path, state: dict | None, needle: str) -> None:
    """No supervisor, or one running an older policy, is reported."""
    assert any(needle in w for w in collect(tmp_path, state=state).warnings)


def test_render_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The text report names policy, notice, children; the JSON form is one object."""
    state = {
        "pid": os.getpid(),
        "started": NOW,
        "last_reload": NOW,
        "children": {"dns": {"pid": 7, "listen": ["127.0.0.1:5353"], "restarts": 1}},
    }
    text = status.render(collect(tmp_path, state=state))
    assert "policy   sha256:" in text
    assert "notice   sha256:" in text
    sources = load_config(tmp_path / "policy.yaml").list_sources()
    assert f"lists    {lists_version(sources)} " in text  # what the records will carry
    assert "reloaded 2026-11-23 12:00Z" in text
    assert "dns        pid 7 on 127.0.0.1:5353 restarts 1" in text
    args = argparse.Namespace(config=tmp_path / "policy.yaml", json=True)
    assert status.cmd_status(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["policy_revision"].startswith("sha256:")


def test_records_health_read_from_the_metrics_endpoint() -> None:
    """status reads the spool depth, drops, sink errors and unconfirmed records from the
    loopback metrics endpoint, and warns about each that is not zero."""
    registry = CollectorRegistry()
    Gauge("aupguard_records_spool_depth", "test", registry=registry).set(42)
    dropped = Counter("aupguard_records_dropped", "test", ["stage"], registry=registry)
    dropped.labels("queue").inc(3)
    dropped.labels("spool").inc(0)
    errors = Counter("aupguard_record_sink_errors", "test", ["sink"], registry=registry)
    errors.labels("RotatingFileSink").inc(2)
    Counter("aupguard_records_unconfirmed", "test", registry=registry).inc(1)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        port = server.server_address[1]
        health = status.records_health(f"127.0.0.1:{port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert health == status.RecordsHealth(42, {"queue": 3, "spool": 0}, {"RotatingFileSink": 2}, 1)
    assert [w.split(" (")[0].split(":")[0] for w in health.warnings()] == [
        "42 records wait in the syslog spool",
        "3 records dropped since the services started",
        "2 failed writes to record sinks",
        "1 records sent on a collector connection that died could not be spooled again",
    ]
    assert "queue 3)" in health.warnings()[1]
    assert status.RecordsHealth().warnings() == []
    assert status.records_health(f"127.0.0.1:{port}") is None  # nothing listens any more
