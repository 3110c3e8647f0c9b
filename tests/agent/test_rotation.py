"""Rotating record files: permissions, size and time rotation, retention, chain across files."""

from __future__ import annotations

import errno
import grp
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.chain import ChainSink, resume_head, verify
from agent.rotation import DAY, RotatingFileSink, rotated_files

KEY = bytes(32)
T0 = 1_795_000_000.0  # 2026-11-18, aligned windows are UTC days


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def lines(n: int, start: int = 0) -> list[str]:
    return [
        json.dumps({"event": {"id": f"e{i}"}, "pad": "x" * 80}) for i in range(start, start + n)
    ]


def test_files_are_created_0640_despite_umask(tmp_path: Path) -> None:
    """Active and rotated files are 0640 even with a permissive umask."""
    old = os.umask(0)
    try:
        sink = RotatingFileSink(tmp_path / "records.jsonl", max_bytes=500)
        for _ in range(5):
            sink.write_lines(lines(5))
        sink.close()
    finally:
        os.umask(old)
    files = rotated_files(tmp_path / "records.jsonl")
    assert len(files) >= 3
    assert {p.stat().st_mode & 0o777 for p in files} == {0o640}


def test_group_is_applied(tmp_path: Path) -> None:
    """Files belong to the configured reviewers' group."""
    group = grp.getgrgid(os.getgid()).gr_name if os.getuid() else "daemon"
    sink = RotatingFileSink(tmp_path / "r.jsonl", group=group)
    sink.write_lines(lines(1))
    sink.close()
    st = (tmp_path / "r.jsonl").stat()
    assert st.st_gid == grp.getgrnam(group).gr_gid
    assert st.st_mode & 0o777 == 0o640


def test_unknown_group_is_refused(tmp_path: Path) -> None:
    """An unknown group is a config error naming the key."""
    with pytest.raises(ValueError, match=r"records\.group: no such group"):
        RotatingFileSink(tmp_path / "r.jsonl", group="no-such-group-xyz")


@pytest.mark.parametrize(
    "step", [pytest.param(1.0, id="new-second"), pytest.param(0.0, id="same-second")]
)
def test_size_rotation_keeps_every_line_in_order(tmp_path: Path, step: float) -> None:
    """Rotation by size loses nothing and name order is oldest first, also within one second."""
    clock = Clock()
    sink = RotatingFileSink(tmp_path / "records.jsonl", max_bytes=1000, clock=clock)
    for i in range(20):
        clock.now += step
        sink.write_lines(lines(3, 3 * i))
    sink.close()
    files = rotated_files(tmp_path / "records.jsonl")
    ids = [json.loads(x)["event"]["id"] for p in files for x in p.read_text().splitlines()]
    assert ids == [f"e{i}" for i in range(60)]
    assert sink.rotations == len(files) - 1 > 3


HELPER = "aupguard-records-sync"  # the rotated-file sync thread's name prefix


class Fsyncs:
    """os.fsync, noting each call's file (inode) and thread; the helper's fail if asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, helper_fails: bool = False) -> None:
        self.calls: list[tuple[int, str]] = []  # (inode, thread name)
        self.helper_fails = helper_fails
        self._fsync = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd: int) -> None:
        thread = threading.current_thread().name
        self.calls.append((os.fstat(fd).st_ino, thread))
        if self.helper_fails and thread.startswith(HELPER):
            raise OSError(errno.EIO, "Input/output error")
        self._fsync(fd)


def test_a_rotated_file_is_synced_by_a_helper_and_flush_waits_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread syncs neither the rotated file nor the directory; flush() covers both.

    Once synced, the rotated file's pages are dropped from the page cache, by the helper.
    """
    fsyncs = Fsyncs(monkeypatch)
    advice: list[tuple[int, int, int, int, str]] = []  # inode, offset, length, advice, thread
    fadvise = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, how: int) -> None:
        ino = os.fstat(fd).st_ino
        synced = any(i == ino for i, _ in fsyncs.calls)
        advice.append((ino, offset, length, how if synced else -1, threading.current_thread().name))
        fadvise(fd, offset, length, how)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    sink = RotatingFileSink(tmp_path / "records.jsonl", max_bytes=1000, clock=Clock())
    sink.write_lines(lines(12))
    sink.write_lines(lines(1, 12))  # rotates first
    sink.flush()  # returns once the rotated file is synced too
    rotated, active = rotated_files(tmp_path / "records.jsonl")
    for synced in (rotated, tmp_path):  # the file, and the directory holding its new name
        threads = {t.split("_")[0] for ino, t in fsyncs.calls if ino == synced.stat().st_ino}
        assert threads == {HELPER}
    assert (active.stat().st_ino, threading.current_thread().name) in fsyncs.calls
    assert [(i, o, n, a, t.split("_")[0]) for i, o, n, a, t in advice] == [
        (rotated.stat().st_ino, 0, 0, os.POSIX_FADV_DONTNEED, HELPER)
    ]
    sink.close()


def test_a_failed_sync_of_a_rotated_file_is_logged_and_raised_at_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotated file that cannot be synced is reported; later records are still written."""
    Fsyncs(monkeypatch, helper_fails=True)
    sink = RotatingFileSink(tmp_path / "records.jsonl", max_bytes=1000, clock=Clock())
    sink.write_lines(lines(12))
    with capture_logs() as logs:
        sink.write_lines(lines(1, 12))  # rotates; the rotated file's sync fails meanwhile
        with pytest.raises(OSError, match="Input/output error"):
            sink.flush()
    assert [e["event"] for e in logs] == ["records.rotated_sync_failed"]
    sink.write_lines(lines(1, 13))
    sink.close()
    ids = [
        json.loads(x)["event"]["id"] for x in (tmp_path / "records.jsonl").read_text().splitlines()
    ]
    assert ids == ["e12", "e13"]


@pytest.mark.parametrize("done_to_it", ["moved", "deleted", "deleted with its directory"])
def test_an_active_file_moved_or_deleted_by_another_is_replaced(
    tmp_path: Path, done_to_it: str
) -> None:
    """Something else (logrotate, a hand) takes the active file: the next batch goes to a new
    file under the name, with one warning, and no sink error per batch."""
    path = tmp_path / "records" / "records.jsonl"
    sink = RotatingFileSink(path, clock=Clock())
    sink.write_lines(lines(2))
    if done_to_it == "moved":
        path.rename(tmp_path / "elsewhere.jsonl")
    elif done_to_it == "deleted":
        path.unlink()
    else:
        shutil.rmtree(path.parent)
    with capture_logs() as logs:
        sink.write_lines(lines(2, 2))
        sink.write_lines(lines(2, 4))
    assert [e["event"] for e in logs] == ["records.file_replaced"]
    sink.close()
    ids = [json.loads(x)["event"]["id"] for x in path.read_text().splitlines()]
    assert ids == ["e2", "e3", "e4", "e5"]
    if done_to_it == "moved":
        kept = (tmp_path / "elsewhere.jsonl").read_text().splitlines()
        assert [json.loads(x)["event"]["id"] for x in kept] == ["e0", "e1"]
    assert sink.rotations == 0


@pytest.mark.parametrize(
    ("when", "refused", "active_after"),
    [
        # The open file is still in place: the batch goes there, the next one rotates.
        ("rotating", ".records.jsonl.new", ["e13", "e14"]),
        # The open file is gone: that batch has nowhere to go and fails (the writer counts it).
        ("replacing a deleted file", "records.jsonl", ["e13", "e14"]),
    ],
)
def test_a_new_file_that_cannot_be_created_is_tried_again_next_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, refused: str,
    active_after: list[str],
) -> None:  # fmt: skip
    """A full disk refuses the new active file once; the sink goes on (it used to stop for
    good), and no batch is lost that the open file could still take."""
    path = tmp_path / "records.jsonl"
    sink = RotatingFileSink(path, max_bytes=1000, clock=Clock())
    sink.write_lines(lines(12))  # over max_bytes: the next batch rotates
    if when != "rotating":
        sink = RotatingFileSink(path, clock=Clock())
        path.unlink()
    real_open, refusals = os.open, [1]

    def full_disk_once(name: str, flags: int, mode: int = 0o777) -> int:
        if name == str(tmp_path / refused) and refusals[0]:
            refusals[0] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(name, flags, mode)

    monkeypatch.setattr("agent.writer.os.open", full_disk_once)
    with capture_logs() as logs:
        if when == "rotating":
            sink.write_lines(lines(1, 12))
        else:
            with pytest.raises(OSError, match="No space"):
                sink.write_lines(lines(1, 12))
        sink.write_lines(lines(1, 13))
        sink.write_lines(lines(1, 14))
    sink.close()
    ids = [json.loads(x)["event"]["id"] for x in path.read_text().splitlines()]
    assert ids == active_after
    failed = [e["event"] for e in logs if e["event"] == "records.rotation_failed"]
    assert len(failed) == (when == "rotating")
    if when == "rotating":
        (rotated,) = rotated_files(path)[:-1]
        assert json.loads(rotated.read_text().splitlines()[-1])["event"]["id"] == "e12"
    assert not (tmp_path / ".records.jsonl.new").exists()


def test_a_rotation_the_directory_refuses_keeps_writing_to_the_active_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records directory made read-only for the service: the rename is refused, the
    batch still goes into the open file (29 records were lost per rotation attempt before),
    the file made aside is removed, and the rotation happens once the directory allows it."""
    path = tmp_path / "records.jsonl"
    sink = RotatingFileSink(path, max_bytes=1000, clock=Clock())
    sink.write_lines(lines(12))
    real_rename, refusals = Path.rename, [2]

    def refused(self: Path, target: Path) -> Path:
        if self == path and refusals[0]:
            refusals[0] -= 1
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refused)
    with capture_logs() as logs:
        sink.write_lines(lines(1, 12))
        sink.write_lines(lines(1, 13))
        sink.write_lines(lines(1, 14))
    sink.close()
    assert [e["event"] for e in logs] == ["records.rotation_failed"]
    rotated, active = rotated_files(path)
    assert [json.loads(x)["event"]["id"] for x in rotated.read_text().splitlines()][-2:] == [
        "e12",
        "e13",
    ]
    assert [json.loads(x)["event"]["id"] for x in active.read_text().splitlines()] == ["e14"]
    assert not (tmp_path / ".records.jsonl.new").exists()


def test_time_rotation_at_window_boundary(tmp_path: Path) -> None:
    """A new UTC day starts a new file, also after a restart."""
    clock = Clock()
    path = tmp_path / "records.jsonl"
    sink = RotatingFileSink(path, max_bytes=0, clock=clock)
    sink.write_lines(lines(2))
    clock.now += 60
    sink.write_lines(lines(2))
    assert sink.rotations == 0
    clock.now += DAY
    sink.write_lines(lines(1))
    assert sink.rotations == 1
    sink.close()
    os.utime(path, (clock.now, clock.now))
    clock.now += DAY
    again = RotatingFileSink(path, max_bytes=0, clock=clock)
    again.write_lines(lines(1))
    assert again.rotations == 1
    again.close()
    assert len(rotated_files(path)) == 3


def test_retention_deletes_only_old_rotated_files(tmp_path: Path) -> None:
    """Rotated files older than retention_days go; newer ones and the active file stay."""
    clock = Clock()
    path = tmp_path / "records.jsonl"
    sink = RotatingFileSink(path, max_bytes=0, retention_days=30, clock=clock)
    for day in range(40):
        sink.write_lines(lines(1, day))
        os.utime(path, (clock.now, clock.now))
        clock.now += DAY
    sink.close()
    files = rotated_files(path)
    assert sink.deleted == 9
    assert len(files) == 31
    assert all(p.stat().st_mtime >= clock.now - 31 * DAY for p in files)


def test_chain_continues_across_rotation_and_restart(tmp_path: Path) -> None:
    """The chain spans rotated files and resumes after a restart; verify accepts the set."""
    path = tmp_path / "records.jsonl"
    chain = ChainSink(KEY, [RotatingFileSink(path, max_bytes=700)])
    for i in range(10):
        chain.write_lines(lines(2, 2 * i))
    chain.close()
    again = ChainSink(
        KEY, [RotatingFileSink(path, max_bytes=700)], head=resume_head(rotated_files(path))
    )
    again.write_lines(lines(5, 20))
    again.close()
    result = verify(rotated_files(path), KEY)
    assert result.ok, result.problem
    assert result.records == 25
    assert result.files > 3


def test_another_writers_files_are_not_this_writers_set(tmp_path: Path) -> None:
    """`records.proxy.jsonl`'s set leaves `records.proxy-2.*` alone: its chain would be
    resumed from them and its retention would delete them."""
    names = [
        "records.proxy.jsonl",
        "records.proxy-20261118T000000Z-0000.jsonl",
        "records.proxy-2.jsonl",
        "records.proxy-2-20261118T000000Z-0000.jsonl",
        "records.proxy-notes.jsonl",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in rotated_files(tmp_path / "records.proxy.jsonl")] == names[1::-1]
    old = T0 - 30 * DAY
    for name in names:
        os.utime(tmp_path / name, (old, old))
    RotatingFileSink(tmp_path / "records.proxy.jsonl", retention_days=7, clock=Clock())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:1] + names[2:])
