"""Records to the agency collector: RFC 5424 syslog over TCP or TLS, with an on-disk spool.

`SyslogSink` is a RecordSink (it runs on the record writer's thread, never on the DNS or
request path). Each record line is one RFC 5424 message with octet-counting framing
(RFC 6587 3.4.1, the framing RFC 5425 mandates for TLS).

Nothing lost: plain TCP gives no acknowledgment, so the sink keeps the last `resend_bytes`
of sent lines; when the connection turns out dead (peer closed, send error or stall) they
are sent again after the reconnect. Records keep their `event.id`, so the collector (or a
reviewer) recognises the duplicates. While the collector is unreachable, or does not take
lines at once (`_ready`), lines go to a bounded spool file (0640) and are delivered in order
as it takes them; connection attempts run on a helper thread, so neither an unanswering
nor a slow collector holds up the writer thread. At `near_full` of the spool a loud
warning is logged and counted; when it is full the `SpoolFull` policy applies: DROP counts
what was dropped and sends a `records-dropped` record once the spool drains; FAIL_CLOSED
additionally sets `fail_closed`, an Event enforcement points read to block until the spool
has drained.
RELP is not used: see docs/records-ops.md.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import select
import socket
import ssl
import sys
import termios
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent.chain import ChainHead, ChainSink, ChainState, load_key, resume, resume_head
from agent.logs import get_logger
from agent.metrics import RECORDS_DROPPED, RECORDS_UNCONFIRMED, SPOOL_DEPTH
from agent.records import dropped_record, format_timestamp
from agent.rotation import RotatingFileSink, rotated_files
from agent.writer import JsonLinesFileSink, RecordWriter, write_all

if TYPE_CHECKING:
    from agent.config import RecordsSection
    from agent.writer import RecordSink

__all__ = ["Spool", "SpoolFull", "SyslogSink", "frame", "record_sinks", "tls_context"]

_log = get_logger(__name__)
_MAX_RETRY = 30.0
_CONNECT_WAIT = 0.05  # what the writer thread waits for a connection attempt it starts
_SEND_PIECE = 64 << 10  # one TLS write's deadline covers this much, so a slow link keeps going
_MIN_PROGRESS = 4 << 10  # bytes a collector must take per send timeout to count as reading
# Spool bytes per send: under the third of a send buffer that is free when it is writable
# (16 KiB is a new connection's), so that the writer does not wait for the rest to fit.
_DRAIN_PIECE = 16 << 10


class SpoolFull(enum.StrEnum):
    """What happens to records when the spool is full."""

    DROP = "drop"
    FAIL_CLOSED = "fail_closed"


def frame(message: str) -> bytes:
    """One octet-counted frame: `LEN SP MSG`."""
    data = message.encode()
    return b"%d %s" % (len(data), data)


def send_all(sock: socket.socket, data: bytes) -> None:
    """Send `data`; TimeoutError only when the peer takes nothing for the socket's timeout.

    `socket.sendall`'s timeout bounds the whole call, which a large spool drain over a slow
    link can exceed while every piece goes through; here the timeout bounds each wait. A
    wait can outlast it while the peer keeps reading, too: Linux reports a full send buffer
    (up to 4 MiB) writable again only once a third of it is free, 20 s at 50 KB/s. So a
    timed-out wait counts as a stall unless the kernel's send queue shrank by `_MIN_PROGRESS`
    in it (a stalled peer's kernel still takes a trickle).
    A timed-out send sent nothing (TLS: OpenSSL takes the same bytes again), so it is
    simply repeated.
    """
    view = memoryview(data)
    queued = _unsent(sock)
    while view:
        try:
            view = view[sock.send(view[:_SEND_PIECE]) :]
        except TimeoutError:
            before, queued = queued, _unsent(sock)
            if before is None or queued is None or queued > before - _MIN_PROGRESS:
                raise
        else:
            queued = _unsent(sock)


def _unsent(sock: socket.socket) -> int | None:
    """Bytes in the socket's send queue not yet acknowledged (SIOCOUTQ); None if unknown."""
    try:
        out = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return None
    return int.from_bytes(out, sys.byteorder)


class Spool:
    """A bounded FIFO of record lines in one file; read from an in-memory offset.

    After a crash the offset is lost and the whole file is sent again (duplicates, not loss).
    Once full it accepts nothing until it has drained, so what it holds stays in order.
    """

    def __init__(self, path: str | os.PathLike[str], max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        os.fchmod(fd, 0o640)
        self._file = os.fdopen(fd, "a+b")
        self._file.seek(0, os.SEEK_END)
        self.size = self._file.tell()
        self._cut_torn_line()
        self.offset = 0
        self.count = self._count_lines()
        self.consumed = 0
        self.full = False

    def _cut_torn_line(self) -> None:
        """Cut off a last line without its end (a crash mid-append), logged.

        The next line appended would be glued to it, and its record lost with it.
        """
        end = self.size
        while end > 0:
            start = max(0, end - (64 << 10))
            self._file.seek(start)
            newline = self._file.read(end - start).rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        if end < self.size:
            _log.error("records.spool_torn_line", spool=str(self.path), bytes=self.size - end)
            self._file.truncate(end)
            self.size = end
        self._file.seek(0, os.SEEK_END)

    @property
    def pending(self) -> bool:
        """True while lines wait to be sent."""
        return self.offset < self.size

    def append(self, lines: list[str]) -> int:
        """Append lines in order until full; the number accepted.

        Written past the file object's buffer, in one go: a write the disk refuses part way
        (ENOSPC) is cut back off and raised, and the spool stays as it was (a buffer would
        keep the refused bytes and fail every later read with them).
        """
        size, chunks = self.size, []
        for line in lines:
            data = line.encode() + b"\n"
            if self.full or size + len(data) > self.max_bytes:
                self.full = True
                break
            chunks.append(data)
            size += len(data)
        if not chunks:
            return 0
        sent, error = write_all(self._file.fileno(), b"".join(chunks))
        if error is not None:
            if sent:
                os.ftruncate(self._file.fileno(), self.size)
            raise error
        self.size = size
        self.count += len(chunks)
        return len(chunks)

    @property
    def depth(self) -> int:
        """Lines waiting to be sent."""
        return self.count - self.consumed

    def advance(self, offset: int, lines: int) -> None:
        """Mark `lines` more lines, up to `offset`, as sent."""
        self.offset = offset
        self.consumed += lines

    def rewind(self, lines: list[str]) -> None:
        """Send the last sent `lines` again (the connection died while draining)."""
        self.offset = max(0, self.offset - sum(len(line.encode()) + 1 for line in lines))
        self.consumed = max(0, self.consumed - len(lines))

    def _count_lines(self) -> int:
        self._file.seek(0)
        n = sum(chunk.count(b"\n") for chunk in iter(lambda: self._file.read(1 << 20), b""))
        self._file.seek(0, os.SEEK_END)
        return n

    def read(self, max_bytes: int) -> tuple[list[str], int]:
        """Up to about `max_bytes` of whole lines from the offset, and the offset after them."""
        self._file.seek(self.offset)
        data = self._file.read(max_bytes)
        end = data.rfind(b"\n") + 1
        if end == 0 and data:  # one line longer than max_bytes
            data += self._file.readline()
            end = len(data)
        lines = data[:end].decode().split("\n")  # not splitlines(): U+2028 is inside a line
        lines.pop()  # what follows the last "\n"
        return lines, self.offset + end

    def clear(self) -> None:
        """Empty the spool after everything was sent."""
        self._file.truncate(0)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.size = self.offset = self.count = self.consumed = 0
        self.full = False

    def sync(self) -> None:
        """Make the spooled lines durable."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        """Sync and close the file; unsent lines stay for the next start."""
        if not self._file.closed:
            self.sync()
            self._file.close()


def _dead(sock: socket.socket, timeout: float) -> bool:
    """True when the collector closed or failed the connection (a collector never speaks)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    if not readable:
        return False
    if not isinstance(sock, ssl.SSLSocket):
        return True
    sock.settimeout(0.0)  # TLS 1.3 session tickets make the socket readable: consume them
    try:
        return sock.recv(1) == b""
    except ssl.SSLWantReadError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


class SyslogSink:
    """RecordSink shipping lines as RFC 5424 messages to `host:port`, spooling when it must.

    `tls` is an `ssl.SSLContext` (RFC 5425) verifying the collector against a CA file;
    `server_name` is the name in its certificate. Counters: `sent`, `spooled`, `resent`,
    `dropped`, `near_full_alerts`, `reconnects`.
    """

    def __init__(  # noqa: PLR0913 keyword-only settings with defaults
        self,
        host: str,
        port: int,
        *,
        spool: Spool,
        policy: SpoolFull = SpoolFull.DROP,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        near_full: float = 0.8,
        resend_bytes: int = 16 << 20,
        retry_seconds: float = 1.0,
        timeout: float = 5.0,
        send_timeout: float = 1.0,
        stall_seconds: float = 10.0,
        drain_bytes: int = 4 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = (host, port)
        self.spool = spool
        self.policy = policy
        self._tls, self._server_name = tls, server_name or host
        self._near_full = int(spool.max_bytes * near_full)
        self._resend_bytes, self._retry, self._timeout = resend_bytes, retry_seconds, timeout
        self._send_timeout, self._stall = send_timeout, stall_seconds
        self._drain_bytes, self._clock = drain_bytes, clock
        self._header = f"<134>1 %s {socket.gethostname()} aupguard {os.getpid()} decision - "
        self._sock: socket.socket | None = None
        self._recent: deque[str] = deque()
        self._recent_size = 0
        self._next_try = 0.0
        self._delay = retry_seconds
        self._connected_at = 0.0
        self._connector: ThreadPoolExecutor | None = None
        self._attempt: Future[socket.socket | None] | None = None
        self._alerted = False
        self._full_since: float | None = None  # when the send buffer was last seen full
        self._full_queued = 0  # its unsent bytes then
        self._drained = 0  # spool lines sent since it was last emptied or rewound
        self.fail_closed = threading.Event()
        self._clear_failed = False  # logged once until a clear works again
        self.sent = self.spooled = self.resent = self.dropped = self._reported = 0
        self.near_full_alerts = self.reconnects = 0
        self.unconfirmed = 0  # sent once, then neither confirmed nor spooled again (`_lost`)

    # --- connection -------------------------------------------------------------------

    def _connect(self, *, force: bool = False) -> bool:
        """True when connected; else a connection attempt is started or still under way.

        Attempts run on a helper thread, and the writer thread waits for one only 50 ms, so a
        collector that does not answer (a firewall dropping SYNs costs the whole `timeout`)
        holds it up no longer; its lines go to the spool meanwhile. Retries back off from
        `retry_seconds` to 30 s, and start afresh after a connection that held (`_lost`).
        `force` (close) waits for the attempt under way, or starts one at once and waits for
        it: at most `timeout`.
        """
        if self._sock is not None and not _dead(self._sock, self._send_timeout):
            return True
        if self._sock is not None:
            self._lost("collector closed the connection")
        attempt = self._attempt
        if attempt is not None and (force or attempt.done()):
            if self._outcome():
                return True
            if force:
                return False
            attempt = None
        if attempt is not None:
            return False  # still under way
        now = self._clock()
        if not force and now < self._next_try:
            return False
        self._next_try = now + self._delay
        self._delay = min(self._delay * 2, _MAX_RETRY)
        if self._connector is None:
            self._connector = ThreadPoolExecutor(1, thread_name_prefix="aupguard-syslog-connect")
        attempt = self._attempt = self._connector.submit(self._open)
        if not force:  # a collector that answers is connected at once, with these lines
            wait([attempt], timeout=_CONNECT_WAIT)
        return (force or attempt.done()) and self._outcome()

    def _outcome(self) -> bool:
        """Wait for the connection attempt under way; True when it connected."""
        attempt, self._attempt = self._attempt, None
        sock = attempt.result() if attempt is not None else None  # _open logs a failure
        if sock is None:
            return False
        self._sock = sock
        self._connected_at = self._clock()
        self.reconnects += 1
        return True

    def _open(self) -> socket.socket | None:
        """A new connection to the collector (TLS if configured); None, logged, on failure."""
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection(self.address, timeout=self._timeout)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)
            sock.settimeout(self._send_timeout)
        except OSError as e:
            if sock is not None:
                sock.close()
            _log.warning("records.syslog_unreachable", address=self.address, error=str(e))
            return None
        return sock

    def _lost(self, why: str) -> None:
        """Close a dead connection; lines it may have swallowed go back to the spool.

        The loss of a connection that held for the longest back-off starts the back-off
        afresh; that of a younger one (a collector that accepts, then fails) lets it grow.
        """
        _log.warning("records.syslog_lost", address=self.address, reason=why,
                     resend=len(self._recent))  # fmt: skip
        if self._clock() - self._connected_at >= _MAX_RETRY:
            self._delay = self._retry
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        recent = list(self._recent)
        self._recent.clear()
        self._recent_size = 0
        self.resent += len(recent)
        # The newest of them came from the spool: it sends them again where they were. Older
        # ones, sent before the spool was drained, go behind it (late, as duplicates can be).
        older = len(recent) - min(self._drained, len(recent))
        self._drained = 0
        self.spool.rewind(recent[older:])
        if older:
            self._to_spool(recent[:older], sent=True)

    def _ready(self) -> bool:
        """True when the connection can take more without the writer thread waiting.

        Linux calls a socket writable once a third of its send buffer is free, far more than
        a batch or a spool piece, so the writer sends only then; else the lines wait in the
        spool. A slow collector keeps its connection while its send queue shrinks by
        `_MIN_PROGRESS` per `stall_seconds`; one that takes less is dropped as stalled. Not
        sooner: on loopback the queue shrinks in 64 KiB segments, 1.3 s apart at 50 KB/s,
        and the writer does not wait meanwhile anyway.
        """
        sock = self._sock
        if sock is None:
            return False
        try:
            writable = bool(select.select([], [sock], [], 0)[1])
        except (OSError, ValueError):
            writable = True  # the send finds out what is wrong
        queued = None if writable else _unsent(sock)
        if queued is None:  # writable, or nothing to tell progress by: a send (timed) decides
            self._full_since = None
            return True
        now = self._clock()
        if self._full_since is None or queued <= self._full_queued - _MIN_PROGRESS:
            self._full_since, self._full_queued = now, queued  # full, or still taking
        elif now - self._full_since >= self._stall:
            self._lost("collector stopped reading")
            self._next_try = now + self._delay
        return False

    def _send(self, lines: list[str]) -> bool:
        """Send framed messages; remember them for a resend; False after a failure.

        `lines` is one piece: callers cut at `_DRAIN_PIECE`. A collector that takes nothing
        for `send_timeout` (`send_all`) is dropped like a dead one, and the next attempt
        waits for the back-off.
        """
        if self._sock is None:
            return False
        header = self._header % format_timestamp(time.time())
        try:
            send_all(self._sock, b"".join(frame(header + line) for line in lines))
        except OSError as e:  # includes timeouts and TLS errors
            self._lost(str(e) or type(e).__name__)
            self._next_try = self._clock() + self._delay
            return False
        self.sent += len(lines)
        self._remember(lines)
        return True

    def _remember(self, lines: list[str]) -> None:
        self._recent.extend(lines)
        self._recent_size += sum(len(line) for line in lines)
        while self._recent_size > self._resend_bytes and len(self._recent) > 1:
            self._recent_size -= len(self._recent.popleft())

    # --- spool ------------------------------------------------------------------------

    def _to_spool(self, lines: list[str], *, sent: bool = False) -> None:
        """Spool `lines`; what it cannot take (full, or on a full disk) is dropped.

        Dropped lines are counted and, under `fail_closed`, suspend enforcement until the
        spool has drained. Lines `sent` once already (a dead connection's resend window)
        that it cannot take back are counted as unconfirmed instead, and suspend nothing:
        the collector most likely has them (a loss swallows a few), the files do too.
        """
        error = None
        try:
            accepted = self.spool.append(lines)
        except OSError as e:  # the disk refused: as lost as lines a full spool refuses
            accepted, error = 0, str(e)
        self.spooled += accepted
        if not self._alerted and self.spool.size >= self._near_full:
            self._alerted = True
            self.near_full_alerts += 1
            _log.error("records.spool_near_full", spool=str(self.spool.path),
                       size=self.spool.size, max_bytes=self.spool.max_bytes)  # fmt: skip
        lost = len(lines) - accepted
        if lost and sent:
            self.unconfirmed += lost
            RECORDS_UNCONFIRMED.inc(lost)
            _log.warning("records.resend_unspooled", spool=str(self.spool.path), lines=lost,
                         error=error, detail="sent once before the connection died; not "
                         "sent again: the spool could not take them back")  # fmt: skip
        elif lost:
            if self.dropped == self._reported:  # once per episode; the metric counts each
                _log.error("records.spool_full", spool=str(self.spool.path),
                           policy=str(self.policy), error=error)  # fmt: skip
            self.dropped += lost
            RECORDS_DROPPED.labels("spool").inc(lost)
            if self.policy is SpoolFull.FAIL_CLOSED and not self.fail_closed.is_set():
                self.fail_closed.set()
                _log.critical("records.fail_closed", spool=str(self.spool.path))

    def _drain(self, budget: int, seconds: float, *, wait: bool = False) -> bool:
        """Send up to `budget` bytes of the spool for about `seconds`; True once it is empty.

        Without `wait` a piece goes only while the connection takes it at once (`_ready`),
        and the time bound keeps a fast one from holding the writer thread: a collector
        catching up never holds up new records or the records files; the rest goes with the
        next batches and ticks.
        """
        deadline = self._clock() + seconds
        while self.spool.pending and budget > 0 and self._clock() < deadline:
            if not (wait or self._ready()):
                return False
            lines, end = self.spool.read(min(budget, _DRAIN_PIECE))
            budget -= end - self.spool.offset
            if not self._send(lines):
                return False
            self.spool.advance(end, len(lines))
            self._drained += len(lines)
        if self.spool.pending:
            return False
        if self.spool.size:
            self._clear_spool()
        if self.fail_closed.is_set():  # also when the disk refused the spool its first line
            self.fail_closed.clear()
            _log.warning("records.fail_closed_cleared", spool=str(self.spool.path))
        return self._report_drops()

    def _clear_spool(self) -> None:
        """Empty the delivered spool; if it cannot be (a read-only disk), log that once.

        It is left as it is: everything in it was sent, so nothing waits on it.
        """
        try:
            self.spool.clear()
        except OSError as e:
            if not self._clear_failed:
                self._clear_failed = True
                _log.error("records.spool_clear_failed", spool=str(self.spool.path),
                           error=str(e))  # fmt: skip
            return
        self._clear_failed = False
        self._drained = 0
        self._alerted = False

    def _report_drops(self) -> bool:
        count = self.dropped - self._reported
        if count <= 0:
            return True
        record = dropped_record(count, self.dropped, time.time())
        record["event"]["reason"] = f"{count} records dropped: the syslog spool was full"
        if self._send([_json(record)]):
            self._reported += count
            return True
        return False

    # --- RecordSink -------------------------------------------------------------------

    def write_lines(self, lines: list[str]) -> None:
        """Send the batch as far as the collector takes it; spool the rest behind what waits."""
        if not lines:
            return
        if self._connect() and self._drain(self._drain_bytes, self._send_timeout):
            lines = self._send_while_ready(lines)
        if lines:
            self._to_spool(lines)
        SPOOL_DEPTH.set(self.spool.depth)

    def _send_while_ready(self, lines: list[str]) -> list[str]:
        """Send `lines` in pieces of `_DRAIN_PIECE` while the connection takes them; the rest."""
        start = 0
        while start < len(lines) and self._ready():
            end, size = start + 1, len(lines[start])
            while end < len(lines) and size + len(lines[end]) < _DRAIN_PIECE:
                size += len(lines[end]) + 1
                end += 1
            if not self._send(lines[start:end]):
                break
            start = end
        return lines[start:]

    def tick(self) -> bool:
        """Deliver what the collector takes of the spool now; True while more waits on a link.

        True asks to be called again soon. For the writer's idle times: records trigger
        delivery too, but a quiet gateway writes none, and one failing closed none at all,
        so its spool would never drain and enforcement never resume.
        """
        if not self.spool.pending and self.dropped == self._reported:
            return False
        drained = self._connect() and self._drain(self._drain_bytes, self._send_timeout)
        SPOOL_DEPTH.set(self.spool.depth)
        return not drained and self._sock is not None

    def flush(self) -> None:
        """Deliver what the collector takes at once, as for a batch; make the spool durable.

        It waits for no connection attempt and no slow collector: chain heads flush every
        minute, and the writer thread that waits writes the records files too.
        """
        if self._connect():
            self._drain(1 << 62, self._send_timeout)
        self.spool.sync()
        SPOOL_DEPTH.set(self.spool.depth)

    def close(self) -> None:
        """Deliver what the collector takes within `timeout`, then close the connection.

        It connects first if need be; one `timeout` in all, so that a shutdown ends well
        within a supervisor's grace. Undelivered lines stay in the spool for the next start.
        """
        deadline = self._clock() + self._timeout
        if self._connect(force=True):
            self._drain(1 << 62, max(0.0, deadline - self._clock()), wait=True)
        self.spool.sync()
        SPOOL_DEPTH.set(self.spool.depth)
        if self._sock is not None:
            # Read what the collector sent first (TLS 1.3 session tickets): a socket closed
            # with unread bytes resets the connection, which can cost the collector the
            # last lines still in its receive buffer.
            _dead(self._sock, self._send_timeout)
            self._sock.close()
            self._sock = None
        if self._connector is not None:
            self._connector.shutdown()
        self.spool.close()


def _json(record: dict[str, object]) -> str:
    return json.dumps(record, separators=(",", ":"))


def tls_context(ca_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context trusting only `ca_file`, TLS 1.2 or newer, verifying the host name."""
    ctx = ssl.create_default_context(cafile=os.fspath(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def open_writer(
    section: RecordsSection, *, writer: str, also: Path | None = None
) -> RecordWriter | None:
    """The record writer of one process (the DNS filter, a proxy worker); None without sinks.

    Each writer keeps its own records file, hash chain and spool (`records.jsonl` becomes
    `records.dns.jsonl`, `records.proxy-2.jsonl`), so every chain verifies on its own.
    `also` (`--records FILE`) receives plain JSON lines besides.
    """
    if section.file is not None:
        section = replace(section, file=section.file.with_name(
            f"{section.file.stem}.{writer}{section.file.suffix}"))  # fmt: skip
    if section.spool_dir is not None:
        spool = section.spool_dir / writer
        spool.mkdir(mode=0o750, parents=True, exist_ok=True)
        section = replace(section, spool_dir=spool)
    sinks, syslog = record_sinks(section)
    if also is not None:
        sinks = [*sinks, JsonLinesFileSink(also)]
    if not sinks:
        return None
    halt = syslog.fail_closed if syslog is not None else None  # set only under fail_closed
    tick = syslog.tick if syslog is not None else None  # delivers the spool in quiet times
    return RecordWriter(sinks, queue_size=section.queue_size, halt=halt, tick=tick)


def _syslog_sink(section: RecordsSection) -> SyslogSink | None:
    if section.syslog is None:
        return None
    host, _, port = section.syslog.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"records.syslog: {section.syslog!r}: expected host:port")
    if section.spool_dir is None:
        raise ValueError("records.spool_dir: required with records.syslog")
    if section.spool_full not in set(SpoolFull):
        raise ValueError(
            f"records.spool_full: {section.spool_full!r}: expected drop or fail_closed"
        )
    tls = None
    if section.syslog_tls:
        if section.syslog_ca_file is None:
            raise ValueError("records.syslog_ca_file: required with records.syslog_tls")
        tls = tls_context(section.syslog_ca_file)
    spool = Spool(section.spool_dir / "syslog.spool", section.spool_max_bytes)
    return SyslogSink(host.strip("[]"), int(port), spool=spool, tls=tls,
                      policy=SpoolFull(section.spool_full))  # fmt: skip


def record_sinks(section: RecordsSection) -> tuple[list[RecordSink], SyslogSink | None]:
    """The sinks `records:` configures, for `RecordWriter`: files (rotated, chained) and syslog.

    The syslog sink also receives the chain heads, and its `fail_closed` Event is what
    enforcement points read. ValueError names a bad key.
    """
    syslog = _syslog_sink(section)
    files: list[RecordSink] = []
    if section.file is not None:
        files.append(RotatingFileSink(
            section.file, max_bytes=section.rotate_bytes, max_seconds=section.rotate_seconds,
            retention_days=section.retention_days, group=section.group))  # fmt: skip
    downstream = [*files, *([syslog] if syslog else [])]
    if section.chain_key_file is None or not downstream:
        return downstream, syslog
    key = load_key(section.chain_key_file)
    head, state = (None, None) if section.file is None else _chain_state(section.file)
    chain = ChainSink(key, downstream, head=head, head_sinks=[syslog] if syslog else [],
                      head_interval=section.chain_head_interval, state=state)  # fmt: skip
    return [chain], syslog


def _chain_state(file: Path) -> tuple[ChainHead | None, ChainState | None]:
    """Where the chain of the records at `file` goes on, and its saved state beside them.

    A state that cannot be read or reserved is logged, not fatal: the gateway starts, and
    only a restart after a failed write could then reuse seqs.
    """
    state = ChainState(file.with_name(f"{file.name}.chain"))
    files = rotated_files(file)
    try:
        head = resume(files, state)
    except ValueError as e:
        _log.error("records.chain_state_unreadable", error=str(e), detail="resuming the "
                   "chain from the records files")  # fmt: skip
        head = resume_head(files)
    try:
        state.reserve()
    except OSError as e:
        _log.error("records.chain_state_unavailable", path=str(state.path), error=str(e),
                   detail="a restart after a failed write may reuse seqs")  # fmt: skip
        return head, None
    return head, state
