"""`decide()`: classification + client + time -> action, with the rule, layer and a reason.

The total order (tested as tables in tests/agent/test_policy.py):
1. Classification already picked the most specific match (URL rule > longer host suffix >
   shorter); a never-block entry there means "no category".
2. Every layer's rules for the deciding categories that apply to the client's groups and are
   in force at `now` (schedules) are collected; the most restrictive action wins
   (block > warn > log > allow); ties go to the earlier layer, then the earlier rule.
   With no applicable rule, the policy's default action applies.
3. An approved exception for one of the client's groups, unexpired at `now`, that covers the
   host/URL (and the restricting categories, when it names any) lowers the result to allow.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from agent.classifier import label_suffixes
from agent.config import Config, ExceptionConfig
from agent.lists import normalize_domain
from agent.model import Action, Classification, Client, Decision, Request
from agent.schedule import Schedule


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: which groups, which schedule window, which action."""

    id: str
    layer: str
    order: int
    action: Action
    groups: frozenset[str]
    schedule: Schedule | None
    outside: bool

    def applies(self, client: Client, now: float) -> bool:
        """True for a client in one of the rule's groups (or any, if none) while in force."""
        if self.groups and self.groups.isdisjoint(client.groups):
            return False
        return self.schedule is None or self.schedule.is_active(now) != self.outside

    def describe(self) -> str:
        """`rule personal-use (layer statewide, always)`."""
        return f"rule {self.id} (layer {self.layer}, {self.when()})"

    def when(self) -> str:
        """`business-hours`, `outside business-hours` or `always`."""
        if self.schedule is None:
            return "always"
        return f"outside {self.schedule.name}" if self.outside else self.schedule.name


@dataclass(frozen=True, slots=True)
class Grant:
    """A compiled exception: hosts (with subdomains) and URL prefixes for some groups."""

    id: str
    layer: str
    groups: frozenset[str]
    hosts: frozenset[str]
    urls: tuple[tuple[str, str], ...]
    categories: frozenset[str]
    until: float
    approved_by: str
    reference: str
    expires: dt.date

    def covers(
        self, client: Client, request: Request, restricting: Iterable[str], now: float
    ) -> bool:
        """True when this grant allows `request` for `client` at `now`."""
        if now >= self.until or self.groups.isdisjoint(client.groups):
            return False
        if self.categories and not self.categories.issuperset(restricting):
            return False
        suffixes = label_suffixes(request.host)
        if not self.hosts.isdisjoint(suffixes):
            return True
        path = request.path
        return path is not None and any(h in suffixes and path.startswith(p) for h, p in self.urls)


class Policy:
    """The compiled policy of one config revision."""

    __slots__ = (
        "_by_category",
        "_uncategorized",
        "clauses",
        "default_action",
        "grants",
        "schedules",
        "url_grant_hosts",
        "user_groups",
    )

    def __init__(self, config: Config) -> None:
        holidays = frozenset(h.date for h in config.holidays)
        self.schedules = {
            name: Schedule(
                name,
                config.timezone,
                frozenset(s.days),
                s.start,
                s.end,
                holidays if s.skip_holidays else frozenset(),
            )
            for name, s in config.schedules.items()
        }
        self.default_action = config.default_action
        self.user_groups = frozenset(n for n, g in config.groups.items() if g.user_based)
        self.clauses = {name: c.clause for name, c in config.categories.items()}
        by_category: dict[str, list[Rule]] = {}
        order = 0
        for layer in config.layers:
            for r in layer.rules:
                rule = Rule(
                    r.id,
                    layer.name,
                    order,
                    r.action,
                    frozenset(r.groups),
                    self.schedules.get(r.schedule or ""),
                    r.outside_schedule,
                )
                order += 1
                for cat in r.categories:
                    by_category.setdefault(cat, []).append(rule)
        self._by_category = {k: tuple(v) for k, v in by_category.items()}
        self.grants = tuple(
            _grant(e, layer.name, config) for layer in config.layers for e in layer.exceptions
        )
        self.url_grant_hosts = frozenset(h for g in self.grants for h, _ in g.urls)
        label = self.default_action.label
        self._uncategorized = Decision(  # most requests: built once, not per request
            action=self.default_action, category=None, categories=(), rule="default",
            layer=None, schedule=None, reason=f"{label}: no list matches; default action",
            reason_label=f"{label}_uncategorized", classification=Classification("", None),
        )  # fmt: skip

    def decide(self, client: Client, request: Request, cls: Classification, now: float) -> Decision:
        """The decision for one request; pure given the compiled policy."""
        best: tuple[Action, int, str, Rule] | None = None
        restricting: set[str] = set()
        categories = cls.categories
        for cat in categories:
            for rule in self._by_category.get(cat, ()):
                if rule.applies(client, now):
                    if rule.action > Action.ALLOW:
                        restricting.add(cat)
                    if best is None or (rule.action, -rule.order) > (best[0], -best[1]):
                        best = (rule.action, rule.order, cat, rule)
        if best is None:
            return self._default(cls, categories)
        action, _, category, rule = best
        if action > Action.ALLOW:
            for grant in self.grants:
                if grant.covers(client, request, restricting, now):
                    return _excepted(grant, cls, category, rule, self.clauses.get(category))
        reason = f"{action.label}: {_what(cls, category)}; {rule.describe()}"
        return Decision(
            action=action,
            category=category,
            categories=categories,
            rule=rule.id,
            layer=rule.layer,
            schedule=rule.schedule.name if rule.schedule else None,
            reason=reason + _overrides(cls),
            reason_label=f"{action.label}_category",
            classification=cls,
            clause=self.clauses.get(category),
        )

    def _default(self, cls: Classification, categories: tuple[str, ...]) -> Decision:
        if not cls.matches:
            return self._uncategorized
        action = self.default_action
        if categories:
            reason = f"{action.label}: {', '.join(categories)} has no rule in force; default action"
            label = f"{action.label}_default"
        else:  # a never-block entry is the most specific match
            entry = cls.matches[0]
            reason = f"{action.label}: never-block entry {entry.entry!r} ({entry.source})"
            label = f"{action.label}_never_block"
        return Decision(
            action=action,
            category=categories[0] if categories else None,
            categories=categories,
            rule="default",
            layer=None,
            schedule=None,
            reason=reason + _overrides(cls),
            reason_label=label,
            classification=cls,
        )

    def user_dependent(
        self, client: Client, request: Request, now: float, decision: Decision
    ) -> bool:
        """True when some signed-in user behind this address could get another action."""
        for group in self.user_groups - client.groups:
            other = Client(client.ip, "?", client.groups | {group})
            if self.decide(other, request, decision.classification, now).action != decision.action:
                return True
        return False


def _grant(e: ExceptionConfig, layer: str, config: Config) -> Grant:
    until = dt.datetime.combine(e.expires + dt.timedelta(days=1), dt.time(0), config.timezone)
    urls = []
    for url in e.urls:
        host, _, path = url.partition("/")
        urls.append((normalize_domain(host), "/" + path))
    return Grant(
        e.id,
        layer,
        frozenset(e.groups),
        frozenset(normalize_domain(h) for h in e.hosts),
        tuple(urls),
        frozenset(e.categories),
        until.timestamp(),
        e.approved_by,
        e.reference,
        e.expires,
    )


def _excepted(
    grant: Grant, cls: Classification, category: str, rule: Rule, clause: str | None
) -> Decision:
    reason = (
        f"allow: exception {grant.id} (approved by {grant.approved_by}, {grant.reference}, "
        f"until {grant.expires}, layer {grant.layer}) lowers {rule.action.label} of "
        f"{_what(cls, category)}; {rule.describe()}"
    )
    return Decision(
        action=Action.ALLOW,
        category=category,
        categories=cls.categories,
        rule=f"exception:{grant.id}",
        layer=grant.layer,
        schedule=rule.schedule.name if rule.schedule else None,
        reason=reason,
        reason_label="allow_exception",
        classification=cls,
        clause=clause,
        exception=grant.id,
    )


def _what(cls: Classification, category: str) -> str:
    match = cls.match_for(category)
    entry = f" entry {match.entry!r} ({match.source})" if match else ""
    return f"category {category}{entry}"


def _overrides(cls: Classification) -> str:
    if not cls.overridden:
        return ""
    decided = cls.matches[0] if cls.matches else None
    by = f" by {decided.entry!r}" if decided else ""
    return "; overrides " + ", ".join(m.describe() for m in cls.overridden[:3]) + by
