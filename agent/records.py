"""The decision record: one JSON-ready, ECS-named record per decision, and the one writer.

Records are monitoring data, not operational logs: secrets are redacted before a record
exists, `RecordWriter` writes off the hot path, and nothing is lost silently (drops are
counted and reported as a record). The schema is documented in docs/records.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self

from agent.errors import ConfigError
from agent.logs import REDACTED, get_logger, redact_headers, redact_path, redact_url
from agent.model import Action, Source

if TYPE_CHECKING:
    from types import TracebackType

    from agent.model import Client, Decision, Match, Request

__all__ = [  # redaction lives in agent.logs (records and logs share it); re-exported here
    "REDACTED", "JsonLinesFileSink", "MemorySink", "Notice", "RecordSink", "RecordWriter",
    "build_record", "dropped_record", "format_timestamp", "merge_extra", "new_event_id",
    "notice_version", "records_required", "redact_headers", "redact_path", "redact_url",
]  # fmt: skip

ECS_VERSION = "8.17.0"
DATASET = "aupguard.decision"
_log = get_logger(__name__)

# --- notice -----------------------------------------------------------------------------


def notice_version(text: str) -> str:
    """`sha256:` + 16 hex of the text with LF line ends and trailing whitespace stripped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    canonical = "\n".join(line.rstrip() for line in lines).rstrip()
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Notice:
    """The electronic-monitoring notice employees were given, and its content version."""

    text: str
    version: str

    @classmethod
    def from_text(cls, text: str) -> Notice:
        """Version `text` (blank text is allowed here; `records_required` refuses it)."""
        return cls(text, notice_version(text))


def records_required(notice: Notice | None) -> None:
    """Refuse monitoring without a notice (None or blank): ConfigError naming the keys."""
    if notice is None or not notice.text.strip():
        msg = (
            "records.notice: electronic monitoring requires a notice to employees: "
            "set records.notice.text or records.notice.file to the notice employees were "
            "given (every record carries its version as aupguard.notice_version)"
        )
        raise ConfigError([msg])


# --- the record -------------------------------------------------------------------------

# action -> (event.action, event.type)
_ACTIONS = {a: (a.label, {Action.BLOCK: "denied", Action.WARN: "info"}.get(a, "allowed"))
            for a in Action}  # fmt: skip
# source -> (event.category, observer.type)
_SOURCES = {Source.HTTP: (("network", "web"), "proxy"), Source.TLS: (("network",), "proxy"),
            Source.DNS: (("network",), "dns"), Source.CLI: (("network", "web"), "cli")}  # fmt: skip
# Top-level ECS fields an `extra` key may extend; any other key goes under `aupguard`.
ECS_ROOTS = frozenset(
    ("agent", "client", "cloud", "container", "destination", "dns", "ecs", "email", "error",
     "event", "file", "group", "host", "http", "labels", "log", "message", "network",
     "observer", "organization", "package", "process", "related", "rule", "server", "service",
     "source", "tags", "threat", "tls", "trace", "url", "user", "user_agent", "aupguard")
)  # fmt: skip


def new_event_id(now: float) -> str:
    """Return a 26-hex-digit time-sortable id: 48-bit milliseconds + 56 random bits."""
    return (int(now * 1000).to_bytes(6, "big") + os.urandom(7)).hex()


@functools.lru_cache(maxsize=8)
def _second(sec: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def format_timestamp(now: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with microseconds: `2026-11-23T13:08:12.123456Z`."""
    sec, micros = divmod(round(now * 1_000_000), 1_000_000)
    return f"{_second(sec)}.{micros:06d}Z"


def _match(m: Match) -> dict[str, Any]:
    return {"category": m.category, "entry": m.entry, "source": m.source}


def _subject(record: dict[str, Any], request: Request, found: list[str]) -> None:
    """Add what was asked for in the source's ECS field set (url, dns or tls)."""
    if request.source is Source.DNS:
        record["dns"] = {"question": {"name": request.host}}
        return
    if request.source is Source.TLS:
        record["tls"] = {"client": {"server_name": request.host}}
        return
    url: dict[str, Any] = {"domain": request.host}
    if request.url is not None:
        full, what = redact_url(request.url)
        found.extend(what)
        url["full"] = full
        scheme, sep, rest = full.partition("://")
        if sep:
            url["scheme"] = scheme
        query = rest.partition("#")[0].partition("?")[2]
        if query:
            url["query"] = query
    if request.path is not None:
        path, what = redact_path(request.path.partition("?")[0].partition("#")[0])
        found.extend(what)
        url["path"] = path
    record["url"] = url


def _aupguard(
    decision: Decision, client: Client, event_id: str, policy_rev: str, notice: Notice
) -> dict[str, Any]:
    """Return the fields ECS has no name for."""
    fields: dict[str, Any] = {
        "category": decision.category,
        "categories": list(decision.categories),
        "groups": sorted(client.groups),
        "layer": decision.layer,
        "schedule": decision.schedule,
        "reference_id": event_id,
        "policy_version": policy_rev,
        "notice_version": notice.version,
        "reason_label": decision.reason_label,
        "matched": [_match(m) for m in decision.classification.matches],
        "overridden": [_match(m) for m in decision.classification.overridden],
        "exception": decision.exception,
        "user_independent": decision.user_independent,
    }
    if decision.clause is not None:
        fields["clause"] = decision.clause
    if decision.notes:
        fields["notes"] = list(decision.notes)
    return fields


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    """Set `target[key]`, merging mappings recursively into dicts this record owns."""
    old = target.get(key)
    if isinstance(value, Mapping):
        if not isinstance(old, dict):
            old = target[key] = {}
        for k, v in value.items():
            _put(old, k, v)
    else:
        target[key] = value


def merge_extra(record: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge `extra` (dotted keys allowed) at the top level for ECS roots, else under aupguard."""
    own = record["aupguard"]
    for key, value in extra.items():
        *parents, leaf = key.split(".")
        target = record if (parents[0] if parents else leaf) in ECS_ROOTS else own
        for part in parents:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        _put(target, leaf, value)


def build_record(  # noqa: PLR0913 the inputs are named, keyword-only and all needed
    *,
    request: Request,
    client: Client,
    decision: Decision,
    now: float,
    policy_rev: str,
    notice: Notice,
    event_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the one record of one decision: JSON-ready, ECS names, redacted (docs/records.md)."""
    eid = event_id or new_event_id(now)
    categories, observer = _SOURCES[request.source]
    action, event_type = _ACTIONS[decision.action]
    record: dict[str, Any] = {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": eid,
            "kind": "event",
            "category": list(categories),
            "type": [event_type],
            "action": action,
            "dataset": DATASET,
            "reason": decision.reason,
        },
        "source": {"ip": client.ip},
    }
    if client.user is not None:
        record["user"] = {"name": client.user}
    found: list[str] = []
    _subject(record, request, found)
    record["rule"] = {"name": decision.rule, "ruleset": decision.layer}
    record["observer"] = {"type": observer, "product": "aupguard"}
    record["aupguard"] = _aupguard(decision, client, eid, policy_rev, notice)
    if found:
        record["aupguard"]["redacted"] = list(dict.fromkeys(found))
    if extra:
        merge_extra(record, extra)
    return record


def dropped_record(count: int, total: int, now: float) -> dict[str, Any]:
    """Build the record a writer emits after `count` drops (`total` since start)."""
    eid = new_event_id(now)
    return {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": eid,
            "kind": "event",
            "type": ["info"],
            "action": "records-dropped",
            "outcome": "failure",
            "dataset": DATASET,
            "reason": f"{count} records dropped (queue full, unserialisable or after close)",
        },
        "observer": {"product": "aupguard"},
        "aupguard": {"reference_id": eid, "dropped": count, "dropped_total": total},
    }


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
    """Append JSON lines to a file created with mode 0640; fsync on flush."""

    def __init__(self, path: str | os.PathLike[str], *, mode: int = 0o640) -> None:
        self.path = os.fspath(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_EXCL, mode)
            os.fchmod(fd, mode)  # the umask must not change who may read the records
        except FileExistsError:
            fd = os.open(self.path, flags, mode)
        self._file = os.fdopen(fd, "a", encoding="utf-8", newline="\n")

    def write_lines(self, lines: list[str]) -> None:
        """Append the batch as whole lines and hand it to the OS."""
        if lines:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def flush(self) -> None:
        """Flush and fsync."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Flush, fsync and close."""
        if not self._file.closed:
            self.flush()
            self._file.close()


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


def _json_default(value: object) -> object:
    """Encode sets as sorted lists and anything else unknown as str(): keep the record."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default)
_CLOSE = object()


class RecordWriter:
    """The one record writer: `write()` never blocks; a thread serialises and writes in order.

    At most `queue_size` records wait; more are dropped, counted (`dropped`) and reported as
    a `records-dropped` record once the queue drains. `close()` drains everything.
    """

    def __init__(
        self,
        sinks: Sequence[RecordSink],
        *,
        queue_size: int = 10_000,
        batch_size: int = 1_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        self._sinks = tuple(sinks)
        self._limit = queue_size
        self._batch_size = batch_size
        self._clock = clock
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders write/flush/close against the close marker
        self._closed = False
        self._reported = 0
        self.dropped = 0  # queue full, unserialisable, or written after close
        self.written = 0  # lines handed to the sinks
        self.sink_errors = 0
        self._thread = threading.Thread(target=self._run, name="aupguard-records", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> bool:
        """Queue `record` without blocking; False (and counted) when the queue is full or closed."""
        with self._lock:
            if not self._closed and self._queue.qsize() < self._limit:
                self._queue.put(record)
                return True
            self.dropped += 1
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is in the sinks and flushed; False on timeout."""
        done = threading.Event()
        with self._lock:
            if self._closed or not self._thread.is_alive():
                return self._closed
            self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Drain the queue, report drops, flush and close the sinks; False on timeout."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_CLOSE)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            batch = [get()]
            try:
                while len(batch) < self._batch_size:
                    batch.append(get_nowait())
            except queue.Empty:
                pass
            if not self._handle(batch):
                return

    def _handle(self, batch: list[object]) -> bool:
        """Write a batch in order, acting on flush/close markers; False after close."""
        lines: list[str] = []
        for item in batch:
            if item is not _CLOSE and not isinstance(item, threading.Event):
                lines.append(self._encode(item))
                continue
            self._emit(lines)
            lines = []
            self._report_drops()
            if isinstance(item, threading.Event):  # a flush request
                self._call_sinks("flush")
                item.set()
            else:
                self._call_sinks("close")
                return False
        self._emit(lines)
        if self._queue.empty():
            self._report_drops()
        return True

    def _encode(self, record: object) -> str:
        try:
            return _ENCODER.encode(record)
        except (TypeError, ValueError, RecursionError):  # e.g. a cycle: count it, keep going
            event = record.get("event") if isinstance(record, dict) else None
            _log.exception("records.unserialisable", id=isinstance(event, dict) and event.get("id"))
            with self._lock:
                self.dropped += 1
            return ""

    def _emit(self, lines: list[str]) -> None:
        lines = [line for line in lines if line]
        if lines:
            self._call_sinks("write_lines", lines)
            self.written += len(lines)

    def _call_sinks(self, method: str, *args: object) -> None:
        for sink in self._sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:  # noqa: BLE001 a failing sink must not stop the others or the thread
                self.sink_errors += 1
                _log.exception("records.sink_failed", sink=type(sink).__name__, call=method)

    def _report_drops(self) -> None:
        total = self.dropped
        count = total - self._reported
        if count > 0:
            self._reported = total
            self._emit([_ENCODER.encode(dropped_record(count, total, self._clock()))])
            _log.warning("records.dropped", count=count, total=total, queue_size=self._limit)
