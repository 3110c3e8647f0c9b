r"""The compiled category index: one memory-mapped file every process shares.

Index file (one file, native byte order, replaced atomically; every process maps it):

    preamble  magic b"AUPGIDX\\0", u32 version, u32 0x01020304 (byte-order check),
              u64 meta_off, meta_len, trie_off, trie_len, offsets_off, list_ids_off, lines_off,
              records
    meta      JSON: fingerprint, lists_version, lists [[category, file label]...] (index =
              list id), url_rules [[list id, host, path, line]...], stats
    trie      marisa-trie of char-reversed names plus a dot ("moc.elpmaxe."): one `prefixes()`
              call returns every listed suffix of a host on label boundaries
    offsets   u32 x (keys + 1): the records of trie key id k are offsets[k] .. offsets[k+1]
    list_ids  u16 x records, lines u32 x records: which list and line holds the entry

`load_index` reuses a build whose fingerprint (sources, sizes, mtimes) is unchanged, so a
restart is ready in milliseconds; a new build is written aside and swapped in atomically.
`lists_version` hashes what the lists say (categories, formats and file contents), so every
decision record can name the lists it was decided on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mmap
import os
import struct
import time
from array import array
from dataclasses import asdict, dataclass, field
from itertools import accumulate, repeat
from typing import TYPE_CHECKING, Any

import marisa_trie

from agent.lists import ListError, ListFormat, ListSource, ParsedList, parse_list
from agent.model import Match, MatchKind

if TYPE_CHECKING:
    from collections.abc import Buffer, Callable, Iterator, Sequence
    from pathlib import Path

FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("=8sII8Q")
_MAGIC = b"AUPGIDX\0"
_BOM = 0x01020304
_KEPT_ERRORS = 20  # per file, in the index header
_HOST = MatchKind.HOST


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What a build found: entries per category, bad lines per file (with the first errors)."""

    entries: dict[str, int]
    bad_lines: dict[str, int]
    errors: dict[str, tuple[ListError, ...]]
    unsupported: dict[str, int]
    domains: int
    url_rules: int
    seconds: float

    def describe(self) -> str:
        """Lines for `aupguard lists stats`."""
        head = f"{self.domains} distinct names, {self.url_rules} URL rules, {self.seconds:.2f} s"
        out = [head]
        out += [f"{cat}: {n} entries" for cat, n in sorted(self.entries.items())]
        for label, n in sorted(self.bad_lines.items()):
            out.append(f"{label}: {n} bad lines")
            out += [f"  {e}" for e in self.errors.get(label, ())]
        out += [f"{label}: {n} unsupported rules" for label, n in sorted(self.unsupported.items())]
        return "\n".join(out)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexStats:
        """Inverse of `dataclasses.asdict` after a JSON round trip."""
        errors = {k: tuple(ListError(**e) for e in v) for k, v in data["errors"].items()}
        return cls(**{**data, "errors": errors})


@dataclass(slots=True)
class _Builder:
    """Collects parsed lists into key/record arrays, then writes the index file."""

    keys: list[str] = field(default_factory=list)
    list_ids: array[int] = field(default_factory=lambda: array("H"))
    lines: array[int] = field(default_factory=lambda: array("I"))
    lists: list[tuple[str, str]] = field(default_factory=list)
    url_rules: list[tuple[int, str, str, int]] = field(default_factory=list)
    entries: dict[str, int] = field(default_factory=dict)

    def list_id(self, category: str, label: str) -> int:
        """Register a list file; ids are u16."""
        self.lists.append((category, label))
        if len(self.lists) > 0xFFFF:
            raise ValueError("more than 65535 list files")
        return len(self.lists) - 1

    def add(self, category: str, parsed: ParsedList) -> None:
        """Add one parsed source (hosts to the trie, URL rules to the header)."""
        lid = self.list_id(category, parsed.host_label)
        self.keys += [name[::-1] + "." for name, _ in parsed.hosts]
        self.lines.extend(line for _, line in parsed.hosts)
        self.list_ids.extend(repeat(lid, len(parsed.hosts)))
        uid = self.list_id(category, parsed.url_label) if parsed.urls else lid
        self.url_rules += [(uid, host, path, line) for host, path, line in parsed.urls]
        n = len(parsed.hosts) + len(parsed.urls)
        self.entries[category] = self.entries.get(category, 0) + n

    def write(self, path: Path, meta: dict[str, Any], start: float) -> None:
        """Build the trie, group records by key id and write the file atomically."""
        trie = marisa_trie.Trie(self.keys, num_tries=1)  # 1 level: ~2x faster, +3 B/key
        ids = array("I", map(trie.key_id, self.keys))
        self.keys.clear()
        counts = array("I", bytes(4 * (len(trie) + 1)))
        for i in ids:
            counts[i + 1] += 1
        offsets = array("I", accumulate(counts))
        pos, list_ids, lines = (
            array("I", offsets),
            array("H", self.list_ids),
            array("I", self.lines),
        )
        for r, i in enumerate(ids):
            p = pos[i]
            pos[i] = p + 1
            list_ids[p], lines[p] = self.list_ids[r], self.lines[r]
        meta["stats"] |= {"domains": len(trie), "seconds": round(time.perf_counter() - start, 3)}
        meta |= {"lists": self.lists, "url_rules": self.url_rules}
        _write_file(path, json.dumps(meta).encode(), trie.tobytes(), (offsets, list_ids, lines))


def _write_file(path: Path, meta: bytes, trie: bytes, arrays: tuple[array[int], ...]) -> None:
    """Write preamble, meta, trie and arrays (8-aligned) to a temp file, then `os.replace`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("wb") as f:
        f.write(bytes(_PREAMBLE.size))
        offs = []
        parts: list[Buffer] = [meta, trie, *(memoryview(a) for a in arrays)]
        for part in parts:
            f.write(bytes(-f.tell() % 8))
            offs.append(f.tell())
            f.write(part)
        meta_off, trie_off, off_off, ids_off, lines_off = offs
        header = (meta_off, len(meta), trie_off, len(trie), off_off, ids_off, lines_off)
        f.seek(0)
        f.write(_PREAMBLE.pack(_MAGIC, FORMAT_VERSION, _BOM, *header, len(arrays[1])))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def build_index(
    sources: Sequence[ListSource], path: Path, *, max_bad: float = 0.10, max_bad_abs: int = 20
) -> IndexStats:
    """Parse every source and write the index file at `path` atomically; may raise ListRejected."""
    start = time.perf_counter()
    fp = fingerprint(sources, max_bad=max_bad, max_bad_abs=max_bad_abs)
    b = _Builder()
    bad: dict[str, int] = {}
    errors: dict[str, list[dict[str, Any]]] = {}
    unsupported: dict[str, int] = {}
    for source in sources:
        parsed = parse_list(source, max_bad=max_bad, max_bad_abs=max_bad_abs)
        b.add(source.category, parsed)
        bad |= {label: n for label, n in parsed.bad_lines.items() if n}
        for e in parsed.errors:
            if len(errors.setdefault(e.label, [])) < _KEPT_ERRORS:
                errors[e.label].append(asdict(e))
        for e in parsed.unsupported:
            unsupported[e.label] = unsupported.get(e.label, 0) + 1
    stats = {"entries": b.entries, "bad_lines": bad, "unsupported": unsupported,
             "errors": errors, "url_rules": len(b.url_rules)}  # fmt: skip
    meta: dict[str, Any] = {"fingerprint": fp, "lists_version": lists_version(sources),
                            "stats": stats}  # fmt: skip
    b.write(path, meta, start)
    return IndexStats.from_json(meta["stats"])


def source_files(source: ListSource) -> list[Path]:
    """The files a source reads: a UT1 folder's `domains` and `urls`, else the one file."""
    if source.format is ListFormat.UT1:
        return [source.path / "domains", source.path / "urls"]
    return [source.path]


def lists_version(sources: Sequence[ListSource]) -> str:
    """A hash of what the lists say: each source's category and format, and its files' bytes.

    Not of paths, sizes or mtimes (the fingerprint's business): the same lists copied
    elsewhere have the same version, and a list rewritten in place does not.
    """
    h = hashlib.sha256()
    for s in sources:
        h.update(f"\0{s.category}\0{s.format}".encode())
        for f in source_files(s):
            try:
                with f.open("rb") as data:
                    h.update(b"\0+" + hashlib.file_digest(data, "sha256").digest())
            except OSError:
                h.update(b"\0-")
    return "sha256:" + h.hexdigest()[:16]


def fingerprint(sources: Sequence[ListSource], **params: object) -> str:
    """Hash format version, parse parameters and each list file's size, mtime and inode."""
    h = hashlib.sha256(f"{FORMAT_VERSION}\0{sorted(params.items())}".encode())
    for s in sources:
        h.update(f"\0{s.category}\0{s.format}\0{s.label}\0{s.path.resolve()}".encode())
        for f in source_files(s):
            try:
                st = f.stat()
            except OSError:
                h.update(b"\0-")
            else:
                h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
    return h.hexdigest()


class CompiledIndex:
    """A memory-mapped index file: host suffix lookups plus the URL rules and stats it carries."""

    __slots__ = ("_cats", "_labels", "_lines", "_list_ids", "_mm", "_offsets", "_trie",
                 "fingerprint", "lists", "lists_version", "path", "prefixes", "stats",
                 "url_rules")  # fmt: skip

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mm) < _PREAMBLE.size:
            raise ValueError(f"{path}: truncated index file")
        magic, version, bom, *h = _PREAMBLE.unpack_from(self._mm)
        if magic != _MAGIC or version != FORMAT_VERSION or bom != _BOM:
            raise ValueError(f"{path}: not an index file of version {FORMAT_VERSION}")
        meta_off, meta_len, trie_off, trie_len, off_off, ids_off, lines_off, records = h
        if lines_off + 4 * records > len(self._mm) or trie_off + trie_len > off_off:
            raise ValueError(f"{path}: truncated index file")
        view = memoryview(self._mm)
        meta = json.loads(view[meta_off : meta_off + meta_len].tobytes())
        self._trie = marisa_trie.Trie()
        try:
            self._trie.map(view[trie_off : trie_off + trie_len])
        except RuntimeError as e:
            raise ValueError(f"{path}: bad trie: {e}") from None
        # Listed keys that are label-boundary prefixes of `host[::-1] + "."` (a C method).
        self.prefixes: Callable[[str], list[str]] = self._trie.prefixes
        keys = len(self._trie)
        self._offsets = view[off_off : off_off + 4 * (keys + 1)].cast("I")
        self._list_ids = view[ids_off : ids_off + 2 * records].cast("H")
        self._lines = view[lines_off : lines_off + 4 * records].cast("I")
        if self._offsets[keys] != records:
            raise ValueError(f"{path}: inconsistent index file")
        self.path, self.fingerprint = path, str(meta["fingerprint"])
        # None in a build from before lists versions: `load_index` rebuilds it, and only
        # `open_latest` (the last good build) still opens one.
        self.lists_version: str | None = meta.get("lists_version")
        self.lists: tuple[tuple[str, str], ...] = tuple(map(tuple, meta["lists"]))
        self._cats = tuple(cat for cat, _ in self.lists)
        self._labels = tuple(label for _, label in self.lists)
        self.url_rules: tuple[tuple[int, str, str, int], ...] = tuple(map(tuple, meta["url_rules"]))
        self.stats = IndexStats.from_json(meta["stats"])

    @property
    def categories(self) -> tuple[str, ...]:
        """Sorted category names the index was built from."""
        return tuple(sorted(set(self._cats)))

    def __len__(self) -> int:
        return len(self._trie)

    def host_matches(self, host: str) -> list[Match]:
        """Every list entry that is `host` or a parent domain of it (one per list file)."""
        return self.matches_for(self.prefixes(host[::-1] + "."))

    def matches_for(self, keys: list[str]) -> list[Match]:
        """Matches for keys from `prefixes`.

        Not cached on purpose: cached matches outlive the call and make the collector's full
        passes expensive (4 ms pauses at p99.9 with a 16k-entry cache after `gc.freeze()`).
        """
        out: list[Match] = []
        for key in keys:
            out += self._entry_matches(key)
        return out

    def _entry_matches(self, key: str) -> list[Match]:
        """One match per list file holding the entry (its first line in that file)."""
        kid = self._trie.key_id(key)
        start, end = self._offsets[kid], self._offsets[kid + 1]
        entry = key[-2::-1]
        rank = (0, entry.count(".") + 1, 0)
        out, seen = [], set()
        for r in range(start, end):
            lid = self._list_ids[r]
            if end - start == 1 or lid not in seen:
                seen.add(lid)
                source = f"{self._labels[lid]}:{self._lines[r]}"
                out.append(Match(self._cats[lid], entry, source, _HOST, rank))
        return out

    def list_url_rules(self) -> Iterator[tuple[str | None, str, str, str]]:
        """URL rules as (category, host, path, source)."""
        for lid, host, path, line in self.url_rules:
            yield self._cats[lid], host, path, f"{self._labels[lid]}:{line}"


def open_index(path: Path) -> CompiledIndex:
    """Map an index file (milliseconds; the OS pages it in as lookups touch it)."""
    return CompiledIndex(path)


def load_index(
    sources: Sequence[ListSource], cache_dir: Path, *, max_bad: float = 0.10, max_bad_abs: int = 20
) -> CompiledIndex:
    """Open the cached index for these exact list files, building it (under a lock) if absent.

    Raises ListRejected when a changed list is rejected; `open_latest` gives the last good one.
    """
    fp = fingerprint(sources, max_bad=max_bad, max_bad_abs=max_bad_abs)
    path = cache_dir / f"index-{fp[:24]}.aupidx"
    index = _open_current(path)
    if index is not None:
        with contextlib.suppress(OSError):
            os.utime(path)  # in use: the newest builds are the ones kept
        return index
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same index
        index = _open_current(path)
        if index is None:
            build_index(sources, path, max_bad=max_bad, max_bad_abs=max_bad_abs)
            index = open_index(path)
        _prune(cache_dir, keep=path)
    return index


def _open_current(path: Path) -> CompiledIndex | None:
    """The build at `path`, if there is one and it names its lists' version (else rebuilt)."""
    try:
        index = open_index(path)
    except (OSError, ValueError):
        return None
    return index if index.lists_version is not None else None


KEEP_BUILDS = 4


def _prune(cache_dir: Path, keep: Path) -> None:
    """Delete all but the newest `KEEP_BUILDS` builds.

    Another config sharing the cache dir (a what-if `aupguard classify --config`, a second
    service) must not force a rebuild at the next restart. Processes that mapped a deleted
    file keep their mapping.
    """
    for old in [b for b in _builds_newest_first(cache_dir) if b != keep][KEEP_BUILDS - 1 :]:
        old.unlink(missing_ok=True)


def _builds_newest_first(cache_dir: Path) -> list[Path]:
    """The index builds in `cache_dir`, most recently written first (vanished ones skipped)."""
    built = []
    for path in cache_dir.glob("index-*.aupidx"):
        try:
            built.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue
    return [path for _, path in sorted(built, reverse=True)]


def open_latest(cache_dir: Path) -> CompiledIndex | None:
    """The most recently built index in `cache_dir` (the last good one after a rejected build)."""
    for path in _builds_newest_first(cache_dir):
        try:
            return open_index(path)
        except (OSError, ValueError):
            continue
    return None
