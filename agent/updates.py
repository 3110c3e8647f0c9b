"""`aupguard lists update`: fetch, validate and atomically swap downloaded category lists.

Layout under the lists dir (`lists.dir`, default `$STATE_DIRECTORY/lists`):
`releases/<stamp>/` holds one complete set (`<category>.txt`, `ut1/<category>/`, `.meta.json`)
and `current` is a symlink to the release in force; config `lists:` entries point below
`current/`. An update builds a new release next to it and swaps the symlink in one rename,
so readers see the old set or the new one, never a mix. A source that fails (download,
checksum, unsafe archive, parse, shrink/growth, never-block) keeps its last good copy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import ssl
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agent.cli import COMMANDS, cmd_lists, command
from agent.config import load_config
from agent.errors import ListRejected
from agent.gateway import forward_reload
from agent.lists import ListFormat, ListSource, parse_list

if TYPE_CHECKING:
    from agent.config import Config, ListsSection, ListUpdateSource

KEEP_RELEASES = 3
META = ".meta.json"


@dataclass(frozen=True, slots=True)
class Fetched:
    """A download: `body` None means 304 Not Modified."""

    body: bytes | None
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one source: updated, unchanged or refused (and why)."""

    name: str
    result: str
    detail: str = ""
    entries: int | None = None


def lists_dir(config: Config) -> Path:
    """Where downloaded lists live."""
    if config.lists.dir is not None:
        return config.lists.dir
    state = os.environ.get("STATE_DIRECTORY")
    base = Path(state.split(":")[0]) if state else Path.home() / ".local/state/aupguard"
    return base / "lists"


def target_name(src: ListUpdateSource) -> str:
    """The file or folder a source becomes inside a release."""
    return f"ut1/{src.category}" if src.format is ListFormat.UT1 else f"{src.category}.txt"


# --- fetching ------------------------------------------------------------------------------


def fetch(
    src: ListUpdateSource, meta: dict[str, Any], context: ssl.SSLContext, max_bytes: int
) -> Fetched:
    """Conditional GET (ETag / If-Modified-Since); plain HTTP only with a sha256 pin."""
    if src.url.startswith("http://") and not src.sha256:
        raise ListRejected(f"{src.url}: plain HTTP needs a `sha256` pin (or use HTTPS)")
    if not src.url.startswith(("https://", "http://")):
        raise ListRejected(f"{src.url}: expected an https:// or http:// URL")
    headers = {"User-Agent": "aupguard-lists-update"}
    if meta.get("url") == src.url and meta.get("etag"):
        headers["If-None-Match"] = meta["etag"]
    if meta.get("url") == src.url and meta.get("last_modified"):
        headers["If-Modified-Since"] = meta["last_modified"]
    request = urllib.request.Request(src.url, headers=headers)  # noqa: S310  (scheme checked)
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as resp:  # noqa: S310
            body = resp.read(max_bytes + 1)
            etag, modified = resp.headers.get("ETag"), resp.headers.get("Last-Modified")
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return Fetched(None)
        raise ListRejected(f"{src.url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        raise ListRejected(f"{src.url}: download failed: {e}") from e
    if len(body) > max_bytes:
        raise ListRejected(f"{src.url}: larger than lists.max_download_bytes ({max_bytes})")
    if src.sha256 and hashlib.sha256(body).hexdigest() != src.sha256.lower():
        raise ListRejected(f"{src.url}: sha256 does not match the configured pin")
    return Fetched(body, etag, modified)


# --- unpacking -----------------------------------------------------------------------------


def unpack_category(archive: bytes, category: str, dest: Path, limits: ListsSection) -> None:
    """Extract `<any>/<category>/{domains,urls}` from a UT1 tar.gz into `dest`, safely.

    The whole archive is refused on a member with an absolute path or `..`, on more than
    `max_archive_members` members or more than `max_download_bytes` unpacked.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            wanted = _safe_members(tar, category, limits)
            if not wanted:
                raise ListRejected(f"archive has no {category}/domains or {category}/urls")
            dest.mkdir(parents=True, exist_ok=True)
            for member in wanted:
                member.name = PurePosixPath(member.name).name
                tar.extract(member, dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ListRejected(f"unreadable archive: {e}") from e


def _safe_members(
    tar: tarfile.TarFile, category: str, limits: ListsSection
) -> list[tarfile.TarInfo]:
    wanted: list[tarfile.TarInfo] = []
    total = 0
    for count, member in enumerate(tar, 1):
        if count > limits.max_archive_members:
            raise ListRejected(f"archive has more than {limits.max_archive_members} members")
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise ListRejected(f"archive member {member.name!r} escapes the target folder")
        total += member.size
        if total > limits.max_download_bytes:
            raise ListRejected(f"archive unpacks to more than {limits.max_download_bytes} bytes")
        parts = path.parts
        if len(parts) >= 2 and parts[-2] == category and parts[-1] in ("domains", "urls"):
            if not member.isfile():
                raise ListRejected(f"archive member {member.name!r} is not a regular file")
            wanted.append(member)
    return wanted


# --- validation ----------------------------------------------------------------------------


def protected_hosts(config: Config) -> list[str]:
    """Hosts and suffixes no downloaded entry may cover: never_block and protected_suffixes."""
    hosts = [n.entry.split("/", 1)[0].lower().strip(".") for n in config.never_block]
    return [*hosts, *(s.lower().strip(".") for s in config.lists.protected_suffixes)]


def never_block_conflicts(hosts: list[tuple[str, int]], protected: list[str]) -> list[str]:
    """Entries equal to, above or below a protected host, as `line: entry (protects X)`."""
    found = []
    for host, line in hosts:
        for p in protected:
            if host == p or p.endswith("." + host) or host.endswith("." + p):
                found.append(f"line {line}: {host} (covers never-block {p})")
                break
    return found


def validate(path: Path, src: ListUpdateSource, previous: int | None, config: Config) -> int:
    """Parse the staged list and apply the size and never-block checks; its entry count."""
    label = f"{src.category} from {src.url}"
    parsed = parse_list(
        ListSource(src.category, path, src.format, label=label), max_bad=config.lists.max_bad_share
    )
    entries = len(parsed.hosts) + len(parsed.urls)
    limits = config.lists
    if previous and entries < previous * (1 - limits.max_shrink):
        raise ListRejected(
            f"{label}: shrank from {previous} to {entries} entries "
            f"(more than lists.max_shrink={limits.max_shrink:.0%})"
        )
    if (
        previous
        and entries > previous * limits.max_growth
        and entries - previous > limits.growth_slack
    ):
        raise ListRejected(
            f"{label}: grew from {previous} to {entries} entries "
            f"(more than lists.max_growth={limits.max_growth}x)"
        )
    conflicts = never_block_conflicts(parsed.hosts, protected_hosts(config))
    if conflicts:
        raise ListRejected(
            f"{label}: {len(conflicts)} entries would block never-block hosts: "
            + "; ".join(conflicts[:5])
        )
    return entries


# --- one update run ------------------------------------------------------------------------


class _Run:
    """One `lists update`: the current release, the staging release and per-source results."""

    def __init__(self, config: Config, context: ssl.SSLContext) -> None:
        self.config = config
        self.context = context
        self.root = lists_dir(config)
        self.current = self.root / "current"
        self.old_meta: dict[str, Any] = _read_meta(self.current / META)
        self.meta: dict[str, Any] = dict(self.old_meta)
        ns = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9))
        self.staging = self.root / "releases" / f"{stamp}.{ns % 10**9:09d}"
        self.downloads: dict[str, Fetched] = {}

    def source(self, src: ListUpdateSource) -> Outcome:
        """Fetch, stage and validate one source; on failure keep its last good copy."""
        name = target_name(src)
        old = self.old_meta.get(name, {})
        try:
            fetched = self._download(src, old)
            if fetched.body is None and (self.current / name).exists():
                self._keep(name)
                return Outcome(name, "unchanged", "not modified", old.get("entries"))
            if fetched.body is None:
                fetched = self._download(src, {})
            entries = self._stage(src, name, fetched.body or b"", old.get("entries"))
        except ListRejected as e:
            self._discard(name)
            self._keep(name)
            return Outcome(name, "refused", str(e), old.get("entries"))
        self.meta[name] = {
            "url": src.url,
            "etag": fetched.etag,
            "last_modified": fetched.last_modified,
            "entries": entries,
            "updated": time.time(),
        }
        return Outcome(name, "updated", f"{entries} entries", entries)

    def _download(self, src: ListUpdateSource, meta: dict[str, Any]) -> Fetched:
        key = f"{src.url} {bool(meta)}"
        if key not in self.downloads:
            limit = self.config.lists.max_download_bytes
            self.downloads[key] = fetch(src, meta, self.context, limit)
        return self.downloads[key]

    def _stage(self, src: ListUpdateSource, name: str, body: bytes, previous: int | None) -> int:
        path = self.staging / name
        if src.format is ListFormat.UT1:
            unpack_category(body, src.category, path, self.config.lists)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
        return validate(path, src, previous, self.config)

    def _keep(self, name: str) -> None:
        """Carry the last good copy of `name` into the new release."""
        old = self.current / name
        new = self.staging / name
        if old.is_dir():
            shutil.copytree(old, new, dirs_exist_ok=True)
        elif old.is_file():
            new.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(old, new)

    def _discard(self, name: str) -> None:
        path = self.staging / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def commit(self) -> None:
        """Write the metadata and point `current` at the new release in one rename."""
        (self.staging / META).write_text(json.dumps(self.meta, indent=2), encoding="utf-8")
        link = self.root / f".current-{os.getpid()}"
        link.unlink(missing_ok=True)
        link.symlink_to(self.staging.relative_to(self.root))
        link.replace(self.current)
        releases = sorted((self.root / "releases").iterdir())
        for stale in releases[:-KEEP_RELEASES]:
            if stale != self.staging:
                shutil.rmtree(stale, ignore_errors=True)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_lists(config: Config, context: ssl.SSLContext | None = None) -> list[Outcome]:
    """Update every configured source; swap in a new release when anything changed."""
    run = _Run(config, context or ssl.create_default_context())
    run.staging.mkdir(parents=True)
    outcomes = [run.source(src) for src in config.lists.sources]
    if any(o.result == "updated" for o in outcomes):
        run.commit()
    else:
        shutil.rmtree(run.staging, ignore_errors=True)
    return outcomes


# --- the command ---------------------------------------------------------------------------


def _lists_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["stats", "update"],
        help="stats: entries per category and bad lines; update: fetch configured sources",
    )
    p.add_argument("--config", type=Path, default=None, help="baseline policy file")
    p.add_argument("--ca-file", type=Path, default=None, help="CA bundle for HTTPS sources")


_STATS_HELP = COMMANDS["lists"][2] if "lists" in COMMANDS else "category lists"


@command("lists", f"{_STATS_HELP}; `lists update` fetches sources", _lists_args)
def cmd_lists_update(args: argparse.Namespace) -> int:
    """`lists stats` as before; `lists update` fetches, validates, swaps and signals the gateway.

    Exit 1 when any source was refused (its last good copy stays in force).
    """
    if args.action == "stats":
        return cmd_lists(args)
    config = load_config(args.config)
    if not config.lists.sources:
        sys.stdout.write("no lists.sources configured: nothing to update\n")
        return 0
    context = ssl.create_default_context(cafile=str(args.ca_file) if args.ca_file else None)
    outcomes = update_lists(config, context)
    for o in outcomes:
        sys.stdout.write(f"{o.result:<9} {o.name}: {o.detail}\n")
    if any(o.result == "updated" for o in outcomes):
        pid = forward_reload()
        sys.stdout.write(
            f"signalled the gateway (pid {pid}) to reload\n"
            if pid
            else "gateway not running: it loads the new lists when it starts\n"
        )
    return 1 if any(o.result == "refused" for o in outcomes) else 0
