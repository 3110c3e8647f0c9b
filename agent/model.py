"""Frozen value types that flow through the pipeline: identify -> classify -> decide.

Every stage takes and returns these; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class Action(enum.IntEnum):
    """What the gateway does; the integer order is restrictiveness (block > warn > log > allow)."""

    ALLOW = 0
    LOG = 1
    WARN = 2
    BLOCK = 3

    @property
    def label(self) -> str:
        """Lower-case name used in config, records and metrics."""
        return _ACTION_LABELS[self]

    @classmethod
    def parse(cls, text: str) -> Action:
        """Parse a config word (`block`, `warn`, `log`, `allow`); ValueError otherwise."""
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(a.label for a in sorted(cls, reverse=True))
            msg = f"unknown action {text!r}: expected one of {names}"
            raise ValueError(msg) from None


_ACTION_LABELS = ("allow", "log", "warn", "block")


class Source(enum.StrEnum):
    """Which enforcement point asked."""

    HTTP = "http"
    DNS = "dns"
    TLS = "tls"
    CLI = "cli"


class MatchKind(enum.StrEnum):
    """Level of a list match: a URL rule (host + path prefix) or a host suffix."""

    URL = "url"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class Match:
    """One list or config entry that matched a request.

    `category` is None for a never-block entry (a match meaning "no category").
    `source` says where the entry is written: `blocklists/webmail.txt:12` or
    `config/policy.yaml:40`. `rank` orders specificity: higher wins
    (URL rules above host suffixes, longer above shorter).
    """

    category: str | None
    entry: str
    source: str
    kind: MatchKind
    rank: tuple[int, int, int]

    def describe(self) -> str:
        """`webmail entry 'yahoo.com' (blocklists/webmail.txt:3)`."""
        what = self.category if self.category is not None else "never-block"
        return f"{what} entry {self.entry!r} ({self.source})"


@dataclass(frozen=True, slots=True)
class Classification:
    """What a host/URL is: the deciding matches and the ones they overrode."""

    host: str
    path: str | None
    matches: tuple[Match, ...] = ()
    overridden: tuple[Match, ...] = ()

    @property
    def categories(self) -> tuple[str, ...]:
        """Sorted categories of the deciding level; empty when a never-block entry decided."""
        if not self.matches:
            return ()
        if len(self.matches) == 1:
            only = self.matches[0].category
            return () if only is None else (only,)
        cats = {m.category for m in self.matches}
        if None in cats:
            return ()
        return tuple(sorted(c for c in cats if c is not None))

    @property
    def never_blocked(self) -> bool:
        """True when a never-block entry is the most specific match."""
        return any(m.category is None for m in self.matches)

    def match_for(self, category: str) -> Match | None:
        """The deciding match of `category`, if any."""
        for m in self.matches:
            if m.category == category:
                return m
        return None


@dataclass(frozen=True, slots=True)
class Client:
    """Who asked: address, authenticated user (if known) and resolved groups."""

    ip: str
    user: str | None = None
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Request:
    """What was asked: a normalised host, and a path when the enforcement point sees one.

    `path` is None for host-only decisions (DNS, TLS SNI); URL rules never apply then.
    `url` is the original URL as seen (records redact it).
    """

    host: str
    path: str | None = None
    url: str | None = None
    source: Source = Source.CLI


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `decide()`: action, what decided it and a reason for people.

    `rule` is a config rule id (`block-personal-use`), `default`, or `exception:<id>`.
    `layer` is the config layer whose rule won. `user_independent` is True when the
    same action holds for every user behind the client address (the DNS filter may only
    enforce those).
    """

    action: Action
    category: str | None
    categories: tuple[str, ...]
    rule: str
    layer: str | None
    schedule: str | None
    reason: str
    reason_label: str
    classification: Classification
    clause: str | None = None
    exception: str | None = None
    user_independent: bool = True
    notes: tuple[str, ...] = field(default=())


def _fast_init(cls: type[Any]) -> type[Any]:
    """Give a frozen slotted dataclass an `__init__` that fills its slots directly.

    The generated frozen `__init__` calls `object.__setattr__` per field (~0.15 us each);
    these types are built on every decision, so this writes through the slot descriptors
    instead, like dataclasses itself generates code. Instances stay frozen afterwards.
    """
    fields = dataclasses.fields(cls)
    scope: dict[str, Any] = {"_new": object.__new__}
    params, body = [], []
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:
            msg = f"{cls.__name__}.{f.name}: default_factory is not supported here"
            raise TypeError(msg)
        scope[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.default is not dataclasses.MISSING:
            scope[f"_dflt_{f.name}"] = f.default
            params.append(f"{f.name}=_dflt_{f.name}")
        else:
            params.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})")
    src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body)
    exec(src, scope)  # noqa: S102  (fixed source built from the dataclass's own field names)
    cls.__init__ = scope["__init__"]
    return cls


for _cls in (Match, Classification, Client, Request, Decision):
    _fast_init(_cls)
