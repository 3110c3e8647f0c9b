"""Host normalisation and `Classifier.classify(host, path)` over the compiled index.

URL rules match the host and its subdomains, then a path prefix, case-sensitively, that ends at a
boundary: the request path equals the rule, the rule ends in `/ ? & =`, or the path continues
with `/ ? & ;`. Paths include the query (as mitmproxy's `request.path`); fragments are dropped.
"""

from __future__ import annotations

import re
from operator import attrgetter
from typing import TYPE_CHECKING
from urllib.parse import unquote

import marisa_trie

from agent.index import CompiledIndex
from agent.lists import (
    CLEAN_NAME,
    normalize_domain,
    normalize_path,
    parse_entry,
)
from agent.model import Classification, Match, MatchKind

if TYPE_CHECKING:
    from collections.abc import Sequence

_Local = dict[str, tuple[tuple[Match, ...], tuple[tuple[str, Match], ...]]]
_FAST_URL = re.compile(  # http(s) URL or host/path with a clean host, as most requests are
    r"(https?://)?((?:[a-z0-9_-]{1,63}\.)*[a-z_-][a-z0-9_-]{0,62})(?=[/?#]|\Z)"
)
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
_PORT = re.compile(r":[0-9]{0,5}")


def label_suffixes(host: str) -> frozenset[str]:
    """`a.b.example.com` -> the host and every parent domain (label boundaries only)."""
    parts = host.split(".")
    return frozenset(".".join(parts[i:]) for i in range(len(parts)))


def is_under(host: str, domains: frozenset[str]) -> bool:
    """True when `host` is one of `domains` or a subdomain of one."""
    return bool(domains) and not domains.isdisjoint(label_suffixes(host))


def normalize_host(raw: str) -> str:
    """Canonical request host from `User@Host.:443`, `[v6]:443`, `%65x.com`, IDN, `0x7f.1` etc."""
    if len(raw) <= 253 and CLEAN_NAME.fullmatch(raw):
        return raw
    try:
        return normalize_domain(_strip_authority(raw.strip().rpartition("@")[2]))
    except ValueError as e:
        raise ValueError(f"not a valid host: {raw!r} ({e})") from None


def _strip_authority(host: str) -> str:
    """Percent-decode a host and drop its port and IPv6 brackets."""
    if "%" in host:
        host = unquote(host, errors="strict")
    if host.startswith("["):
        addr, bracket, port = host[1:].partition("]")
        if not bracket or (port and not _PORT.fullmatch(port)) or ":" not in addr:
            raise ValueError("not a valid [IPv6] literal")
        return addr
    if host.count(":") == 1:
        host, port = host.split(":")
        if not _PORT.fullmatch(":" + port):
            raise ValueError("not a valid port")
    return host


def split_url(url: str) -> tuple[str, str | None]:
    """Split a URL, `host/path` or a bare host into (host, path or None if bare); ValueError if bad.

    The path keeps the query and loses the fragment; `https://host` gives the path `/`.
    """
    m = _FAST_URL.match(url)
    if m is not None and m.end() - m.start(2) <= 253:
        scheme, host = m.groups()
        path = url[m.end() :]
        if not path:
            return host, ("/" if scheme else None)
        if path[0] == "/" and "#" not in path and "%" not in path:
            return host, path
    return _split_slow(url)


def _split_slow(url: str) -> tuple[str, str | None]:
    """`split_url` for any scheme, userinfo, port, IDN, percent-escapes, fragments."""
    text = url.strip()
    has_scheme = text.startswith("//")
    if m := _SCHEME.match(text):
        text, has_scheme = text[m.end() :], True
    text = text.removeprefix("//").partition("#")[0]
    cut = min((i for i in (text.find("/"), text.find("?")) if i >= 0), default=len(text))
    host, path = normalize_host(text[:cut]), text[cut:]
    if not path:
        return host, ("/" if has_scheme else None)
    return host, normalize_path(path if path[0] == "/" else "/" + path)


class Classifier:
    """Categories of a (host, path): list entries, never-block entries and extra config entries.

    `never_block` holds (entry, source) pairs; `extra_entries` (category, entry, source) triples.
    An entry is a domain (with its subdomains) or `host/path`. The most specific level wins
    (URL rule > longer host suffix > shorter); on that level a never-block entry beats category
    entries, and everything else goes to `overridden`.
    """

    __slots__ = ("_index", "_local", "_local_prefixes", "_prefixes")

    def __init__(
        self,
        index: CompiledIndex,
        never_block: Sequence[tuple[str, str]] = (),
        extra_entries: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        self._index = index
        self._prefixes = index.prefixes
        config = [(None, e, src) for e, src in never_block] + list(extra_entries)
        rules = [*index.list_url_rules(), *map(_config_rule, config)]
        hosts: dict[str, list[Match]] = {}
        urls: dict[str, list[tuple[str, Match]]] = {}
        for cat, host, path, source in rules:
            labels = host.count(".") + 1
            if path is None:
                m = Match(cat, host, source, MatchKind.HOST, (0, labels, 0))
                hosts.setdefault(host, []).append(m)
            else:
                m = Match(cat, host + path, source, MatchKind.URL, (1, labels, len(path)))
                urls.setdefault(host, []).append((path, m))
        self._local: _Local = {
            h[::-1] + ".": (
                tuple(hosts.get(h, ())),
                tuple(sorted(urls.get(h, ()), key=lambda u: -len(u[0]))),
            )
            for h in hosts.keys() | urls.keys()
        }
        self._local_prefixes = marisa_trie.Trie(self._local).prefixes

    @property
    def index(self) -> CompiledIndex:
        """The list index this classifier reads."""
        return self._index

    def classify(self, host: str, path: str | None) -> Classification:
        """Classify a normalised host and path (None: host-level only, URL rules do not apply)."""
        rev = host[::-1] + "."
        keys = self._prefixes(rev)
        local = self._local_prefixes(rev)
        if not keys and not local:
            return Classification(host, path, (), ())
        found = self._index.matches_for(keys) if keys else []
        for key in local:
            host_matches, url_rules = self._local[key]
            found += host_matches
            if path is not None:
                found += [m for rule, m in url_rules if _path_matches(path, rule)]
        if not found:
            return Classification(host, path, (), ())
        return _rank(host, path, found)

    def has_url_rules_for(self, host: str) -> bool:
        """True when a URL rule applies under `host` (a host-only decision may then be wrong)."""
        return any(self._local[key][1] for key in self._local_prefixes(host[::-1] + "."))


def _config_rule(rule: tuple[str | None, str, str]) -> tuple[str | None, str, str | None, str]:
    """(category, entry, source) -> (category, host, path, source); ValueError names the source."""
    category, entry, source = rule
    try:
        return (category, *parse_entry(entry), source)
    except ValueError as e:
        raise ValueError(f"{source}: {entry!r}: {e}") from None


def _path_matches(path: str, rule: str) -> bool:
    """Prefix test that ends at a boundary (see the module docstring)."""
    if not path.startswith(rule):
        return False
    n = len(rule)
    return len(path) == n or rule[-1] in "/?&=" or path[n] in "/?&;"


def _rank(host: str, path: str | None, found: list[Match]) -> Classification:
    """Split matches: top rank level (never-block wins there) vs. the rest, most specific first."""
    if len(found) == 1:
        return Classification(host, path, (found[0],), ())
    top = max([m.rank for m in found])
    winners = [m for m in found if m.rank == top]
    if any(m.category is None for m in winners):
        winners = [m for m in winners if m.category is None]
    if len(winners) > 1:
        winners.sort(key=_BY_SOURCE)  # all None (never-block) or all categories
    if len(winners) == len(found):
        return Classification(host, path, tuple(winners), ())
    won = {id(m) for m in winners}
    rest = sorted((m for m in found if id(m) not in won), key=_by_source)
    rest.sort(key=_BY_RANK, reverse=True)
    return Classification(host, path, tuple(winners), tuple(rest))


_BY_SOURCE, _BY_RANK = attrgetter("category", "source"), attrgetter("rank")


def _by_source(m: Match) -> tuple[str, str]:
    return (m.category or "", m.source)


def host_of(value: str | None) -> str | None:
    """A host name without port, trailing dot or brackets, lower-cased; None for none."""
    if not value:
        return None
    h = value.strip().lower()
    if h.startswith("["):
        h = h[1:].partition("]")[0]
    elif h.count(":") == 1:
        h = h.partition(":")[0]
    return h.rstrip(".") or None
