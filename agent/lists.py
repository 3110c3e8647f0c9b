"""Category list parsing (domain, hosts, AdBlock, UT1) with line positions and an error budget.

Entries are normalised once here (lower case, no trailing dot, IDNs as `xn--`, IP literals in
canonical form) so the index and the classifier compare plain strings. Decisions on odd lines:

- `*.example.com` and `.example.com` mean what `example.com` means: the domain and its subdomains.
- `https://example.com` (a scheme and no path) is accepted as the host in every format; a line
  with a path is a URL rule in `auto` lists and UT1 `urls` files, and a bad line elsewhere.
- URL rules keep the path and query (the request target, as mitmproxy's `request.path` has it),
  drop the fragment (clients never send it) and are compared case-sensitively, like UT1.
- AdBlock: only `||domain^` (and bare domains) block; `@@` exceptions, `$options`, cosmetic and
  other rules are reported as unsupported, never applied, and do not count against the budget.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import idna

from agent.errors import ListRejected

if TYPE_CHECKING:
    from pathlib import Path

MAX_KEPT_ERRORS = 1000  # errors kept per file for reports; all bad lines are counted
INVALID = "not a valid domain pattern"
_LOCAL_NAMES = frozenset(
    (
        "localhost",
        "localhost.localdomain",
        "localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    )
)
# A clean name whose last label cannot be read as a number (so it is not an IPv4 form).
CLEAN_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z_-][a-z0-9_-]{0,62}")
_LABELS = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_INLINE_COMMENT = re.compile(r"\s#")
_ADBLOCK_HINT = re.compile(r"\|\||@@|\||/|.*(?:##|#[@?$]#|\$)")
_ADBLOCK_SYNTAX = re.compile(r"[|^$*/@#!\[\]]")
_ADBLOCK_HEADER = re.compile(r"\[(?:adblock|ublock|adguard)", re.IGNORECASE)
_PCT = re.compile(r"%([0-9a-fA-F]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class ListFormat(enum.StrEnum):
    """How a list file is written; `auto` recognises each line's syntax on its own."""

    AUTO = "auto"
    DOMAINS = "domains"
    HOSTS = "hosts"
    ADBLOCK = "adblock"
    UT1 = "ut1"


@dataclass(frozen=True, slots=True)
class ListSource:
    """One category list; for `ut1` the path is a category folder with `domains` and/or `urls`."""

    category: str
    path: Path
    format: ListFormat = ListFormat.AUTO
    label: str = ""  # how messages name the list, e.g. `blocklists/webmail.txt`

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", str(self.path))


@dataclass(frozen=True, slots=True)
class ListError:
    """A line that was not applied: `blocklists/gambling.txt:1207: '*bet..com': not a valid ...`."""

    label: str
    line: int
    text: str
    why: str

    def __str__(self) -> str:
        text = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"{self.label}:{self.line}: {text!r}: {self.why}"


@dataclass(slots=True)
class ParsedList:
    """Entries of one source with their line numbers; `host_label`/`url_label` name their files."""

    label: str
    host_label: str
    url_label: str
    hosts: list[tuple[str, int]] = field(default_factory=list)
    urls: list[tuple[str, str, int]] = field(default_factory=list)
    errors: list[ListError] = field(default_factory=list)  # at most MAX_KEPT_ERRORS per file
    unsupported: list[ListError] = field(default_factory=list)  # valid rules we do not apply
    bad_lines: dict[str, int] = field(default_factory=dict)  # per file label, all counted
    lines: int = 0


class _UnsupportedError(ValueError):
    """A well-formed rule of a kind this agent does not apply."""


def normalize_domain(text: str) -> str:
    """Return a list entry in index form (IDN as `xn--`, IPs canonical); ValueError if invalid."""
    if len(text) <= 253 and CLEAN_NAME.fullmatch(text):
        return text
    name = text.lower() if text.isascii() else _to_ascii(text)
    name = name.removesuffix(".")
    if ":" in name or _NUMBER.fullmatch(name.rpartition(".")[2]):
        return _ip_literal(name)
    if len(name) > 253:
        raise ValueError(f"{INVALID}: longer than 253 bytes")
    if not _LABELS.fullmatch(name):
        if any(len(label) > 63 for label in name.split(".")):
            raise ValueError(f"{INVALID}: a label is longer than 63 bytes")
        raise ValueError(INVALID)
    return name


@functools.lru_cache(maxsize=4096)  # IDNA costs tens of us; IDN hosts repeat in traffic
def _to_ascii(text: str) -> str:
    """UTS #46 mapping, then IDNA2008 per label (IDNA2003 for what 2008 refuses, e.g. emoji)."""
    try:
        mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
    except idna.IDNAError as e:
        raise ValueError(f"{INVALID}: {e}") from None
    out = []
    for label in mapped.split("."):
        if label.isascii():
            out.append(label)
            continue
        try:
            out.append(idna.alabel(label).decode("ascii"))
        except idna.IDNAError:
            try:
                out.append(label.encode("idna").decode("ascii"))
            except UnicodeError as e:
                raise ValueError(f"{INVALID}: {e}") from None
    return ".".join(out)


def _ip_literal(name: str) -> str:
    """Canonical text of an IPv6 literal or an IPv4 address in any form a browser accepts."""
    if ":" in name:
        try:
            v6 = ipaddress.IPv6Address(name.removeprefix("[").removesuffix("]"))
        except ValueError:
            raise ValueError(f"{INVALID} or IPv6 address") from None
        return str(v6.ipv4_mapped or v6)  # ::ffff:1.2.3.4 reaches 1.2.3.4
    parts = name.split(".")
    if len(parts) > 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        raise ValueError("not a valid IPv4 address")
    nums = [_ipv4_number(p) for p in parts]
    last = nums.pop()
    if any(n > 255 for n in nums) or last >= 256 ** (4 - len(nums)):
        raise ValueError("not a valid IPv4 address")
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(nums)) + last
    return str(ipaddress.IPv4Address(value))


def _ipv4_number(part: str) -> int:
    """One part of a WHATWG IPv4 host: `0x` hex, leading-zero octal or decimal."""
    if part[:2] in {"0x", "0X"}:
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        if part.strip("01234567"):
            raise ValueError("not a valid IPv4 address")
        return int(part, 8)
    return int(part)


def normalize_path(path: str) -> str:
    """Decode percent-escapes of unreserved characters, upper-case the others (RFC 3986 6.2.2)."""
    if "%" not in path:
        return path

    def fix(m: re.Match[str]) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else "%" + m.group(1).upper()

    return _PCT.sub(fix, path)


def parse_list(source: ListSource, *, max_bad: float = 0.10, max_bad_abs: int = 20) -> ParsedList:
    """Parse one source; ListRejected when it is unreadable or over its error budget.

    A file may have `max(max_bad_abs, max_bad * entry lines)` bad lines.
    """
    if source.format is not ListFormat.UT1:
        out = ParsedList(source.label, source.label, source.label)
        _parse_file(source.path, source.format, out, source.label, (max_bad, max_bad_abs))
        return out
    if not source.path.is_dir():
        raise ListRejected(f"{source.label}: not a UT1 category folder (no such directory)")
    out = ParsedList(source.label, f"{source.label}/domains", f"{source.label}/urls")
    for name, fmt in (("domains", ListFormat.DOMAINS), ("urls", None)):
        if (source.path / name).exists():
            label = f"{source.label}/{name}"
            _parse_file(source.path / name, fmt, out, label, (max_bad, max_bad_abs))
    return out


def _parse_file(
    path: Path, fmt: ListFormat | None, out: ParsedList, label: str, budget: tuple[float, int]
) -> None:
    """Append one file's entries to `out`; `fmt` None reads UT1 `urls` lines."""
    fast, hosts = CLEAN_NAME.fullmatch, out.hosts
    bad, skipped, lineno, first_error = 0, 0, 0, len(out.errors)
    try:
        with path.open(encoding="utf-8", errors="surrogateescape") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if fmt is not None and len(line) <= 253 and fast(line):
                    hosts.append((line, lineno))
                    continue
                try:
                    if not _parse_slow(line, fmt, lineno, out):
                        skipped += 1
                except _UnsupportedError as e:
                    out.unsupported.append(ListError(label, lineno, line, str(e)))
                except ValueError as e:
                    bad += 1
                    if bad <= MAX_KEPT_ERRORS:
                        out.errors.append(ListError(label, lineno, line, str(e)))
    except OSError as e:
        raise ListRejected(f"{label}: cannot read: {e.strerror or e}") from e
    out.lines += lineno
    out.bad_lines[label] = bad
    allowed = max(budget[1], int(budget[0] * (lineno - skipped)))
    if bad > allowed:
        first = "; ".join(str(e) for e in out.errors[first_error : first_error + 3])
        msg = f"{label}: {bad} bad lines of {lineno - skipped} entries (budget {allowed}): {first}"
        raise ListRejected(msg)


def _parse_slow(line: str, fmt: ListFormat | None, lineno: int, out: ParsedList) -> bool:
    """Parse a line the fast path did not take; False for blanks, comments and local names."""
    text = _strip_comment(line, fmt)
    if not text:
        return False
    if fmt is ListFormat.ADBLOCK or (fmt is ListFormat.AUTO and _ADBLOCK_HINT.match(text)):
        out.hosts.append((_adblock_rule(text), lineno))
        return True
    words = text.split()
    if fmt is None or (fmt is ListFormat.AUTO and "/" in text and len(words) == 1):
        host, path = parse_entry(text.strip())
        if path is None:
            out.hosts.append((host, lineno))
        else:
            out.urls.append((host, path, lineno))
        return True
    if fmt in {ListFormat.HOSTS, ListFormat.AUTO} and (len(words) > 1 or fmt is ListFormat.HOSTS):
        names = _hosts_line(words, fmt)
        out.hosts.extend((name, lineno) for name in names)
        return bool(names)
    if len(words) > 1:
        raise ValueError("several words: expected one domain per line")
    out.hosts.append((_domain_entry(text), lineno))
    return True


def _strip_comment(line: str, fmt: ListFormat | None) -> str:
    """Drop `#` comments (and `!` comments and headers where AdBlock syntax is allowed)."""
    if not line or line[0] == "#":
        return ""
    if fmt in {ListFormat.ADBLOCK, ListFormat.AUTO} and (
        line[0] == "!" or _ADBLOCK_HEADER.match(line)
    ):
        return ""
    m = _INLINE_COMMENT.search(line)
    return line[: m.start()].rstrip() if m else line


def _domain_entry(text: str) -> str:
    """Normalise a domain line, dropping a wildcard prefix and a path-less URL scheme."""
    if m := _SCHEME.match(text):
        text, _, path = text[m.end() :].partition("/")
        if path:
            raise ValueError("a URL with a path: expected a domain")
    elif "/" in text:
        raise ValueError("a URL with a path: expected a domain")
    if text.startswith("*."):
        text = text[2:]
    elif text.startswith("."):
        text = text[1:]
    return normalize_domain(text)


def parse_entry(text: str) -> tuple[str, str | None]:
    """Parse `host/path` (scheme optional) or a domain -> (host, path or None); ValueError if bad.

    Used for URL-list lines and config entries (never-block); the path keeps its query.
    """
    if m := _SCHEME.match(text):
        text = text[m.end() :]
    host, slash, path = text.partition("/")
    if not slash:
        return _domain_entry(host), None
    return normalize_domain(host), normalize_path("/" + path.partition("#")[0])


def _adblock_rule(text: str) -> str:
    """`||domain^` -> domain; everything else AdBlock can say is unsupported here."""
    if text.startswith("@@"):
        raise _UnsupportedError("AdBlock exception rule: not applied")
    body, dollar, options = text.partition("$")
    if "#" in body:
        raise _UnsupportedError("AdBlock element-hiding rule: not supported")
    if dollar:
        raise _UnsupportedError(f"AdBlock rule options '${options}': not supported")
    if not body.startswith("||"):
        if not _ADBLOCK_SYNTAX.search(body):
            return normalize_domain(body)  # a bare domain, as in hosts-style lists
        raise _UnsupportedError("AdBlock rule other than '||domain^': not supported")
    name = body[2:].removesuffix("|").removesuffix("^")
    if "/" in name or "*" in name or "^" in name:
        raise _UnsupportedError("AdBlock URL or wildcard rule: not supported")
    return normalize_domain(name)


def _hosts_line(words: list[str], fmt: ListFormat | None) -> list[str]:
    """`ADDRESS NAME...` -> the names, without localhost-like ones."""
    try:
        ipaddress.ip_address(words[0].partition("%")[0])
    except ValueError:
        if fmt is ListFormat.HOSTS and len(words) == 1:
            return [_domain_entry(words[0])]
        raise ValueError("expected 'ADDRESS NAME...' or one domain per line") from None
    if len(words) == 1:
        if fmt is ListFormat.HOSTS:
            raise ValueError("hosts line without a name")
        return [normalize_domain(words[0])]
    names = [normalize_domain(w) for w in words[1:]]
    return [n for n in names if n not in _LOCAL_NAMES]
