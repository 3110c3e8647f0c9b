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
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.records import DATASET, ECS_VERSION, format_timestamp, new_event_id

if TYPE_CHECKING:
    from agent.writer import RecordSink

__all__ = [
    "GENESIS", "ChainHead", "ChainSink", "Problem", "VerifyResult", "generate_key",
    "head_record", "load_key", "read_head", "read_last_head", "resume_head", "verify",
]  # fmt: skip

GENESIS = "0" * 64
KEY_BYTES = 32
CHAIN_KEY = "aupguard.chain"
HEAD_ACTION = "chain-head"
_SUFFIX = re.compile(
    r',"aupguard\.chain":\{"seq":(\d+),"prev":"([0-9a-f]{64})","mac":"([0-9a-f]{64})"\}\}$'
)
_TAIL_BYTES = 1 << 16
_MAX_LINE = 1 << 20  # no record line is this long (URL fields are cut at 8 KiB)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest chained record: its sequence number and MAC."""

    seq: int
    mac: str


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
    """The record shipped to the collector that pins the newest seq and MAC."""
    eid = new_event_id(now)
    return {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {"id": eid, "kind": "event", "type": ["info"], "action": HEAD_ACTION,
                  "dataset": DATASET, "reason": f"record chain head at seq {head.seq}"},
        "observer": {"product": "aupguard"},
        "aupguard": {"reference_id": eid, "chain_head": {"seq": head.seq, "mac": head.mac}},
    }  # fmt: skip


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
    ) -> None:
        self._key = key
        self._sinks = tuple(sinks)
        self._head_sinks = tuple(head_sinks)
        self._interval = head_interval
        self._clock = clock
        self._seq = head.seq + 1 if head else 0
        self._prev = head.mac if head else GENESIS
        self._shipped = -1
        self._last_ship = clock()

    @property
    def head(self) -> ChainHead | None:
        """The newest chained record, None before the first."""
        return ChainHead(self._seq - 1, self._prev) if self._seq else None

    def write_lines(self, lines: list[str]) -> None:
        """Chain the batch and write it to every downstream sink."""
        out: list[str] = []
        seq, prev, key = self._seq, self._prev, self._key
        for line in lines:
            chained, prev = chain_line(key, line, seq, prev)
            out.append(chained)
            seq += 1
        self._seq, self._prev = seq, prev
        _each(self._sinks, lambda sink: sink.write_lines(out))
        if self._clock() - self._last_ship >= self._interval:
            self.flush()  # the files first: a shipped head never runs ahead of them

    def ship_head(self) -> None:
        """Send the current head to the head sinks (once per new head)."""
        head = self.head
        self._last_ship = self._clock()
        if head is None or head.seq == self._shipped or not self._head_sinks:
            return
        line = json.dumps(head_record(head, self._last_ship), separators=(",", ":"))
        for sink in self._head_sinks:
            sink.write_lines([line])
            sink.flush()
        self._shipped = head.seq

    def flush(self) -> None:
        """Flush downstream sinks, then ship the head (the head never runs ahead of the files)."""
        _each(self._sinks, lambda sink: sink.flush())
        self.ship_head()

    def close(self) -> None:
        """Flush, ship the head, close downstream sinks (the owner closes head sinks)."""
        try:
            self.flush()
        finally:
            _each(self._sinks, lambda sink: sink.close())


def _each(sinks: Sequence[RecordSink], call: Callable[[RecordSink], None]) -> None:
    """Call `call` on every sink, also after one fails; then raise the failure(s).

    A full disk under the records file must not stop the collector's copy.
    """
    failed: list[Exception] = []
    for sink in sinks:
        try:
            call(sink)
        except Exception as e:  # noqa: BLE001  (raised below, after the other sinks)
            failed.append(e)
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise ExceptionGroup("record sinks failed", failed)


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
            head = ChainHead(int(h["seq"]), str(h["mac"]))
        except (ValueError, KeyError, TypeError):
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
class VerifyResult:
    """Outcome of `verify`: records checked, first and last seq, and the first problem."""

    records: int
    files: int
    first_seq: int | None
    last: ChainHead | None
    problem: Problem | None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
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
    seen_file_start: bool = False


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


def _tail(st: _State, head: ChainHead | None, where: tuple[str, int]) -> Problem | None:
    if head is None:
        return None
    last = (st.expected or 0) - 1
    if last < head.seq:
        msg = f"the files end at seq {last}; the shipped head is seq {head.seq}: tail cut"
        return Problem(*where, "truncated", msg)
    if last == head.seq and st.prev != head.mac:
        return Problem(*where, "modified", f"seq {last} differs from the shipped head")
    return None


def verify(
    files: Sequence[str | os.PathLike[str]], key: bytes, head: ChainHead | None = None
) -> VerifyResult:
    """Check the chain over `files` (sorted by their first seq) and stop at the first problem."""
    paths = sorted((Path(f) for f in files), key=_first_seq)
    st = _State(paths, key)
    where = ("-", 0)
    problem: Problem | None = None
    for path in paths:
        boundary = True
        for no, text, ended in _lines(path):
            where = (str(path), no)
            problem = _check(st, text, where, boundary=boundary and st.expected is not None)
            if problem is None and not ended:
                problem = Problem(*where, "torn", "the last line is incomplete")
            if problem is not None:
                break
            boundary = False
        if problem is not None:
            break
    if problem is None:
        problem = _tail(st, head, where)
    last = ChainHead(st.expected - 1, st.prev) if st.expected else None
    return VerifyResult(st.count, len(paths), st.first, last, problem)
