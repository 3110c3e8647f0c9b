"""Record chain: every tampering of record files is reported at the first bad record."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import writer
from agent.chain import (
    ChainHead,
    ChainSink,
    ChainState,
    Missed,
    generate_key,
    load_key,
    read_head,
    read_last_head,
    resume,
    verify,
)
from agent.logcheck import _args, cmd_logs
from agent.writer import JsonLinesFileSink, MemorySink

KEY = bytes(range(32))
Files = list[list[str]]


def chained(n: int = 30, key: bytes = KEY) -> list[str]:
    sink = MemorySink()
    chain = ChainSink(key, [sink])
    chain.write_lines([json.dumps({"event": {"id": f"e{i}"}, "n": i}) for i in range(n)])
    return sink.lines


def split(lines: list[str], per: int = 10) -> Files:
    return [lines[i : i + per] for i in range(0, len(lines), per)]


def write(tmp_path: Path, files: Files) -> list[Path]:
    paths = []
    for i, lines in enumerate(files):
        p = tmp_path / f"records-{i}.jsonl"
        p.write_text("".join(line + "\n" for line in lines))
        paths.append(p)
    return paths


def modify(f: Files) -> None:
    f[1][3] = f[1][3].replace('"n": 13', '"n": 99')


def delete(f: Files) -> None:
    del f[1][4]


def insert_forged(f: Files) -> None:
    f[1].insert(2, json.dumps({"event": {"id": "x"}}))


def insert_copy(f: Files) -> None:
    f[2].insert(5, f[0][1])


def insert_other_chain(f: Files) -> None:
    f[1].insert(2, chained(30, bytes(32))[11])


def reorder(f: Files) -> None:
    f[0][2], f[0][3] = f[0][3], f[0][2]


def duplicate(f: Files) -> None:
    f[0].insert(4, f[0][3])


def drop_file(f: Files) -> None:
    del f[1]


def drop_first_of_file(f: Files) -> None:
    del f[2][0]


def torn_tail(f: Files) -> None:
    f[2][-1] = f[2][-1][:40]


CASES = [
    pytest.param(modify, "records-1.jsonl", 4, "modified", id="modify"),
    pytest.param(delete, "records-1.jsonl", 5, "deleted", id="delete"),
    pytest.param(insert_forged, "records-1.jsonl", 3, "inserted", id="insert-unchained"),
    pytest.param(insert_copy, "records-2.jsonl", 6, "inserted", id="insert-copy"),
    pytest.param(insert_other_chain, "records-1.jsonl", 3, "modified", id="insert-other-key"),
    pytest.param(reorder, "records-0.jsonl", 3, "reordered", id="reorder"),
    pytest.param(duplicate, "records-0.jsonl", 5, "duplicated", id="duplicate"),
    pytest.param(drop_file, "records-1.jsonl", 1, "missing-file", id="drop-rotated-file"),
    pytest.param(drop_first_of_file, "records-2.jsonl", 1, "missing-file", id="drop-first-of-file"),
    pytest.param(torn_tail, "records-2.jsonl", 10, "inserted", id="torn-tail"),
]


def test_intact_chain_verifies(tmp_path: Path) -> None:
    """An untouched rotation set verifies, given in any order."""
    paths = write(tmp_path, split(chained()))
    result = verify(list(reversed(paths)), KEY)
    assert result.ok, result.problem
    assert (result.records, result.files, result.first_seq) == (30, 3, 0)
    assert result.last is not None
    assert result.last.seq == 29


@pytest.mark.parametrize(("tamper", "file", "line", "kind"), CASES)
def test_tampering_is_reported_at_first_bad_record(
    tmp_path: Path, tamper: Callable[[Files], None], file: str, line: int, kind: str
) -> None:
    """Each kind of tampering is reported with its file, line and kind."""
    files = split(chained())
    tamper(files)
    result = verify(write(tmp_path, files), KEY)
    assert result.problem is not None
    assert (Path(result.problem.file).name, result.problem.line, result.problem.kind) == (
        file,
        line,
        kind,
    )


def test_cut_tail_needs_the_shipped_head(tmp_path: Path) -> None:
    """Cutting the newest records passes without a head and fails against the shipped head."""
    head_sink = MemorySink()
    sink = MemorySink()
    chain = ChainSink(KEY, [sink], head_sinks=[head_sink], head_interval=3600)
    chain.write_lines([json.dumps({"n": i}) for i in range(30)])
    chain.flush()
    head = read_head(head_sink.lines)
    assert head == ChainHead(29, chain.head.mac if chain.head else "")
    files = split(sink.lines)
    files[2] = files[2][:6]
    paths = write(tmp_path, files)
    assert verify(paths, KEY).ok
    result = verify(paths, KEY, head)
    assert result.problem is not None
    assert result.problem.kind == "truncated"
    assert verify(write(tmp_path, split(sink.lines)), KEY, head).ok


def test_head_ships_on_interval_only() -> None:
    """The head goes out when the interval has passed, not on every batch."""
    now = [0.0]
    heads = MemorySink()
    chain = ChainSink(
        KEY, [MemorySink()], head_sinks=[heads], head_interval=10, clock=lambda: now[0]
    )
    chain.write_lines(["{}"])
    assert heads.lines == []
    now[0] = 11
    chain.write_lines(["{}"])
    assert read_head(heads.lines) == ChainHead(1, chain.head.mac if chain.head else "")


def test_a_head_ships_only_after_the_files_are_flushed() -> None:
    """A head shipped on the interval covers what the files have made durable: they are
    flushed (fsync) first, and a failing file ships no head (heads used to run ahead)."""
    now = [0.0]
    heads, files = MemorySink(), MemorySink()
    chain = ChainSink(KEY, [files], head_sinks=[heads], head_interval=10, clock=lambda: now[0])
    chain.write_lines(["{}"])
    now[0] = 11
    chain.write_lines(["{}"])
    assert files.flushes == 1
    assert read_head(heads.lines) == ChainHead(1, chain.head.mac if chain.head else "")
    broken = ChainSink(KEY, [BrokenDisk()], head_sinks=[heads := MemorySink()],
                       head_interval=0, clock=lambda: now[0])  # fmt: skip
    with pytest.raises(OSError, match="No space"):
        broken.write_lines(["{}"])
    assert heads.lines == []


def test_chain_resumes_across_restart(tmp_path: Path) -> None:
    """A new sink continues the chain from the newest line of the existing file."""
    path = write(tmp_path, [chained(5)])[0]
    head = read_last_head(path)
    assert head is not None
    assert head.seq == 4
    sink = MemorySink()
    ChainSink(KEY, [sink], head=head).write_lines(["{}", "{}"])
    with path.open("a") as f:
        f.writelines(line + "\n" for line in sink.lines)
    assert verify([path], KEY).records == 7


@pytest.mark.parametrize(
    "tail",
    [
        b"",
        b"\0" * 70_000,  # zeros after a power loss: longer than one read block
        b"\0" * 40_000 + b"\n" + b"\0" * 40_000,
        b"x" * (65_536 - 100),  # the block boundary falls inside the last chained line
        b"\0" * (3 << 20),  # a "line" longer than any record, skipped as damage
    ],
    ids=["clean", "70k-zeros", "zero-lines", "straddling", "3M-zeros"],
)
def test_the_head_is_found_behind_a_long_damaged_tail(tmp_path: Path, tail: bytes) -> None:
    """The chain resumes from the last good line, however much damage follows it; it used to
    look at the last 64 KiB only and restart at seq 0 silently."""
    path = write(tmp_path, [chained(5)])[0]
    with path.open("ab") as f:
        f.write(tail)
    head = read_last_head(path)
    assert head is not None
    assert head.seq == 4


def test_key_file_checks(tmp_path: Path) -> None:
    """Keys are generated 0400; a key readable by others or too short is refused."""
    key = tmp_path / "chain.key"
    generate_key(key)
    assert key.stat().st_mode & 0o777 == 0o400
    assert len(load_key(key)) == 32
    key.chmod(0o644)
    with pytest.raises(ValueError, match="accessible to others"):
        load_key(key)
    short = tmp_path / "short.key"
    short.write_text("abcd")
    short.chmod(0o600)
    with pytest.raises(ValueError, match="expected at least 32"):
        load_key(short)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    _args(parser)
    return cmd_logs(parser.parse_args(argv[1:]))


def test_logs_verify_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`aupguard logs verify` exits 0 on an intact set and 1 with the first problem."""
    key = tmp_path / "k.key"
    generate_key(key)
    paths = write(tmp_path, split(chained(20, load_key(key))))
    assert main(["logs", "verify", "--key", str(key), *map(str, paths)]) == 0
    assert "ok: 20 records in 2 files" in capsys.readouterr().out
    paths[0].write_text(paths[0].read_text().replace('"n": 3', '"n": 4'))
    assert main(["logs", "verify", "--key", str(key), *map(str, paths)]) == 1
    assert "records-0.jsonl:4: modified" in capsys.readouterr().out
    assert main(["logs", "verify", *map(str, paths)]) == 2


class BrokenDisk(MemorySink):
    """A records file on a full disk: every write and flush fails."""

    def write_lines(self, lines: list[str]) -> None:
        raise OSError(28, f"No space left on device ({len(lines)} lines)")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("call", ["write_lines", "flush", "close"])
def test_a_failing_file_does_not_stop_the_chain_reaching_the_others(call: str) -> None:
    """A full disk under the file must not keep the lines, flush or close from the collector's
    sink; the failure is still raised to the writer, which logs and counts it."""
    shipped, heads = MemorySink(), MemorySink()
    chain = ChainSink(KEY, [BrokenDisk(), shipped], head_sinks=[heads])
    args = ([json.dumps({"n": 1})],) if call == "write_lines" else ()
    with pytest.raises(OSError, match="No space"):
        getattr(chain, call)(*args)
    assert len(shipped.lines) == (call == "write_lines")
    assert shipped.flushes == (call in ("flush", "close"))
    assert shipped.closed is (call == "close")


class FillingDisk:
    """`write_all` for a disk that fills: while `room` is set, a write keeps that many bytes
    (then none) and fails with ENOSPC, as a real full disk does to the records file."""

    def __init__(self) -> None:
        self.room: int | None = None
        self.write_all = writer.write_all  # the real one, before the test replaces it

    def __call__(self, fd: int, data: bytes) -> tuple[int, OSError | None]:
        if self.room is None:
            return self.write_all(fd, data)
        kept = min(self.room, len(data))
        sent, _ = self.write_all(fd, data[:kept])
        self.room = 0
        return sent, OSError(28, "No space left on device")


def lines(n: int, start: int) -> list[str]:
    return [json.dumps({"event": {"id": f"e{i}"}, "n": i}) for i in range(start, start + n)]


def fail_then_recover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int) -> Path:
    """Seqs 0-4 written; 5-9, then a declaration (10) and 11-13 fail (the first failed write
    keeping `room` bytes); after space is back, a declaration (14) and 15-18 go in."""
    disk = FillingDisk()
    monkeypatch.setattr(writer, "write_all", disk)
    path = tmp_path / "records.jsonl"
    chain = ChainSink(KEY, [JsonLinesFileSink(path)])
    chain.write_lines(lines(5, 0))
    disk.room = room
    for batch in (lines(5, 5), lines(3, 10)):
        with pytest.raises(OSError, match="No space"):
            chain.write_lines(batch)
    disk.room = None
    chain.write_lines(lines(4, 13))
    chain.close()
    return path


LINE = len(chained(1)[0]) + 1  # one chained test record with its line end (all are as long)


@pytest.mark.parametrize(
    ("room", "first", "damaged", "records"),
    [
        pytest.param(0, 5, 0, 10, id="nothing-written"),
        pytest.param(40, 5, 1, 10, id="torn-line"),
        pytest.param(LINE + 40, 6, 1, 11, id="a-line-then-a-torn-one"),
        pytest.param(2 * LINE, 7, 0, 12, id="whole-lines-only"),
    ],
)
def test_records_a_full_disk_refused_are_declared_lost_not_tampered(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    room: int,
    first: int,
    damaged: int,
    records: int,
) -> None:
    """A gap or torn line left by a failed write is a loss the chain itself declares; it used to
    read as `deleted` or `inserted`, the kinds tampering gives."""
    path = fail_then_recover(tmp_path, monkeypatch, room)
    result = verify([path], KEY)
    assert result.ok, result.problem
    assert [(x.first, x.last, x.damaged, x.sinks) for x in result.losses] == [
        (first, 13, damaged, (str(path),))
    ]
    assert (result.records, result.last.seq if result.last else None) == (records, 18)


def edit(path: Path, change: Callable[[list[str]], None]) -> None:
    text = path.read_text().splitlines()
    change(text)
    path.write_text("".join(f"{line}\n" for line in text))


def forge_range(text: list[str]) -> None:
    text[5] = text[5].replace('"first_seq":5', '"first_seq":4')


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        pytest.param(lambda t: t.pop(6), "deleted", id="delete-after-the-declaration"),
        pytest.param(lambda t: t.pop(4), "deleted", id="delete-before-the-gap"),
        pytest.param(forge_range, "modified", id="forge-the-declared-range"),
        pytest.param(lambda t: t.insert(3, "{}"), "inserted", id="insert-before-the-gap"),
    ],
)
def test_a_declared_loss_hides_no_tampering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[list[str]], None], kind: str
) -> None:
    """Around a declared loss, tampering is still reported: the declaration covers only the
    seqs the writer said it lost, and its own MAC covers what it says."""
    path = fail_then_recover(tmp_path, monkeypatch, 0)
    edit(path, change)
    problem = verify([path], KEY).problem
    assert problem is not None
    assert problem.kind == kind


def test_every_sink_gets_the_declaration_once_the_file_takes_it() -> None:
    """The collector's copy holds the declarations too; they stop once the file takes one."""
    shipped = MemorySink()
    broken = BrokenDisk()
    chain = ChainSink(KEY, [broken, shipped])
    for n in range(3):
        if n == 2:
            broken.write_lines = MemorySink().write_lines  # type: ignore[method-assign]
        with contextlib.suppress(OSError):
            chain.write_lines(lines(2, 0))
    chain.write_lines(lines(2, 0))
    actions = [json.loads(line)["event"].get("action") for line in shipped.lines]
    assert actions == [
        None,
        None,
        "records-lost",
        None,
        None,
        "records-lost",
        None,
        None,
        None,
        None,
    ]
    declared = [json.loads(line)["aupguard"]["lost"] for line in shipped.lines if "lost" in line]
    assert [(d[0]["first_seq"], d[0]["last_seq"]) for d in declared] == [(0, 1), (0, 4)]


def test_a_loss_still_pending_at_close_travels_with_the_shipped_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk stays full to the end: the head shipped at close says which seqs the file
    never took, so `verify --head` reports them lost instead of a cut tail."""
    disk = FillingDisk()
    monkeypatch.setattr(writer, "write_all", disk)
    path, heads = tmp_path / "records.jsonl", MemorySink()
    chain = ChainSink(KEY, [JsonLinesFileSink(path)], head_sinks=[heads])
    chain.write_lines(lines(5, 0))
    disk.room = 0
    with pytest.raises(OSError, match="No space"):
        chain.write_lines(lines(5, 5))
    with pytest.raises(OSError, match="No space"):
        chain.close()
    head = read_head(heads.lines)
    assert head is not None
    result = verify([path], KEY, head)
    assert result.ok, result.problem
    assert [(x.first, x.last) for x in result.losses] == [(5, 10)]  # 10: the last declaration
    cut = verify([path], KEY, ChainHead(head.seq, head.mac))  # the same head without `lost`
    assert cut.problem is not None
    assert cut.problem.kind == "truncated"


def test_verify_cli_exits_3_on_declared_losses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3, with each loss printed: intact, yet records are missing."""
    key = tmp_path / "chain.key"
    key.write_text(KEY.hex())
    key.chmod(0o400)
    path = fail_then_recover(tmp_path, monkeypatch, 40)
    assert main(["logs", "verify", "--key", str(key), str(path)]) == 3
    out = capsys.readouterr().out
    assert f"{path}:7: lost: records seq 5..13 never reached the files" in out
    assert "1 damaged line(s) skipped" in out
    assert "intact, with losses: 10 records" in out


def seqs(lines: list[str]) -> list[int]:
    return [json.loads(line)["aupguard.chain"]["seq"] for line in lines]


@pytest.mark.parametrize("room", [0, 40])
def test_a_restart_after_a_failed_write_goes_on_from_the_collectors_seqs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room: int
) -> None:
    """The disk is still full when the gateway stops. The restarted chain goes on after the
    last seq the collector took, and declares what the file lacks; resuming from the file,
    it used to issue seqs 5.. again: a forked chain at the collector."""
    disk = FillingDisk()
    monkeypatch.setattr(writer, "write_all", disk)
    path, shipped = tmp_path / "records.jsonl", MemorySink()

    def start() -> ChainSink:
        state = ChainState(f"{path}.chain")
        head = resume([path], state)
        state.reserve()
        return ChainSink(KEY, [JsonLinesFileSink(path), shipped], head=head, state=state)

    chain = start()
    chain.write_lines(lines(5, 0))
    disk.room = room
    with pytest.raises(OSError, match="No space"):
        chain.write_lines(lines(5, 5))
    with pytest.raises(OSError, match="No space"):
        chain.close()  # its last declaration fails too
    disk.room = None
    chain = start()
    chain.write_lines(lines(3, 10))
    chain.close()
    assert seqs(shipped.lines) == list(range(len(shipped.lines)))  # no seq issued twice
    result = verify([path], KEY)
    assert result.ok, result.problem
    assert [(x.first, x.last, x.damaged) for x in result.losses] == [(5, 10, room > 0)]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param(b"\0" * 4096, None, id="reserved-never-written"),
        pytest.param(b'{"seq":7,"mac":"ab","lost":[]}'.ljust(4096), ChainHead(7, "ab"), id="saved"),
        pytest.param(b'{"seq":"x"}', ValueError, id="damaged"),
    ],
)
def test_chain_state_load(tmp_path: Path, content: bytes | None, expected: object) -> None:
    """A saved head is read back; a damaged one is a ValueError naming the file."""
    state = ChainState(tmp_path / "records.jsonl.chain")
    if content is not None:
        state.path.write_bytes(content)
    if expected is ValueError:
        with pytest.raises(ValueError, match=r"records\.jsonl\.chain: not a saved chain head"):
            state.load()
    else:
        assert state.load() == expected


def test_a_file_that_begins_with_a_declaration_reports_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk was full from the start: the file's first line declares seqs 0.. lost; that
    used to pass as a set whose oldest records had gone by retention."""
    disk = FillingDisk()
    monkeypatch.setattr(writer, "write_all", disk)
    path = tmp_path / "records.jsonl"
    chain = ChainSink(KEY, [JsonLinesFileSink(path)])
    disk.room = 0
    with pytest.raises(OSError, match="No space"):
        chain.write_lines(lines(5, 0))
    disk.room = None
    chain.write_lines(lines(2, 5))
    result = verify([path], KEY)
    assert result.ok, result.problem
    assert [(x.first, x.last) for x in result.losses] == [(0, 4)]
    assert (result.records, result.first_seq) == (3, 5)


def test_a_declaration_for_a_sink_gone_since_the_restart_is_made_once() -> None:
    """A saved head names a sink the restarted gateway no longer has (the collector moved):
    its loss is declared once, not at the head of every batch forever."""
    shipped = MemorySink()
    head = ChainHead(4, "0" * 64, (Missed("syslog 192.0.2.1:514", 3, 4, "collector"),))
    chain = ChainSink(KEY, [shipped], head=head)
    chain.write_lines(lines(2, 0))
    chain.write_lines(lines(2, 2))
    actions = [json.loads(line)["event"].get("action") for line in shipped.lines]
    assert actions == ["records-lost", None, None, None, None]


def test_a_declaration_for_the_collector_excuses_no_gap_in_the_file(tmp_path: Path) -> None:
    """The collector missed seqs the file holds; deleting them from the file is tampering,
    not a loss, although a `records-lost` record names those seqs."""
    refusing = BrokenDisk()
    refusing.path = None  # type: ignore[attr-defined]
    refusing.address = ("192.0.2.1", 514)  # type: ignore[attr-defined]
    file = MemorySink()
    chain = ChainSink(KEY, [file, refusing])
    with pytest.raises(OSError, match="No space"):
        chain.write_lines(lines(5, 0))
    refusing.write_lines = MemorySink().write_lines  # type: ignore[method-assign]
    chain.write_lines(lines(2, 5))  # declares seqs 0-4 missed by the collector
    assert "syslog 192.0.2.1:514" in file.lines[5]
    intact = write(tmp_path, [file.lines])
    assert verify(intact, KEY).losses == ()
    cut = write(tmp_path, [file.lines[:2] + file.lines[5:]])
    problem = verify(cut, KEY).problem
    assert problem is not None
    assert problem.kind == "deleted"
