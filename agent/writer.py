"""The one record writer: `write()` never blocks; a thread writes the records in order.

Nothing is lost silently: at most `queue_size` records wait, more are dropped, counted and
reported as a `records-dropped` record once the queue drains; `close()` drains everything.
`write()` encodes a record at once, with orjson (under a microsecond): queued strings are
invisible to the garbage collector, while queued dicts survived every young collection and
doubled the hot path's cost. DNS records come through `stamp()` (template, time, DNS id),
lock-free from the event loop, and are rendered in the writer thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

from agent.logs import get_logger
from agent.metrics import RECORD_SINK_ERRORS, RECORDS_DROPPED
from agent.record_template import RecordTemplate, Stamp, render_stamps
from agent.records import dropped_record, encode

if TYPE_CHECKING:
    from types import TracebackType

_log = get_logger(__name__)
NEWLINE = ord("\n")
IDLE_TICK = 1.0  # seconds between an idle writer's calls of `tick`
BUSY_TICK = 0.02  # the same while `tick` has more to do (a spool to deliver)


# --- sinks ------------------------------------------------------------------------------


class RecordSink(Protocol):
    """Where serialised records go; called from the writer thread only.

    `lines` are JSON documents without line ends, in order; a sink must not mutate the
    list (wrappers such as a hash chain build a new one and pass it on).
    """

    def write_lines(self, lines: list[str]) -> None:
        """Write one batch."""

    def flush(self) -> None:
        """Make everything written so far durable."""

    def close(self) -> None:
        """Flush and release resources; called once."""


class JsonLinesFileSink:
    """Append JSON lines to a file created with mode 0640; fsync on flush.

    Each batch is one `os.write` (no buffered file object: one copy less).
    """

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o640) -> None:
        self.path = os.fspath(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_EXCL, mode)
            os.fchmod(fd, mode)  # the umask must not change who may read the records
        except FileExistsError:
            fd = os.open(self.path, flags, mode)
        self._fd: int | None = fd
        # A failed write (a full disk, a crash) left part of a line: end it before the next.
        self._torn = _ends_inside_a_line(self.path)
        if self._torn:
            _log.warning("records.torn_line", path=self.path, detail="the file ends inside a "
                         "line (a full disk, a crash); it is ended before new records")  # fmt: skip

    def write_lines(self, lines: list[str]) -> None:
        """Append the batch as whole lines and hand it to the OS.

        A write that fails part way (a full disk) raises and leaves a torn line; the next
        batch ends it first, so that it is one bad line and the records after it parse.
        """
        if self._fd is None:
            raise ValueError(f"{self.path}: write after close")
        if not lines:
            return
        data = "\n".join(["", *lines, ""] if self._torn else [*lines, ""]).encode()
        sent, error = write_all(self._fd, data)
        if error is not None:
            if sent:
                self._torn = data[sent - 1] != NEWLINE
            raise error
        self._torn = False

    def fileno(self) -> int:
        """The open file's descriptor."""
        if self._fd is None:
            raise ValueError(f"{self.path}: closed")
        return self._fd

    def stat(self) -> os.stat_result:
        """The open file's status, wherever its name has gone since."""
        if self._fd is None:
            raise ValueError(f"{self.path}: stat after close")
        return os.fstat(self._fd)

    def flush(self) -> None:
        """Make the lines durable (fsync)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Fsync and close."""
        if self._fd is not None:
            sync_and_close(self.detach())

    def detach(self) -> int:
        """Give up the open descriptor without syncing it: the caller syncs and closes it."""
        if self._fd is None:
            raise ValueError(f"{self.path}: detach after close")
        fd, self._fd = self._fd, None
        return fd


def write_all(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write `data`, finishing short writes (a signal, a nearly full disk).

    How much went out, and the error that stopped it (None when all did): a caller that
    appends lines must know whether it left part of one behind.
    """
    rest = memoryview(data)
    try:
        while rest:
            rest = rest[os.write(fd, rest) :]
    except OSError as e:
        return len(data) - len(rest), e
    return len(data), None


def _ends_inside_a_line(path: str) -> bool:
    """True when the file at `path` is not empty and its last byte is no line end."""
    with open(path, "rb") as f:  # noqa: PTH123  (the sink keeps paths as str)
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def sync_and_close(fd: int, *, drop_cache: bool = False) -> None:
    """Fsync `fd`, drop its pages from the page cache if asked, and close it in any case."""
    try:
        os.fsync(fd)
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class MemorySink:
    """Keep lines in memory (tests, `aupguard classify`)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.flushes = 0
        self.closed = False

    def write_lines(self, lines: list[str]) -> None:
        """Keep the batch."""
        self.lines.extend(lines)

    def flush(self) -> None:
        """Count the flush."""
        self.flushes += 1

    def close(self) -> None:
        """Mark closed."""
        self.closed = True

    def records(self) -> list[dict[str, Any]]:
        """Parse the lines back."""
        return [json.loads(line) for line in self.lines]


# --- the writer -------------------------------------------------------------------------


_CLOSE = object()
FAILING_LOG_INTERVAL = 60.0  # seconds between a failing sink's summary log lines
RECOVERY_QUIET = 10.0  # seconds without a failure that end an episode (a flapping disk is one)


@dataclass(slots=True)
class _Episode:
    """A sink failing since `since`: its failed calls and the lines handed to them.

    A chain sink's failed call may still have reached some of its downstream sinks.
    """

    since: float
    logged: float
    calls: int
    lines: int
    last_failure: float
    working: bool = False  # a call went through since the last failure

    def cost(self, now: float) -> dict[str, float]:
        """The log fields saying what the episode has cost by `now`."""
        return {"failed_calls": self.calls, "failed_lines": self.lines,
                "seconds": round(now - self.since, 1)}  # fmt: skip


class RecordWriter:
    """The one record writer: `write()` never blocks; a thread serialises and writes in order.

    At most `queue_size` records wait; more are dropped, counted (`dropped`) and reported as
    a `records-dropped` record once the queue drains. `close()` drains everything.
    `tick` is work of a sink's own between batches (delivering a spool once the collector is
    back, when no new record would trigger it): called on the thread at least every
    `IDLE_TICK` seconds while it is idle, every `BUSY_TICK` while it returns True.
    """

    def __init__(  # noqa: PLR0913  (sinks plus keyword-only tuning knobs)
        self,
        sinks: Sequence[RecordSink],
        *,
        queue_size: int = 10_000,
        batch_size: int = 64,
        clock: Callable[[], float] = time.time,
        linger: float = 0.001,
        halt: threading.Event | None = None,
        tick: Callable[[], bool] | None = None,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self._sinks = tuple(sinks)
        self._limit = queue_size
        self._batch_size = batch_size
        self._clock = clock
        self._linger = linger
        self.halt = halt  # set while records cannot be kept (spool_full: fail_closed)
        self._tick = tick
        self._items: deque[object] = deque()  # records, stamps, flush and close markers
        self._lock = threading.Lock()  # orders write/flush/close against the close marker
        self._idle = False  # the thread waits for `_wake`: only then does a write set it
        self._wake = threading.Event()
        self._closed = False
        self._reported = 0  # drops already in a records-dropped record
        self._counted = 0  # drops already in the RECORDS_DROPPED metric
        self.dropped = 0  # queue full, unserialisable, or written after close
        self.written = 0  # lines handed to the sinks
        self.sink_errors = 0
        self._failing: dict[str, _Episode] = {}  # sinks failing now, by class name
        self._thread = threading.Thread(target=self._run, name="aupguard-records", daemon=True)
        self._thread.start()

    @property
    def failing_closed(self) -> bool:
        """True while records cannot be kept and enforcement must stop.

        That is a full spool under `records.spool_full: fail_closed`.
        """
        return self.halt is not None and self.halt.is_set()

    def write(self, record: dict[str, Any]) -> bool:
        """Queue `record` without blocking; False (and counted) when the queue is full or closed.

        It is encoded now; an unserialisable one is logged and counted as dropped.
        """
        item = self._encode(record)
        with self._lock:
            if item and not self._closed and len(self._items) < self._limit:
                self._items.append(item)
                if self._idle:
                    self._wake.set()
                return True
            self.dropped += 1
            return False

    def stamp(self, template: RecordTemplate, now: float, dns_id: int) -> None:
        """Queue a DNS record from its template without a lock; counted as dropped when full.

        The DNS filter's hot path: a deque append, under half the cost of `write()`'s lock
        and queue. Only for the thread that also closes the writer (the event loop's), so
        nothing orders it against the close marker but that thread itself.
        """
        items = self._items
        if len(items) < self._limit and not self._closed:
            items.append((template, now, dns_id))
            if self._idle:
                self._wake.set()
        else:
            with self._lock:
                self.dropped += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is in the sinks and flushed; False on timeout."""
        done = threading.Event()
        with self._lock:
            if self._closed or not self._thread.is_alive():
                return self._closed
            self._items.append(done)
            self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Drain the queue, report drops, flush and close the sinks; False on timeout."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._items.append(_CLOSE)
                self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        items, popleft, size = self._items, self._items.popleft, self._batch_size
        wait = IDLE_TICK if self._tick is not None else None
        while True:
            batch = [popleft() for _ in range(min(size, len(items)))]
            if not batch:
                self._idle = True  # announced before the last look, so no write goes unseen
                if not items and not self._wake.wait(wait):
                    wait = self._idle_tick()
                self._idle = False
                self._wake.clear()
                continue
            going_on = self._handle(batch)
            self._count_drops()
            if not going_on:
                return
            if len(batch) < size:
                # Caught up: linger so that records queued meanwhile go in one batch, instead
                # of each `write()` waking this thread (a futex and a GIL hand-off per record).
                # Short, because each batch holds the GIL while it renders, and a query that
                # arrives meanwhile waits: 1 ms kept the DNS filter's p99 at 5k qps lower than
                # 5 ms did (bench_dns), and a busy writer never lingers.
                time.sleep(self._linger)

    def _idle_tick(self) -> float:
        """Call `tick` (nothing was queued for a while); how long to wait before the next."""
        try:
            more = self._tick() if self._tick is not None else False
        except Exception:  # noqa: BLE001 a failing sink must not end the thread
            self._failed("tick", "tick", 0)
            more = False
        else:
            self._recovered("tick")
        return BUSY_TICK if more else IDLE_TICK

    def _handle(self, batch: list[object]) -> bool:
        """Write a batch in order, acting on flush/close markers; False after close."""
        lines: list[str] = []
        stamps: list[Stamp] = []
        for item in batch:
            if type(item) is tuple:  # a Stamp: rendered with the rest of its run
                stamps.append(item)
                continue
            if stamps:
                lines += self._render(stamps)
                stamps = []
            if type(item) is str:
                lines.append(item)
                continue
            self._emit(lines)
            lines = []
            self._report_drops()
            if isinstance(item, threading.Event):  # a flush request
                self._call_sinks("flush")
                item.set()
            else:
                self._call_sinks("close")
                self._summarise_failures()
                return False
        if stamps:
            lines += self._render(stamps)
        self._emit(lines)
        if not self._items:
            self._report_drops()
        return True

    def _render(self, stamps: list[Stamp]) -> list[str]:
        """The stamps' lines; a run that fails to render is logged and counted, not fatal."""
        try:
            return render_stamps(stamps)
        except Exception:  # noqa: BLE001 a bug here must not end the thread and every record
            _log.exception("records.unrenderable", count=len(stamps))
            with self._lock:
                self.dropped += len(stamps)
            return []

    @staticmethod
    def _encode(record: object) -> str:
        """The record's line; "" (logged) when it cannot be encoded (the caller counts it)."""
        try:
            return encode(record)
        except (TypeError, ValueError, RecursionError):  # a cycle, say: count it, keep going
            event = record.get("event") if isinstance(record, dict) else None
            _log.exception("records.unserialisable", id=isinstance(event, dict) and event.get("id"))
            return ""

    def _emit(self, lines: list[str]) -> None:
        if lines:
            self._call_sinks("write_lines", lines)
            self.written += len(lines)

    def _call_sinks(self, method: str, *args: object) -> None:
        for sink in self._sinks:
            name = type(sink).__name__
            try:
                getattr(sink, method)(*args)
            except Exception:  # noqa: BLE001 a failing sink must not stop the others or the thread
                lines = len(args[0]) if args and isinstance(args[0], list) else 0
                self._failed(name, method, lines)
            else:
                if method == "write_lines":  # a flush may pass while writes fail (a full disk)
                    self._recovered(name)

    def _failed(self, sink: str, call: str, lines: int) -> None:
        """Count a failed sink call; log the first of an episode, then once a minute.

        A full disk fails every batch: a traceback for each would flood the journal (often
        on that disk), so later failures are counted and summed up in the log.
        """
        self.sink_errors += 1
        RECORD_SINK_ERRORS.labels(sink).inc()
        now = time.monotonic()
        episode = self._failing.get(sink)
        if episode is None:
            self._failing[sink] = _Episode(now, now, 1, lines, last_failure=now)
            _log.exception("records.sink_failed", sink=sink, call=call, failed_lines=lines)
            return
        episode.calls += 1
        episode.lines += lines
        episode.last_failure, episode.working = now, False
        if now - episode.logged >= FAILING_LOG_INTERVAL:
            episode.logged = now
            _log.error("records.sink_still_failing", sink=sink, call=call, **episode.cost(now))

    def _summarise_failures(self) -> None:
        """At close: what each sink still failing has cost since its episode began."""
        now = time.monotonic()
        for sink, episode in self._failing.items():
            if episode.working:
                _log.warning("records.sink_recovered", sink=sink, **episode.cost(now))
            else:
                _log.error("records.sink_still_failing", sink=sink, call="close",
                           **episode.cost(now))  # fmt: skip

    def _recovered(self, sink: str) -> None:
        """A call of `sink` went through: end its failure episode once quiet, with its cost.

        Quiet is `RECOVERY_QUIET` seconds without a failure: a disk flapping around full is
        one episode, not a traceback per flap.
        """
        episode = self._failing.get(sink)
        if episode is None:
            return
        episode.working = True
        now = time.monotonic()
        if now - episode.last_failure >= RECOVERY_QUIET:
            del self._failing[sink]
            _log.warning("records.sink_recovered", sink=sink, **episode.cost(now))

    def _count_drops(self) -> None:
        """Add the drops since the last batch to the metric.

        After every batch, so that it stays current while an overloaded queue never drains
        (the records-dropped record waits for that).
        """
        dropped = self.dropped
        if dropped != self._counted:
            RECORDS_DROPPED.labels("queue").inc(dropped - self._counted)
            self._counted = dropped

    def _report_drops(self) -> None:
        total = self.dropped
        count = total - self._reported
        if count > 0:
            self._reported = total
            self._emit([encode(dropped_record(count, total, self._clock()))])
            _log.warning("records.dropped", count=count, total=total, queue_size=self._limit)
