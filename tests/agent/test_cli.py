"""The `aupguard` console script, run for real as admins script it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG

AUPGUARD = Path(sys.executable).with_name("aupguard")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if not AUPGUARD.exists():
        pytest.skip(f"console script {AUPGUARD} not installed: run `make test`, which installs it")
    return subprocess.run(
        [str(AUPGUARD), *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )


@pytest.mark.parametrize(
    ("url", "client", "at", "action", "category", "rule"),
    [
        pytest.param(
            "https://mail.yahoo.com/",
            "10.20.1.5",
            "2026-11-23T10:00",
            "block",
            "webmail",
            "personal-use",
            id="webmail",
        ),
        pytest.param(
            "https://aws.amazon.com/",
            "10.20.1.5",
            "2026-11-23T10:00",
            "allow",
            None,
            "default",
            id="aws-console-not-shopping",
        ),
        pytest.param(
            "https://www.indeed.com/",
            "10.20.30.7",
            "2026-11-23T10:00",
            "allow",
            "jobsearch",
            "exception:hr-job-boards",
            id="hr-exception",
        ),
        pytest.param(
            "https://www.indeed.com/",
            "10.20.1.5",
            "2026-11-23T10:00",
            "block",
            "jobsearch",
            "personal-use",
            id="jobsearch",
        ),
        pytest.param(
            "https://www.nasa.gov/",
            "10.20.1.5",
            "2026-11-23T10:00",
            "allow",
            None,
            "default",
            id="gov",
        ),
    ],
)
def test_classify_json(
    url: str, client: str, at: str, action: str, category: str | None, rule: str
) -> None:
    """`classify --json` prints category, action, rule and reason for the shipped policy."""
    proc = run("classify", url, "--client", client, "--at", at, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["action"], out["category"], out["rule"]) == (action, category, rule), out["reason"]
    assert out["reason"].startswith(action + ":")
    assert out["notice_version"].startswith("sha256:")


def test_classify_text_explains() -> None:
    """The text form names the matched entry with its file and line."""
    proc = run("classify", "https://mail.yahoo.com/", "--client", "10.20.1.5")
    assert proc.returncode == 0, proc.stderr
    assert "blocklists/webmail.txt:" in proc.stdout
    assert "action          block" in proc.stdout


def test_classify_bad_url_exits_2() -> None:
    """A URL that is not one is a usage error (2) with a message, not a traceback."""
    proc = run("classify", "http://exa mple.com/")
    assert proc.returncode == 2
    assert "aupguard classify: 'http://exa mple.com/'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_check_config_ok_and_errors(tmp_path: Path) -> None:
    """check-config exits 0 on the shipped policy and 1 with file:line errors on a bad one."""
    ok = run("check-config", str(DEFAULT_CONFIG))
    assert ok.returncode == 0, ok.stderr
    assert "layers statewide > example-agency" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer: x\npolicy:\n  timezone: Nowhere/City\n  colour: red\n")
    proc = run("check-config", str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("bad.yaml:1: records.notice: missing")
    assert any(line.startswith("bad.yaml:3: policy.timezone: 'Nowhere/City'") for line in lines)
    assert any(line.startswith("bad.yaml:4: policy.colour: unknown key 'colour'") for line in lines)


def test_exceptions_lists_approver_and_expiry() -> None:
    """`exceptions` shows each exception's approver, reference and expiry status."""
    proc = run("exceptions")
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("hr-job-boards"))
    assert "approved by Jordan Lee, State CIO (CIO-2026-014)" in line
    assert "expires 2027-06-30" in line


def test_lists_stats() -> None:
    """`lists stats` reports entries per category for the shipped lists."""
    proc = run("lists", "stats")
    assert proc.returncode == 0, proc.stderr
    assert "webmail" in proc.stdout


def test_python_dash_m() -> None:
    """`python -m agent` is the same command."""
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("aupguard ")


def test_classify_writes_the_record(tmp_path: Path) -> None:
    """`classify --records FILE` appends one ECS record stamped with the notice version."""
    out = tmp_path / "records.jsonl"
    proc = run(
        "classify",
        "https://mail.yahoo.com/?password=hunter2",
        "--client",
        "10.20.1.5",
        "--records",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = out.read_text().splitlines()
    record = json.loads(line)
    assert record["event"]["action"] == "block"
    assert record["aupguard"]["notice_version"].startswith("sha256:")
    assert "hunter2" not in line
    assert out.stat().st_mode & 0o777 == 0o640
