"""`aupguard report`: usage counts, filters, table/CSV/HTML output and the audit record."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent.model import Action, Classification, Client, Decision, Request, Source
from agent.records import Notice, build_record
from agent.report import Filters, _args, aggregate, cmd_report, read_lines, render_csv, render_html

NOTICE = Notice.from_text("We monitor.")
T0 = 1_795_000_000.0  # 2026-11-18T...Z
PLAN = [  # (user, ip, host, action, category, extra)
    ("alice", "10.0.0.1", "mail.yahoo.com", Action.BLOCK, "webmail", {}),
    ("alice", "10.0.0.1", "www.indeed.com", Action.WARN, "jobsearch", {}),
    ("alice", "10.0.0.1", "www.indeed.com", Action.WARN, "jobsearch", {"aupguard.continued": True}),
    ("bob", "10.0.0.2", "www.nasa.gov", Action.ALLOW, None, {}),
    ("bob", "10.0.0.2", "mail.yahoo.com", Action.ALLOW, "webmail", {"aupguard.throttled": True}),
    (None, "10.0.0.3", "poker.example", Action.BLOCK, "gambling", {}),
]


def decision(action: Action, category: str | None, exception: str | None = None) -> Decision:
    return Decision(
        action=action,
        category=category,
        categories=(category,) if category else (),
        rule="r1",
        layer="statewide",
        schedule=None,
        reason=f"{action.label}",
        reason_label=action.label,
        classification=Classification("h", None),
        exception=exception,
    )


def records(repeat: int = 1) -> list[dict[str, Any]]:
    out = []
    for i in range(repeat):
        for j, (user, ip, host, action, cat, extra) in enumerate(PLAN):
            exc = "ex-42" if user == "bob" and action is Action.ALLOW and cat else None
            out.append(
                build_record(
                    request=Request(host, "/", f"https://{host}/", Source.HTTP),
                    client=Client(ip, user),
                    decision=decision(action, cat, exc),
                    now=T0 + 3600 * i + j,
                    policy_rev="rev",
                    notice=NOTICE,
                    extra=extra,
                )
            )
    return out


def lines(recs: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r) + "\n" for r in recs]


def test_counts_per_user_client_category_and_special_events() -> None:
    """One pass counts users, clients, categories, continued warnings, throttles and exceptions."""
    u = aggregate(lines(records(3)), Filters())
    assert u.records == 18
    assert u.users["alice"] == {"block": 3, "warn": 6}
    assert u.users["-"] == {"block": 3}
    assert u.clients["10.0.0.2"]["allow"] == 6
    assert u.categories.most_common(1) == [("webmail", 6)]
    assert u.domains["www.indeed.com"] == 6
    assert u.continued == {"alice 10.0.0.1": 3}
    assert u.throttled == {"bob 10.0.0.2": 3}
    assert u.exceptions == {"ex-42": 3}
    assert sum(c["block"] for c in u.over_time.values()) == 6
    assert len(u.over_time) == 3


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param(Filters(user="alice"), 9, id="user"),
        pytest.param(Filters(client="10.0.0.3"), 3, id="client"),
        pytest.param(Filters(category="webmail"), 6, id="category"),
        pytest.param(Filters(action="warn"), 6, id="action"),
        pytest.param(Filters(user="alice", action="block"), 3, id="user-and-action"),
        pytest.param(Filters(user="alic"), 0, id="user-exact-not-substring"),
        pytest.param(
            Filters(since="2026-11-18T00:00:00.000000Z", until="2026-12-01T00:00:00.000000Z"),
            18,
            id="time-range-all",
        ),
        pytest.param(Filters(until="2000-01-01T00:00:00.000000Z"), 0, id="until-before"),
    ],
)
def test_filters(filters: Filters, expected: int) -> None:
    """Each filter keeps exactly the matching records."""
    assert aggregate(lines(records(3)), filters).records == expected


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    _args(parser)
    return cmd_report(parser.parse_args(argv))


@pytest.fixture
def recfile(tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(lines(records(2))) + "not json\n")
    return path


def test_table_and_audit_record(
    recfile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table names users and sections; the run is audited with who and which filters."""
    audit = tmp_path / "audit" / "report-audit.jsonl"
    assert run([str(recfile), "--user", "alice", "--audit", str(audit)]) == 0
    out = capsys.readouterr().out
    assert "records: 6" in out
    assert "continued warnings" in out
    assert "alice" in out
    entry = json.loads(audit.read_text())
    assert entry["event"]["action"] == "report"
    assert entry["aupguard"]["report"]["filters"] == {"user": "alice"}
    assert entry["user"]["name"]
    assert audit.stat().st_mode & 0o777 == 0o640


def test_no_report_without_audit(
    recfile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A report run that cannot be audited produces no report."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert run([str(recfile), "--audit", str(blocked / "audit.jsonl")]) == 1
    assert capsys.readouterr().out == ""


def test_csv_output(recfile: Path, tmp_path: Path) -> None:
    """CSV has per-user rows per action and the ranked sections."""
    out = tmp_path / "r.csv"
    assert (
        run([str(recfile), "--format", "csv", "--out", str(out), "--audit", str(tmp_path / "a")])
        == 0
    )
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["section", "key", "action", "count"]
    assert ["user", "alice", "warn", "4"] in rows
    assert ["top categories", "webmail", "", "4"] in rows


def test_stdin(
    recfile: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`-` reads records from stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO(recfile.read_text()))
    assert run(["-", "--action", "block", "--audit", str(tmp_path / "a")]) == 0
    assert "records: 4" in capsys.readouterr().out


def test_html_is_self_contained_and_escaped() -> None:
    """HTML has SVG charts, no scripts or external resources, and escapes record values."""
    recs = records(2)
    recs[0]["user"]["name"] = "<script>alert(1)</script>"
    page = render_html(aggregate(lines(recs), Filters()), Filters())
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert page.count("<svg") >= 5
    assert "http://" not in page
    assert "https://" not in page


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.mark.integration
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="LOUD SKIP: chromium not installed")
def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    """Chromium renders the report: the DOM has the charts and a screenshot is produced."""
    page = tmp_path / "report.html"
    page.write_text(render_html(aggregate(lines(records(5)), Filters()), Filters()))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}"]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert 'data-chart="timeline"' in dom
    assert 'data-section="users"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri()],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 5000


def test_needle_scan_matches_full_parse(tmp_path: Path) -> None:
    """The memory-mapped needle scan finds the same records as parsing every line."""
    path = tmp_path / "r.jsonl"
    path.write_text("".join(lines(records(4))).rstrip("\n"))  # last line without a line end
    for filters in (
        Filters(user="alice"),
        Filters(client="10.0.0.3"),
        Filters(action="warn"),
        Filters(user="nobody"),
        Filters(category="webmail", action="allow"),
    ):
        fast = aggregate(read_lines([str(path)], filters.needle()), filters)
        slow = aggregate(read_lines([str(path)]), filters)
        assert fast == slow
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert list(read_lines([str(empty)], '"alice"')) == []


def test_csv_defuses_spreadsheet_formulas(tmp_path: Path) -> None:
    """A user name that looks like a formula is written as text."""
    recs = records(1)
    recs[0]["user"]["name"] = "=HYPERLINK(1)"
    text = render_csv(aggregate(lines(recs), Filters()), Filters())
    assert "'=HYPERLINK(1)" in text
    assert ",=HYPERLINK" not in text
