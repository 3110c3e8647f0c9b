r"""Tamper evidence for record files: an HMAC-SHA256 chain over every record line.

Each line leaves the chain as the record with one more key appended *as the last key*:

    {...record...,"aupguard.chain":{"seq":41,"prev":"<hex>","mac":"<hex>"}}

`mac = HMAC(key, b"<seq>\n<prev>\n" + body)` where `body` is the record's JSON text without
its closing brace. Appending (instead of re-serialising) keeps the hot path cheap and makes
the MAC independent of JSON canonicalisation; the dotted key is ECS-style and means
`aupguard.chain` to Elasticsearch. `seq` counts from 0 and continues across rotated files
and restarts (the sink resumes from the newest file), so a deleted record or a missing file
shows as a gap. Cutting the newest records leaves no gap: the chain *head* (seq and mac) is
shipped to the collector every `head_interval` seconds, and `verify(..., head=...)` checks
that the files reach it. The key lives in a key file outside the record directory.

A write that fails (a full disk) leaves a gap, or a torn line, that looks like tampering.
So the sink declares it: the next batch it writes begins with a chained `records-lost`
record naming the seqs each failing sink missed, repeated until that sink takes one, and a
head shipped meanwhile carries the pending losses. `verify` reports a gap, or damaged lines,
that such a declaration covers as a `Loss`, not a problem: the key holder said so in time.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.records import DATASET, ECS_VERSION, encode, format_timestamp, new_event_id

if TYPE_CHECKING:
    from agent.writer import RecordSink

__all__ = [
    "GENESIS", "ChainHead", "ChainSink", "ChainState", "Loss", "Missed", "Problem",
    "VerifyResult", "generate_key", "head_record", "load_key", "lost_record", "read_head",
    "read_last_head", "resume", "resume_head", "verify",
]  # fmt: skip

GENESIS = "0" * 64
KEY_BYTES = 32
CHAIN_KEY = "aupguard.chain"
HEAD_ACTION = "chain-head"
LOST_ACTION = "records-lost"
_SUFFIX = re.compile(
    r',"aupguard\.chain":\{"seq":(\d+),"prev":"([0-9a-f]{64})","mac":"([0-9a-f]{64})"\}\}$'
)
_TAIL_BYTES = 1 << 16
_MAX_LINE = 1 << 20  # no record line is this long (URL fields are cut at 8 KiB)


@dataclass(frozen=True, slots=True)
class Missed:
    """Seqs `first`..`last` that `sink` missed: a write to it failed.

    `kind` is "file" for a records file: only such a declaration explains a gap in the
    files (one for the collector must not excuse records deleted from a file).
    """

    sink: str
    first: int
    last: int
    kind: str = "file"

    def as_field(self) -> dict[str, Any]:
        """The entry of `aupguard.lost` (in `records-lost` records and shipped heads)."""
        return {"sink": self.sink, "kind": self.kind, "first_seq": self.first,
                "last_seq": self.last}  # fmt: skip

    @classmethod
    def from_field(cls, field: Any) -> Missed:
        """Read an `aupguard.lost` entry; ValueError/KeyError/TypeError when it is not one."""
        return cls(str(field["sink"]), int(field["first_seq"]), int(field["last_seq"]),
                   str(field["kind"]))  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest chained record: its sequence number and MAC (and, shipped, pending losses)."""

    seq: int
    mac: str
    lost: tuple[Missed, ...] = ()  # what sinks missed, not yet declared in the chain


def _mac(key: bytes, seq: int, prev: str, body: str) -> str:
    return hmac.digest(key, f"{seq}\n{prev}\n{body}".encode(), "sha256").hex()


def chain_line(key: bytes, line: str, seq: int, prev: str) -> tuple[str, str]:
    """`line` with its chain field appended, and its MAC."""
    body = line.removesuffix("}")
    mac = _mac(key, seq, prev, body)
    return f'{body},"{CHAIN_KEY}":{{"seq":{seq},"prev":"{prev}","mac":"{mac}"}}}}', mac


# --- key --------------------------------------------------------------------------------


def load_key(path: str | os.PathLike[str]) -> bytes:
    """The chain key from a key file (hex text); ValueError if short or readable by others."""
    p = Path(path)
    if p.stat().st_mode & 0o007:
        raise ValueError(f"{p}: key file is accessible to others: chmod o-rwx (expected 0400)")
    try:
        key = bytes.fromhex(p.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a hex key: expected {KEY_BYTES * 2} hex digits") from e
    if len(key) < KEY_BYTES:
        raise ValueError(f"{p}: key has {len(key)} bytes: expected at least {KEY_BYTES}")
    return key


def generate_key(path: str | os.PathLike[str]) -> None:
    """Create a new key file with mode 0400; FileExistsError if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")


# --- the sink ---------------------------------------------------------------------------


def head_record(head: ChainHead, now: float) -> dict[str, Any]:
    """The record shipped to the collector that pins the newest seq and MAC.

    It carries the losses not yet declared in the chain (`lost`), so that a tail a failing
    disk never took is told from a tail cut afterwards.
    """
    eid = new_event_id(now)
    pinned: dict[str, Any] = {"seq": head.seq, "mac": head.mac}
    if head.lost:
        pinned["lost"] = [lost.as_field() for lost in head.lost]
    return {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {"id": eid, "kind": "event", "type": ["info"], "action": HEAD_ACTION,
                  "dataset": DATASET, "reason": f"record chain head at seq {head.seq}"},
        "observer": {"product": "aupguard"},
        "aupguard": {"reference_id": eid, "chain_head": pinned},
    }  # fmt: skip


def lost_record(missed: Sequence[Missed], now: float) -> dict[str, Any]:
    """The chained record declaring seqs that sinks missed."""
    eid = new_event_id(now)
    said = "; ".join(f"seq {x.first}..{x.last} did not reach {x.sink}" for x in missed)
    return {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {"id": eid, "kind": "event", "type": ["info"], "action": LOST_ACTION,
                  "outcome": "failure", "dataset": DATASET,
                  "reason": f"records lost to a failed write: {said}"},
        "observer": {"product": "aupguard"},
        "aupguard": {"reference_id": eid, "lost": [x.as_field() for x in missed]},
    }  # fmt: skip


def sink_name(sink: object) -> tuple[str, str]:
    """How a `records-lost` record names a sink, and its kind: a file, a collector, other."""
    path = getattr(sink, "path", None)
    if path is not None:
        return str(path), "file"
    address = getattr(sink, "address", None)
    if isinstance(address, tuple) and len(address) == 2:  # (host, port)
        return f"syslog {address[0]}:{address[1]}", "collector"
    return type(sink).__name__, "other"


class ChainSink:
    """A RecordSink that chains each line and passes the new batch on to `sinks`.

    The head goes to `head_sinks` at most every `head_interval` seconds and on flush/close.
    """

    def __init__(  # noqa: PLR0913 keyword-only wiring
        self,
        key: bytes,
        sinks: Sequence[RecordSink],
        *,
        head: ChainHead | None = None,
        head_sinks: Sequence[RecordSink] = (),
        head_interval: float = 60.0,
        clock: Callable[[], float] = time.time,
        state: ChainState | None = None,
    ) -> None:
        self._key = key
        self._sinks = tuple(sinks)
        self._names = [sink_name(sink) for sink in self._sinks]
        self._head_sinks = tuple(head_sinks)
        self._interval = head_interval
        self._clock = clock
        self._seq = head.seq + 1 if head else 0
        self._prev = head.mac if head else GENESIS
        self._shipped: ChainHead | None = None
        self._last_ship = clock()
        # by sink name: seqs not yet declared lost (a resumed head brings a run's last ones)
        self._lost: dict[str, Missed] = {lost.sink: lost for lost in head.lost} if head else {}
        self._state = state

    @property
    def head(self) -> ChainHead | None:
        """The newest chained record, None before the first."""
        if not self._seq:
            return None
        return ChainHead(self._seq - 1, self._prev, tuple(self._lost.values()))

    def write_lines(self, lines: list[str]) -> None:
        """Chain the batch and write it to every downstream sink.

        While a sink has missed seqs, each batch begins with a `records-lost` record
        declaring them; the sink's losses are cleared once it takes a batch.
        """
        if self._lost:
            lines = [encode(lost_record(list(self._lost.values()), self._clock())), *lines]
        out: list[str] = []
        first, prev, key = self._seq, self._prev, self._key
        seq = first
        for line in lines:
            chained, prev = chain_line(key, line, seq, prev)
            out.append(chained)
            seq += 1
        self._seq, self._prev = seq, prev
        failed = _call_each(self._sinks, lambda sink: sink.write_lines(out))
        if not failed:  # every sink took the declaration (also of a sink since renamed)
            self._lost.clear()
        elif out:
            self._missed(failed, first, seq - 1)
        _raise(failed)
        if self._clock() - self._last_ship >= self._interval:
            self.flush()  # the files first: a shipped head never runs ahead of them

    def _missed(self, failed: dict[int, Exception], first: int, last: int) -> None:
        """Note seqs `first`..`last` as missed by the failed sinks; save the head.

        The other sinks are clear. The files now lag the chain, and a restart must know: a
        failed save joins `failed`, to be raised with the sinks' failures.
        """
        for index, (name, kind) in enumerate(self._names):
            if index not in failed:
                self._lost.pop(name, None)
            else:
                since = self._lost[name].first if name in self._lost else first
                self._lost[name] = Missed(name, since, last, kind)
        if self._state is not None and (head := self.head) is not None:
            try:
                self._state.save(head)
            except OSError as e:
                failed[len(self._sinks)] = e

    def ship_head(self) -> None:
        """Send the current head to the head sinks (once per new head)."""
        head = self.head
        self._last_ship = self._clock()
        if head is None or head == self._shipped or not self._head_sinks:
            return
        line = json.dumps(head_record(head, self._last_ship), separators=(",", ":"))
        for sink in self._head_sinks:
            sink.write_lines([line])
            sink.flush()
        self._shipped = head

    def flush(self) -> None:
        """Flush downstream sinks, then ship the head (the head never runs ahead of the files)."""
        _each(self._sinks, lambda sink: sink.flush())
        self.ship_head()

    def close(self) -> None:
        """Declare pending losses a last time, flush, ship the head, close downstream sinks.

        (The owner closes head sinks.)
        """
        try:
            try:
                if self._lost:
                    self.write_lines([])
            finally:
                self.flush()
        finally:
            if self._state is not None:
                self._state.close()
            _each(self._sinks, lambda sink: sink.close())


def _each(sinks: Sequence[RecordSink], call: Callable[[RecordSink], None]) -> None:
    """Call `call` on every sink, also after one fails; then raise the failure(s).

    A full disk under the records file must not stop the collector's copy.
    """
    _raise(_call_each(sinks, call))


def _call_each(
    sinks: Sequence[RecordSink], call: Callable[[RecordSink], None]
) -> dict[int, Exception]:
    """Call `call` on every sink; the failures by the sink's index."""
    failed: dict[int, Exception] = {}
    for index, sink in enumerate(sinks):
        try:
            call(sink)
        except Exception as e:  # noqa: BLE001  (the caller raises it, after the other sinks)
            failed[index] = e
    return failed


def _raise(failed: dict[int, Exception]) -> None:
    errors = list(failed.values())
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ExceptionGroup("record sinks failed", errors)


class ChainState:
    """The chain's head saved beside the records file whenever a write fails.

    A restart resumes the chain from the newest line of the records file. After a failed
    write the chain has gone further (the collector took seqs the file did not), and
    resuming from the file would issue those seqs again: a forked chain. So the head, with
    its undeclared losses, is saved after every failed write, into space reserved when the
    sink starts (a full disk must not refuse it), and `resume` takes the newer of the two.
    """

    SIZE = 4096  # reserved bytes: the head and a few sinks' losses

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def reserve(self) -> None:
        """Create the file with its space allocated (OSError if the disk refuses)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.posix_fallocate(fd, 0, self.SIZE)
                os.fsync(fd)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def save(self, head: ChainHead) -> None:
        """Overwrite the saved head in place (nothing when no space was reserved)."""
        if self._fd is None:
            return
        state = {"seq": head.seq, "mac": head.mac, "lost": [x.as_field() for x in head.lost]}
        data = json.dumps(state, separators=(",", ":")).encode()
        if len(data) < self.SIZE:
            os.pwrite(self._fd, data.ljust(self.SIZE), 0)

    def load(self) -> ChainHead | None:
        """The saved head; None when there is none. ValueError when it is unreadable."""
        try:
            text = self.path.read_bytes().strip()
        except FileNotFoundError:
            return None
        if not text.strip(b"\0"):
            return None
        try:
            state = json.loads(text)
            lost = tuple(Missed.from_field(x) for x in state["lost"])
            return ChainHead(int(state["seq"]), str(state["mac"]), lost)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path}: not a saved chain head: {e}") from e

    def close(self) -> None:
        """Release the reserved file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def resume(files: Sequence[str | os.PathLike[str]], state: ChainState) -> ChainHead | None:
    """Where a restarted chain goes on: the files' newest head, or the saved one if newer.

    A saved head ahead of the files also declares what they lack: the sinks it names missed
    their seqs up to it, so the first batch after the restart says so.
    """
    head, saved = resume_head(files), state.load()
    if saved is None or (head is not None and head.seq >= saved.seq):
        return head
    return saved


def read_last_head(path: str | os.PathLike[str]) -> ChainHead | None:
    """The head of the newest chained line in `path` (to resume after a restart).

    Read backwards in `_TAIL_BYTES` blocks until a chained line turns up: a long damaged
    tail (zeros after a power loss) must not hide the last good line and restart the chain
    at seq 0. A "line" longer than `_MAX_LINE` is damage, not a record, and is skipped.
    """
    try:
        with Path(path).open("rb") as f:
            end, rest = f.seek(0, os.SEEK_END), b""
            while end > 0:
                start = max(0, end - _TAIL_BYTES)
                f.seek(start)
                lines = (f.read(end - start) + rest).split(b"\n")
                rest = lines.pop(0) if start > 0 else b""  # its start is in the block before
                if len(rest) > _MAX_LINE:
                    rest = b""
                for line in reversed(lines):
                    m = _SUFFIX.search(line.decode("utf-8", errors="replace"))
                    if m:
                        return ChainHead(int(m[1]), m[3])
                end = start
    except FileNotFoundError:
        return None
    return None


def resume_head(files: Sequence[str | os.PathLike[str]]) -> ChainHead | None:
    """The newest head in a rotation set given oldest first (an empty active file is skipped)."""
    for path in reversed(files):
        head = read_last_head(path)
        if head is not None:
            return head
    return None


def read_head(lines: Iterable[str]) -> ChainHead | None:
    """The newest shipped head in collector output (one record per line, any syslog prefix)."""
    best: ChainHead | None = None
    for line in lines:
        if HEAD_ACTION not in line or "{" not in line:
            continue
        try:
            rec = json.loads(line[line.index("{") :])
            h = rec["aupguard"]["chain_head"]
            lost = tuple(Missed.from_field(x) for x in h.get("lost", ()))
            head = ChainHead(int(h["seq"]), str(h["mac"]), lost)
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if best is None or head.seq > best.seq:
            best = head
    return best


# --- verification -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """The first problem found: where, a low-cardinality kind and a sentence for people."""

    file: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class Loss:
    """Records missing from the files that the chain declared lost (a failed write).

    `file:line` is the `records-lost` record (or the last line, for a loss the shipped head
    declared); `damaged` counts the unchained lines (torn by the failure) skipped before it.
    """

    file: str
    line: int
    first: int
    last: int
    sinks: tuple[str, ...]
    damaged: int = 0

    def __str__(self) -> str:
        damage = f"; {self.damaged} damaged line(s) skipped" if self.damaged else ""
        return (f"{self.file}:{self.line}: lost: records seq {self.first}..{self.last} never "
                f"reached the files (declared by the writer: a write to "
                f"{', '.join(self.sinks)} failed){damage}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of `verify`: records, files, first and last seq, first problem, declared losses."""

    records: int
    files: int
    first_seq: int | None
    last: ChainHead | None
    problem: Problem | None
    losses: tuple[Loss, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no problem was found (declared losses are no problem)."""
        return self.problem is None


def _lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, has line end) of every non-empty line."""
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        for no, raw in enumerate(f, 1):
            text = raw.rstrip("\r\n")
            if text:
                yield no, text, raw.endswith("\n")


def _first_seq(path: Path) -> int:
    for _no, text, _end in _lines(path):
        m = _SUFFIX.search(text)
        return int(m[1]) if m else -1
    return -1


def _seq_later(files: list[Path], seq: int) -> bool:
    """True when a record with `seq` occurs anywhere (for naming a gap 'reordered')."""
    needle = f'"aupguard.chain":{{"seq":{seq},'
    return any(needle in text for p in files for _n, text, _e in _lines(p))


@dataclass(slots=True)
class _State:
    files: list[Path]
    key: bytes
    expected: int | None = None
    prev: str = GENESIS
    count: int = 0
    first: int | None = None
    suspect: Problem | None = None  # damage a `records-lost` record may yet explain
    damaged: int = 0  # unchained lines since `suspect`
    losses: list[Loss] = field(default_factory=list)


def _gap(st: _State, seq: int, where: tuple[str, int], *, boundary: bool) -> Problem:
    exp = st.expected
    if boundary:
        msg = (
            f"records seq {exp}..{seq - 1} are missing before this file: "
            "a rotated file (or its first records) is missing"
        )
        return Problem(*where, "missing-file", msg)
    if _seq_later(st.files, exp if exp is not None else 0):
        return Problem(*where, "reordered", f"expected seq {exp}, found seq {seq}")
    return Problem(*where, "deleted", f"records seq {exp}..{seq - 1} were deleted")


def _check(  # noqa: PLR0911 one return per kind of problem reads best
    st: _State, text: str, where: tuple[str, int], *, boundary: bool
) -> Problem | None:
    m = _SUFFIX.search(text)
    if m is None:
        return Problem(*where, "inserted", "a line without a chain field (inserted or damaged)")
    seq, prev, mac = int(m[1]), m[2], m[3]
    if not hmac.compare_digest(_mac(st.key, seq, prev, text[: m.start()]), mac):
        return Problem(*where, "modified", f"record seq {seq} does not match its MAC")
    if st.expected is None:
        st.first = seq
        if seq == 0 and prev != GENESIS:
            return Problem(*where, "broken", "seq 0 does not start from the genesis value")
    elif seq > st.expected:
        return _gap(st, seq, where, boundary=boundary)
    elif seq < st.expected:
        kind = "duplicated" if seq == st.expected - 1 and mac == st.prev else "inserted"
        return Problem(*where, kind, f"expected seq {st.expected}, found seq {seq} again")
    elif prev != st.prev:
        return Problem(*where, "broken", f"seq {seq} is not chained to the record before it")
    st.expected, st.prev = seq + 1, mac
    st.count += 1
    return None


def _declared(st: _State, text: str, where: tuple[str, int]) -> bool:
    """Accept `text` if it is an intact `records-lost` record covering the gap before it.

    Its own MAC proves the key holder wrote it; its `prev` is the last seq the failing
    sink missed, so it is not checked against the record before it.
    """
    m = _SUFFIX.search(text)
    if m is None or f'"action":"{LOST_ACTION}"' not in text:
        return False
    seq, prev, mac = int(m[1]), m[2], m[3]
    if not hmac.compare_digest(_mac(st.key, seq, prev, text[: m.start()]), mac):
        return False
    try:
        declared = [Missed.from_field(x) for x in json.loads(text)["aupguard"]["lost"]]
    except (ValueError, KeyError, TypeError):
        return False
    declared = [x for x in declared if x.kind == "file"]  # what a file missed, not a collector
    if not declared:
        return False
    first = st.expected if st.expected is not None else min(x.first for x in declared)
    covering = [x for x in declared if x.first <= first and x.last >= seq - 1]
    if not covering or first > seq - 1:
        return False
    sinks = tuple(x.sink for x in covering)
    st.losses.append(Loss(*where, first, seq - 1, sinks, st.damaged))
    if st.first is None:
        st.first = seq
    st.expected, st.prev, st.count = seq + 1, mac, st.count + 1
    st.suspect, st.damaged = None, 0
    return True


def _step(
    st: _State, text: str, where: tuple[str, int], *, ended: bool, boundary: bool
) -> Problem | None:
    """Check one line; a gap or damage that a `records-lost` record declares is a loss."""
    chained = _SUFFIX.search(text) is not None
    if chained and _declared(st, text, where):
        return None  # a gap, damage or the files' first seqs, which the writer declared lost
    if st.suspect is not None:  # after damage: more damage, or no declaration after all
        if chained:
            return st.suspect
        st.damaged += 1
        return None
    problem = _check(st, text, where, boundary=boundary and st.expected is not None)
    if problem is None and not ended:
        problem = Problem(*where, "torn", "the last line is incomplete")
    if problem is not None and (not chained or problem.kind == "torn"):
        st.suspect, st.damaged = problem, 1  # damage: a declaration may follow
        return None
    return problem


def _tail(st: _State, head: ChainHead | None, where: tuple[str, int]) -> Problem | None:
    if head is None:
        return None
    last = (st.expected or 0) - 1
    if last < head.seq:
        declared = [
            x for x in head.lost if x.kind == "file" and x.first <= last + 1 and x.last >= head.seq
        ]
        if declared:  # the disk never took them: the head shipped meanwhile says so
            sinks = tuple(x.sink for x in declared)
            st.losses.append(Loss(*where, last + 1, head.seq, sinks, st.damaged))
            st.suspect = None
            return None
        msg = f"the files end at seq {last}; the shipped head is seq {head.seq}: tail cut"
        return Problem(*where, "truncated", msg)
    if last == head.seq and st.prev != head.mac:
        return Problem(*where, "modified", f"seq {last} differs from the shipped head")
    return None


def verify(
    files: Sequence[str | os.PathLike[str]], key: bytes, head: ChainHead | None = None
) -> VerifyResult:
    """Check the chain over `files` (sorted by their first seq) and stop at the first problem.

    Gaps and damaged lines that the chain (or the shipped head) declares lost are listed in
    `losses` and passed over.
    """
    paths = sorted((Path(f) for f in files), key=_first_seq)
    st = _State(paths, key)
    where = (str(paths[-1]), 0) if paths else ("-", 0)  # an empty file says where, too
    problem: Problem | None = None
    for path in paths:
        boundary = True
        for no, text, ended in _lines(path):
            where = (str(path), no)
            problem = _step(st, text, where, ended=ended, boundary=boundary)
            if problem is not None:
                break
            boundary = False
        if problem is not None:
            break
    if problem is None:
        problem = _tail(st, head, where) or st.suspect
    last = ChainHead(st.expected - 1, st.prev) if st.expected else None
    return VerifyResult(st.count, len(paths), st.first, last, problem, tuple(st.losses))
