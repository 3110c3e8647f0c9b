"""Record files with size/time rotation and retention: a RecordSink for `RecordWriter`.

The active file keeps its name (`records.jsonl`); a full or old file is renamed to
`records-20261123T131800Z-0000.jsonl` (the counter orders a clash), so `ls` lists a
rotation set oldest first, and fsynced by a helper thread, with the directory: syncing
100 MB (or, on ext4, the directory) in the writer thread stalled it long enough to fill the
record queue on a busy DNS filter. `flush()` and `close()` wait for that sync (and raise its
error), so they still promise every record.

Files are created 0640 whatever the umask, and given to the reviewers' `group` when one is
configured. Rotated files older than `retention_days` (by modification time, i.e. their
newest record) are deleted at each rotation and on open.

An active file moved or deleted by something else (an external logrotate, a hand) is noticed
before the next batch: it is closed where it went, a new active file is started under the
name, and `records.file_replaced` is logged once; records keep going to the name.
"""

from __future__ import annotations

import grp
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

from agent.logs import get_logger
from agent.writer import JsonLinesFileSink, sync_and_close

__all__ = ["RotatingFileSink", "rotated_files"]

MODE = 0o640
DAY = 86_400
_Active = tuple[JsonLinesFileSink, int, int, tuple[int, int]]  # sink, size, window, (dev, ino)

_log = get_logger(__name__)


def rotated_files(active: str | os.PathLike[str]) -> list[Path]:
    """The rotated files of `active`, oldest first, then `active` itself if it exists.

    Only names `rotate` gives (`<stem>-<UTC time>-<counter><suffix>`): another writer's set
    (`records.proxy-2.jsonl` beside `records.proxy.jsonl`) is not this one's, whose chain
    it would otherwise resume and whose files its retention would delete.
    """
    p = Path(active)
    name = re.compile(re.escape(p.stem) + r"-\d{8}T\d{6}Z-\d{4}" + re.escape(p.suffix))
    files = sorted(f for f in p.parent.glob(f"{p.stem}-*{p.suffix}") if name.fullmatch(f.name))
    return [*files, p] if p.exists() else files


def _gid(group: str | None) -> int:
    if group is None:
        return -1
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"records.group: no such group {group!r}") from None


class RotatingFileSink:
    """JSON-lines file sink that rotates by size (`max_bytes`) and age (`max_seconds`).

    Age rotation is aligned: records in one file share a `max_seconds` window of UTC time
    (daily files with the default), also across restarts. 0 disables a limit.
    """

    def __init__(  # noqa: PLR0913 keyword-only settings with defaults
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 100_000_000,
        max_seconds: int = DAY,
        retention_days: int = 0,
        group: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._max_seconds = max_seconds
        self._retention = retention_days
        self._gid = _gid(group)
        self._clock = clock
        self.rotations = 0
        self.deleted = 0
        self._syncer: ThreadPoolExecutor | None = None  # fsyncs rotated files, made at need
        self._syncing: Future[None] | None = None  # the last rotated file's fsync
        self._rotation_failing = False  # logged once until a rotation works
        self._sink, self._size, self._window, self._ident = self._open()
        self._expire()

    def _bucket(self, t: float) -> int:
        return int(t // self._max_seconds) if self._max_seconds > 0 else 0

    def _open(self, path: Path | None = None) -> _Active:
        """The active file's sink, size, time window and (device, inode).

        At `path` if given: a new file made aside, renamed to the active name afterwards.
        """
        path = path or self.path
        path.parent.mkdir(parents=True, exist_ok=True)  # also after someone deleted it
        existed = path.exists()
        sink = JsonLinesFileSink(path, mode=MODE)
        st = sink.stat()
        if self._gid >= 0 and st.st_gid != self._gid:
            os.fchown(sink.fileno(), -1, self._gid)
            os.fchmod(sink.fileno(), MODE)  # chown may clear bits on some systems; keep 0640
        window = self._bucket(st.st_mtime if existed and st.st_size else self._clock())
        return sink, st.st_size, window, (st.st_dev, st.st_ino)

    def write_lines(self, lines: list[str]) -> None:
        """Append the batch, rotating first when the file is full or its window has passed.

        A new active file is started first if the name no longer leads to the open one;
        if it cannot be, the batch fails (it has nowhere to go). A rotation that fails
        changes nothing: the batch goes into the active file, and the next one tries again.
        """
        if not lines:
            return
        if self._replaced():
            self._reopen()  # raises if it cannot: the open file is gone, not a place to write
        elif self._size and (
            self._bucket(self._clock()) != self._window
            or (self._max_bytes > 0 and self._size >= self._max_bytes)
        ):
            try:
                self.rotate()
            except OSError as e:  # the open file is still in place: the batch goes there
                if not self._rotation_failing:
                    self._rotation_failing = True
                    _log.error("records.rotation_failed", path=str(self.path), error=str(e),
                               detail="records go on into the active file; tried again "
                               "with every batch")  # fmt: skip
        self._sink.write_lines(lines)
        self._size = self._sink.stat().st_size

    def _replaced(self) -> bool:
        """True when the active name is gone or names another file than the open one."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    def _reopen(self) -> None:
        """Start a new active file under the name; the open one is closed where it went."""
        self._switch(self._open(), self.path)
        _log.warning(
            "records.file_replaced",
            path=str(self.path),
            detail="the active records file was moved or deleted by something other than "
            "aupguard; a new one is started. Use records.rotate_bytes / rotate_seconds, not "
            "logrotate",
        )

    def rotate(self) -> Path:
        """Rename the active file with its UTC time and open a new one; the new name.

        The old file is fsynced and closed by a helper thread (one at a time: a rotation
        waits for the previous one's sync, which is the disk setting the pace).
        """
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        for n in range(10_000):  # the counter keeps names unique and in `ls` order
            target = self.path.with_name(f"{self.path.stem}-{stamp}-{n:04d}{self.path.suffix}")
            if not target.exists():
                break
        aside = self.path.with_name(f".{self.path.name}.new")
        fresh = self._open(aside)  # made aside first: if it cannot be, nothing has changed
        try:
            self.path.rename(target)
            aside.rename(self.path)
            fresh[0].path = str(self.path)
        except OSError:
            fresh[0].close()
            aside.unlink(missing_ok=True)
            raise
        self._switch(fresh, target)
        self._rotation_failing = False
        self.rotations += 1
        self._expire()
        return target

    def _switch(self, fresh: _Active, old: Path) -> None:
        """Make `fresh` (from `_open`) the active file; the old one is synced and closed.

        By the helper thread, which also syncs the directory of `old`, where it now is.
        """
        if self._syncing is not None:
            wait([self._syncing])  # its failure is logged by the task; flush/close raise it
        if self._syncer is None:
            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="aupguard-records-sync")
        self._syncing = self._syncer.submit(_sync_rotated, self._sink.detach(), old)
        self._sink, self._size, self._window, self._ident = fresh

    def _expire(self) -> None:
        """Delete rotated files whose newest record is older than the retention period."""
        if self._retention <= 0:
            return
        limit = self._clock() - self._retention * DAY
        for p in rotated_files(self.path)[:-1]:
            if p.stat().st_mtime < limit:
                p.unlink()
                self.deleted += 1

    def flush(self) -> None:
        """Fsync the active file, and wait for the last rotated file's fsync."""
        self._sink.flush()
        self._wait_for_sync()

    def close(self) -> None:
        """Fsync and close the active file, and wait for the last rotated file's fsync."""
        try:
            self._sink.close()
            self._wait_for_sync()
        finally:
            if self._syncer is not None:
                self._syncer.shutdown()

    def _wait_for_sync(self) -> None:
        """Wait for the last rotated file's fsync; its OSError is raised here."""
        pending, self._syncing = self._syncing, None
        if pending is not None:
            pending.result()


def _sync_rotated(fd: int, path: Path) -> None:
    """The helper thread's task: sync, uncache and close a rotated file; sync the directory.

    The rotated file is written once and read only by audits and reports: its pages leave
    the page cache once on disk, instead of crowding out the list index and other hot
    pages (a busy DNS filter writes ~80 MB of records a second). It also lets new writes
    reuse those pages: on a VM whose free memory goes back to the host, writing into fresh
    pages doubled the writer thread's cost per record after ~1 GB (bench_dns).
    The directory's fsync makes the new name and the new active file's entry durable. It is
    here, not in the writer thread, because on ext4 it waits for a journal commit that
    writes the rotated file's data: 10-180 ms, in which a busy DNS filter queued more
    records than the queue holds.
    """
    try:
        sync_and_close(fd, drop_cache=True)
        _fsync_dir(path.parent)
    except OSError:
        _log.exception("records.rotated_sync_failed", path=str(path))
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
