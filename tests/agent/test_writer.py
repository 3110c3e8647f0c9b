"""The record writer: order, never blocking, counted drops, draining close, file sinks."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from agent.records import encode
from agent.writer import JsonLinesFileSink, MemorySink, RecordWriter

NOW = 1795957692.123456  # 2026-11-29T13:08:12.123456Z


def metric(name: str, **labels: str) -> float:
    """A sample's current value in the process's registry (0 before the first count)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- the writer -------------------------------------------------------------------------


class BlockingSink(MemorySink):
    """A sink whose first write blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_lines(self, lines: list[str]) -> None:
        self.entered.set()
        assert self.release.wait(5)
        super().write_lines(lines)


class FailingSink(MemorySink):
    def write_lines(self, lines: list[str]) -> None:
        raise OSError(28, f"No space left on device ({len(lines)} lines lost)")


def test_writer_preserves_order() -> None:
    """Records reach every sink in the order they were written, across batches."""
    sinks = [MemorySink(), MemorySink()]
    writer = RecordWriter(sinks, batch_size=7)
    for n in range(500):
        assert writer.write({"n": n})
    assert writer.flush(5)
    assert [[r["n"] for r in s.records()] for s in sinks] == [list(range(500))] * 2
    assert writer.written == 500
    writer.close()


def test_writer_wakes_for_every_burst() -> None:
    """Bursts with pauses send the thread idle and wake it again each time: nothing is left
    waiting (a lost wake-up would leave a burst in the queue until the next write)."""
    sink = MemorySink()
    writer = RecordWriter([sink], linger=0)
    n = 0
    for burst in range(200):
        for _ in range(burst % 5):
            assert writer.write({"n": n})
            n += 1
        deadline = time.monotonic() + 5
        while writer.written < n and time.monotonic() < deadline:
            time.sleep(0.0002)
        assert writer.written == n, f"burst {burst}: {n - writer.written} records left queued"
    writer.close()
    assert [r["n"] for r in sink.records()] == list(range(n))


def test_writer_never_blocks_and_reports_drops() -> None:
    """With the sink stuck, `write` returns at once, counts drops, and a records-dropped record follows the drain."""
    sink = BlockingSink()
    dropped_before = metric("aupguard_records_dropped_total", stage="queue")
    writer = RecordWriter([sink], queue_size=3, clock=lambda: NOW)
    assert writer.write({"n": 0})
    assert sink.entered.wait(5)
    start = time.perf_counter()
    results = [writer.write({"n": n}) for n in range(1, 7)]
    assert time.perf_counter() - start < 0.5
    assert results == [True, True, True, False, False, False]
    assert writer.dropped == 3
    with capture_logs() as logs:
        sink.release.set()
        assert writer.flush(5)
    records = sink.records()
    assert [r.get("n") for r in records[:4]] == [0, 1, 2, 3]
    assert records[4]["event"]["action"] == "records-dropped"
    assert records[4]["@timestamp"] == "2026-11-29T13:08:12.123456Z"
    assert records[4]["aupguard"] | {"reference_id": None} == {
        "dropped": 3,
        "dropped_total": 3,
        "reference_id": None,
    }
    assert [e for e in logs if e["event"] == "records.dropped"] == [
        {
            "event": "records.dropped",
            "count": 3,
            "total": 3,
            "queue_size": 3,
            "log_level": "warning",
        }
    ]
    assert writer.flush(5)
    assert len(sink.records()) == 5  # reported once
    dropped = metric("aupguard_records_dropped_total", stage="queue") - dropped_before
    assert dropped == 3  # counted once
    writer.close()


def test_writer_close_drains() -> None:
    """`close` writes everything queued, then flushes and closes the sinks; later writes are refused and counted."""
    sink = MemorySink()
    writer = RecordWriter([sink])
    for n in range(1000):
        writer.write({"n": n})
    assert writer.close(5)
    assert len(sink.lines) == 1000
    assert sink.closed
    assert writer.write({"n": "late"}) is False
    assert writer.dropped == 1
    assert writer.flush(1)
    assert writer.close(1)


def test_writer_survives_bad_records_and_sinks() -> None:
    """An unserialisable record is counted as dropped and a failing sink is logged; the other sink gets every record."""
    good, bad = MemorySink(), FailingSink()
    errors_before = metric("aupguard_record_sink_errors_total", sink="FailingSink")
    circular: dict[str, Any] = {"event": {"id": "c1"}}
    circular["self"] = circular
    with capture_logs() as logs, RecordWriter([bad, good], clock=lambda: NOW) as writer:
        writer.write({"n": 1})
        writer.write(circular)
        writer.write({"n": 2, "tags": {"b", "a"}})
        assert writer.flush(5)
    records = good.records()
    assert [r.get("n") for r in records] == [1, 2, None]
    assert records[1]["tags"] == ["a", "b"]
    assert records[2]["aupguard"]["dropped"] == 1
    assert writer.sink_errors >= 1
    assert metric("aupguard_record_sink_errors_total", sink="FailingSink") - errors_before == (
        writer.sink_errors
    )
    events = {e["event"] for e in logs}
    assert {"records.unserialisable", "records.sink_failed", "records.dropped"} <= events


def test_an_idle_writer_ticks_again_at_once_while_there_is_more_and_survives_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tick` runs while nothing is queued, soon again while it says there is more; one
    that raises is counted and logged, and the writer goes on."""
    monkeypatch.setattr("agent.writer.IDLE_TICK", 0.5)
    calls: list[float] = []
    fail = threading.Event()

    def tick() -> bool:
        calls.append(time.monotonic())
        if fail.is_set():
            raise OSError("collector gone")
        return len(calls) <= 5

    sink = MemorySink()
    with capture_logs() as logs, RecordWriter([sink], tick=tick) as writer:
        deadline = time.monotonic() + 5
        while len(calls) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 7
        assert calls[5] - calls[0] < 0.25  # the first six a BUSY_TICK apart, not IDLE_TICK
        assert calls[6] - calls[5] >= 0.45  # then the idle period again
        fail.set()
        deadline = time.monotonic() + 5
        while not writer.sink_errors and time.monotonic() < deadline:
            time.sleep(0.01)
        writer.write({"n": 1})
        assert writer.flush(5)
    assert writer.sink_errors >= 1
    assert [r["n"] for r in sink.records()] == [1]
    assert any(e["event"] == "records.sink_failed" and e["call"] == "tick" for e in logs)


def test_file_sink_mode_and_round_trip(tmp_path: Any) -> None:
    """The records file is created 0640 whatever the umask, appended to, and its lines parse back to the records."""
    path = tmp_path / "records.jsonl"
    records: list[dict[str, Any]] = [
        {
            "event": {"id": "1", "action": "warn"},
            "user": {"name": "jdoe"},
            "url": {"full": "https://ü.example/"},
        },
        {
            "event": {"id": "2", "action": "block"},
            "dns": {"question": {"name": "x.test"}},
            "latency_ms": 0.2,
        },
    ]
    old = os.umask(0o077)
    try:
        writer = RecordWriter([JsonLinesFileSink(path)])
    finally:
        os.umask(old)
    writer.write(records[0])
    writer.close()
    writer = RecordWriter([JsonLinesFileSink(path)])
    writer.write(records[1])
    writer.close()
    assert path.stat().st_mode & 0o777 == 0o640
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert [json.loads(line) for line in text.splitlines()] == records


@pytest.mark.parametrize("short", [1, 7, 1_500], ids=lambda n: f"write-stops-at-{n}")
def test_file_sink_finishes_short_writes_in_order(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, short: int
) -> None:
    """A batch whose every write the OS cuts short: every line once, in order."""
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, bytes(data[:short]))

    monkeypatch.setattr(os, "write", short_write)
    sink = JsonLinesFileSink(tmp_path / "r.jsonl")
    lines = [json.dumps({"n": i, "pad": "é" * (i % 5)}) for i in range(1_100)]
    sink.write_lines(lines)
    sink.close()
    assert (tmp_path / "r.jsonl").read_text(encoding="utf-8") == "".join(f"{x}\n" for x in lines)
    with pytest.raises(ValueError, match="write after close"):
        sink.write_lines(["{}"])


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param({"a": {"b", "a"}}, '{"a":["a","b"]}', id="set-sorted"),
        pytest.param({"u": "ü"}, '{"u":"ü"}', id="utf8-not-escaped"),
        pytest.param({"p": Path("/x")}, '{"p":"/x"}', id="unknown-as-str"),
    ],
)
def test_encode(record: dict[str, Any], expected: str) -> None:
    """Records encode compactly as UTF-8 JSON; sets sort, unknown types become strings."""
    assert encode(record) == expected


class FullDisk:
    """`os.write` in agent.writer on a disk with `room` bytes left (None: room again)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, room: int) -> None:
        self.room: int | None = room
        self._write = os.write
        monkeypatch.setattr("agent.writer.os.write", self)

    def __call__(self, fd: int, data: Any) -> int:
        if self.room is None:
            return self._write(fd, data)
        if self.room <= 0:
            raise OSError(28, "No space left on device")
        sent = self._write(fd, bytes(data[: self.room]))
        self.room -= sent
        return sent


@pytest.mark.parametrize(("interval", "summaries"), [(60.0, 0), (0.0, 17)])
def test_a_full_disk_is_logged_once_per_episode_and_leaves_one_bad_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interval: float, summaries: int
) -> None:
    """Every batch fails on a full disk: one traceback, a summary a minute at most, and one
    line saying what it cost when writes work again. The line the disk cut short is ended
    before the next batch, so the records after it parse."""
    monkeypatch.setattr("agent.writer.FAILING_LOG_INTERVAL", interval)
    disk = FullDisk(monkeypatch, room=150)  # the third record is cut short
    sink = JsonLinesFileSink(tmp_path / "r.jsonl")
    with capture_logs() as logs, RecordWriter([sink]) as writer:
        for n in range(20):
            writer.write({"n": n, "pad": "x" * 40})
            assert writer.flush(5)
        disk.room = None
        writer.write({"n": "after"})
        assert writer.flush(5)
    events = [e["event"] for e in logs if e["event"].startswith("records.sink")]
    assert events == [
        "records.sink_failed",
        *["records.sink_still_failing"] * summaries,
        "records.sink_recovered",
    ]
    recovered = next(e for e in logs if e["event"] == "records.sink_recovered")
    assert (recovered["failed_calls"], recovered["failed_lines"]) == (18, 18)
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line)["n"])
        except ValueError:
            parsed.append("torn")
    assert parsed == [0, 1, "torn", "after"]


def test_a_file_left_with_a_torn_last_line_is_ended_before_new_records(tmp_path: Path) -> None:
    """A restart after a full disk or a crash: the first new record is not glued to the tail."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"n": 0}\n{"n": 1, "pad": "to')
    with capture_logs() as logs:
        sink = JsonLinesFileSink(path)
    sink.write_lines(['{"n": 2}'])
    sink.close()
    assert path.read_text().splitlines() == ['{"n": 0}', '{"n": 1, "pad": "to', '{"n": 2}']
    assert [e["event"] for e in logs] == ["records.torn_line"]


def test_a_sink_still_failing_at_close_says_what_it_cost() -> None:
    """A shutdown during a failure episode logs its count (the first failure alone did)."""
    with capture_logs() as logs, RecordWriter([FailingSink(), MemorySink()]) as writer:
        for n in range(5):
            writer.write({"n": n})
            assert writer.flush(5)
    summary = [e for e in logs if e["event"] == "records.sink_still_failing"]
    assert [(e["call"], e["failed_calls"], e["failed_lines"]) for e in summary] == [("close", 5, 5)]


class FlappingSink(MemorySink):
    """A disk hovering around full: every other batch fails."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write_lines(self, lines: list[str]) -> None:
        self.calls += 1
        if self.calls % 2:
            raise OSError(28, "No space left on device")
        super().write_lines(lines)


def test_a_flapping_disk_is_one_episode_until_it_has_been_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Failures and successes in turn are one episode (one traceback), which ends with the
    first success after `RECOVERY_QUIET` seconds without a failure (a traceback per flap
    came to 26 in 12 s)."""
    monkeypatch.setattr("agent.writer.RECOVERY_QUIET", 0.3)
    sink = FlappingSink()
    with capture_logs() as logs, RecordWriter([sink]) as writer:
        for n in range(10):
            writer.write({"n": n})
            assert writer.flush(5)
        time.sleep(0.4)
        sink.calls = 1  # the next call goes through, and quiet has lasted long enough
        writer.write({"n": "later"})
        assert writer.flush(5)
        events = [e["event"] for e in logs if e["event"].startswith("records.sink")]
    assert events == ["records.sink_failed", "records.sink_recovered"]
    recovered = next(e for e in logs if e["event"] == "records.sink_recovered")
    assert (recovered["failed_calls"], recovered["failed_lines"]) == (5, 5)
