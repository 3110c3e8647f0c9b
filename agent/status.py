"""`aupguard status`: what runs, which policy/notice/lists are in force, and what needs care soon.

Reads the config (never the running processes' memory) and the state file `aupguard run`
writes. Warnings cover what an admin must act on: exceptions expiring within 30 days, a
holiday calendar with no entries for next year, lists that failed or went stale.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from agent.cli import command
from agent.config import display_path, load_config
from agent.gateway import read_state, runtime_dir
from agent.index import lists_version
from agent.records import notice_version

if TYPE_CHECKING:
    from agent.config import Config
    from agent.lists import ListSource

EXPIRY_WARN_DAYS = 30
STALE_LIST_DAYS = 14


@dataclass(frozen=True, slots=True)
class ListStatus:
    """One category list file: entries (non-comment lines) and age."""

    category: str
    source: str
    entries: int | None
    age_days: float | None


@dataclass(slots=True)
class Status:
    """Everything `aupguard status` reports; `warnings` are what needs an admin."""

    policy_revision: str
    notice_version: str
    lists_version: str
    layers: list[str]
    running: dict[str, Any] | None
    lists: list[ListStatus]
    expiring: list[str]
    holiday_years: list[int]
    records: RecordsHealth | None = None  # from the running services' metrics
    warnings: list[str] = field(default_factory=list)


def count_entries(path: Path) -> int:
    """Non-blank, non-comment lines of a list file (or of a UT1 folder's domains + urls)."""
    files = [path / "domains", path / "urls"] if path.is_dir() else [path]
    total = 0
    for f in files:
        if f.is_file():
            with f.open("rb") as fh:
                total += sum(
                    1 for line in fh if line.strip() and not line.lstrip().startswith(b"#")
                )
    return total


def list_status(source: ListSource, now: float) -> ListStatus:
    """Entries and age of one list; None for both when the file is missing."""
    try:
        mtime = source.path.stat().st_mtime
        entries = count_entries(source.path)
    except OSError:
        return ListStatus(source.category, source.label, None, None)
    return ListStatus(source.category, source.label, entries, round((now - mtime) / 86400, 1))


def expiring_exceptions(config: Config, today: dt.date, days: int = EXPIRY_WARN_DAYS) -> list[str]:
    """Exceptions that expired or expire within `days`, soonest first."""
    found = [
        (e.expires, f"{e.id} ({layer.name}) expires {e.expires} [{e.where}]")
        for layer in config.layers
        for e in layer.exceptions
        if (e.expires - today).days <= days
    ]
    return [text for _, text in sorted(found)]


def holiday_warnings(years: set[int], today: dt.date) -> list[str]:
    """Warn when this year or next has no holidays (schedules would run on holidays)."""
    return [
        f"holidays: no holidays configured for {year}: "
        "skip_holidays schedules will treat every weekday as a working day"
        for year in (today.year, today.year + 1)
        if year not in years
    ]


def collect(config: Config, now: float, state: dict[str, Any] | None) -> Status:
    """Build the status report for `config` at `now` with the supervisor's `state`."""
    today = dt.datetime.fromtimestamp(now, config.timezone).date()
    sources = config.list_sources()
    lists = [list_status(s, now) for s in sources]
    years = {h.date.year for h in config.holidays}
    status = Status(
        policy_revision=config.revision,
        notice_version=notice_version(config.notice_text()),
        lists_version=lists_version(sources),
        layers=[layer.name for layer in config.layers],
        running=state,
        lists=lists,
        expiring=expiring_exceptions(config, today),
        holiday_years=sorted(years),
    )
    status.warnings += [f"exception {text}" for text in status.expiring]
    status.warnings += holiday_warnings(years, today)
    for item in lists:
        if item.entries is None:
            status.warnings.append(f"list {item.source}: missing")
        elif item.age_days is not None and item.age_days > STALE_LIST_DAYS:
            status.warnings.append(f"list {item.source}: not updated for {item.age_days:.0f} days")
    if state is not None and config.metrics.listen:
        status.records = records_health(config.metrics.listen)
    if status.records is not None:
        status.warnings += status.records.warnings()
    if state is None:
        status.warnings.append(f"not running (no live state file in {runtime_dir()})")
    elif state.get("revision") != config.revision:
        status.warnings.append("the running policy differs from the config on disk: reload")
    return status


@dataclass(frozen=True, slots=True)
class RecordsHealth:
    """What the running services' metrics say about their records since they started."""

    spool_depth: float = 0.0  # waiting in the syslog spools
    dropped: dict[str, float] = field(default_factory=dict)  # lost, by stage
    sink_errors: dict[str, float] = field(default_factory=dict)  # failed sink calls, by sink
    unconfirmed: float = 0.0  # sent on a dead connection, not spooled again

    def warnings(self) -> list[str]:
        """What an admin must look at: any record lost or at risk since the start."""
        found = []
        if self.spool_depth:
            found.append(f"{self.spool_depth:.0f} records wait in the syslog spool")
        if total := sum(self.dropped.values()):
            found.append(f"{total:.0f} records dropped since the services started "
                         f"({_by(self.dropped)}): see the records-dropped records")  # fmt: skip
        if total := sum(self.sink_errors.values()):
            found.append(f"{total:.0f} failed writes to record sinks ({_by(self.sink_errors)}):"
                         " a full disk? see records.sink_failed in the log")  # fmt: skip
        if self.unconfirmed:
            found.append(f"{self.unconfirmed:.0f} records sent on a collector connection that "
                         "died could not be spooled again (unconfirmed)")  # fmt: skip
        return found


def _by(counts: dict[str, float]) -> str:
    return ", ".join(f"{label} {value:.0f}" for label, value in sorted(counts.items()) if value)


def records_health(listen: str) -> RecordsHealth | None:
    """The records figures of our own metrics endpoint; None when it does not answer."""
    url = f"http://{listen}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            text = reply.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    depth, unconfirmed = 0.0, 0.0
    dropped: dict[str, float] = {}
    errors: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        totals = [x for x in family.samples if x.name.endswith("_total") or family.type == "gauge"]
        if family.name == "aupguard_records_spool_depth":
            depth = sum(x.value for x in totals)
        elif family.name == "aupguard_records_unconfirmed":
            unconfirmed = sum(x.value for x in totals)
        elif family.name == "aupguard_records_dropped":
            for x in totals:
                dropped[x.labels.get("stage", "")] = x.value
        elif family.name == "aupguard_record_sink_errors":
            for x in totals:
                errors[x.labels.get("sink", "")] = x.value
    return RecordsHealth(depth, dropped, errors, unconfirmed)


def render(status: Status) -> str:
    """The human-readable report."""
    out = [f"policy   {status.policy_revision} ({' > '.join(status.layers)})"]
    out.append(f"notice   {status.notice_version}")
    out.append(f"lists    {status.lists_version} (of the list files on disk)")
    if status.running:
        started = dt.datetime.fromtimestamp(float(status.running.get("started", 0)), dt.UTC)
        out.append(
            f"running  pid {status.running.get('pid')} since {started:%Y-%m-%d %H:%M}Z, "
            f"policy {status.running.get('revision')}"
        )
        if reload_at := status.running.get("last_reload"):
            at = dt.datetime.fromtimestamp(float(reload_at), dt.UTC)
            out.append(f"reloaded {at:%Y-%m-%d %H:%M}Z (SIGHUP forwarded to the services)")
        for name, child in dict(status.running.get("children", {})).items():
            out.append(
                f"  {name:<10} pid {child.get('pid')} on {', '.join(child.get('listen', []))}"
                f" restarts {child.get('restarts', 0)}"
            )
    else:
        out.append("running  no")
    if status.records is not None:
        out.append(f"spool    {status.records.spool_depth:.0f} records waiting for the collector")
    out.append(f"holidays {', '.join(map(str, status.holiday_years)) or 'none'}")
    for item in status.lists:
        entries = "missing" if item.entries is None else f"{item.entries} entries"
        age = "" if item.age_days is None else f", {item.age_days} days old"
        out.append(f"list     {item.category:<16} {entries}{age}  {item.source}")
    out.extend(f"warning: {w}" for w in status.warnings)
    return "\n".join(out) + "\n"


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="baseline policy file")
    p.add_argument("--json", action="store_true", help="print one JSON object")


@command("status", "what runs; policy, notice and list versions; what needs care", _status_args)
def cmd_status(args: argparse.Namespace) -> int:
    """Print the status report; exit 0 (warnings included), 1 on config errors."""
    config = load_config(args.config)
    status = collect(config, time.time(), read_state())
    if args.json:
        sys.stdout.write(json.dumps(asdict(status), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(f"config   {display_path(config.files[0])}\n" + render(status))
    return 0
