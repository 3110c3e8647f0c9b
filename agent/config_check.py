"""Cross-reference checks and layering of decoded config files into one `Config`.

Layering rule (the policy's "stricter rule controls"): an overlay may add categories, groups,
schedules, rules and exceptions; it may not redefine a name, set never-block entries or
configure the gateway's services. Conflicting actions are resolved in `agent.policy` by taking
the most restrictive one, so an overlay can only tighten unless an approved exception applies.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import (
    Config,
    DnsSection,
    ExceptionConfig,
    FileSection,
    Layer,
    ListsSection,
    MetricsSection,
    ProxySection,
    RecordsSection,
    RuleConfig,
    config_revision,
    display_path,
)
from agent.lists import normalize_domain
from agent.model import Action
from agent.schema import Problem

_SERVICE_SECTIONS = {
    "dns": DnsSection(),
    "proxy": ProxySection(),
    "records": RecordsSection(),
    "lists": ListsSection(),
    "metrics": MetricsSection(),
}
_KINDS = {"schedules": "schedule", "categories": "category", "groups": "group"}
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_ID_RULE = "expected lower-case letters, digits, '-', '_' or '.'"


@dataclass
class _Checker:
    """Names defined so far (with where) and every problem and warning found."""

    problems: list[Problem]
    warnings: list[str] = field(default_factory=list)
    defined: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in _KINDS})
    values: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in _KINDS})
    ids: dict[str, str] = field(default_factory=dict)

    def problem(self, where: str, key: str, message: str) -> None:
        """Record a problem at a `file:line` position."""
        file, _, line = where.rpartition(":")
        self.problems.append(Problem(file, int(line) if line.isdigit() else 1, key, message))

    def define(self, kind: str, name: str, value: Any) -> None:
        """Add a named schedule/category/group; names are unique across layers."""
        where, key = getattr(value, "where", ""), f"policy.{kind}.{name}"
        if name in self.defined[kind]:
            first = self.defined[kind][name]
            self.problem(where, key, f"already defined at {first}: names are unique across layers")
            return
        if not _ID.match(name):
            self.problem(where, key, f"invalid name: {_ID_RULE}")
        self.defined[kind][name] = where
        self.values[kind][name] = value

    def known(self, kind: str, names: tuple[str, ...], where: str, key: str) -> None:
        """Every name must be defined; the error lists what exists."""
        for name in names:
            if name not in self.defined[kind]:
                choices = ", ".join(sorted(self.defined[kind])) or "(none defined)"
                self.problem(
                    where, key, f"unknown {_KINDS[kind]} {name!r}: expected one of {choices}"
                )

    def unique_id(self, ident: str, where: str, key: str) -> None:
        """Rule and exception ids are unique across layers and well-formed."""
        if not _ID.match(ident):
            self.problem(where, key, f"invalid id {ident!r}: {_ID_RULE}")
        if ident in self.ids:
            self.problem(where, key, f"id {ident!r} already used at {self.ids[ident]}")
        self.ids.setdefault(ident, where)

    def target(self, text: str, where: str, key: str, *, url: bool = True) -> None:
        """A host (or, where allowed, host/path) must be a valid domain pattern."""
        host, slash, _ = text.partition("/")
        if slash and not url:
            self.problem(where, key, f"{text!r}: expected a host name, not a URL (use `urls`)")
            return
        try:
            normalize_domain(host)
        except ValueError as e:
            self.problem(where, key, f"{text!r}: {e}")


def validate(sections: list[tuple[Path, FileSection]], problems: list[Problem]) -> Config | None:
    """Merge the baseline and overlays, appending every problem found; None if unusable."""
    base_path, base = sections[0]
    check = _Checker(problems)
    layers = [_layer(check, path, sec, overlay=i > 0) for i, (path, sec) in enumerate(sections)]
    for layer in layers:
        for rule in layer.rules:
            _check_rule(check, rule)
        for exc in layer.exceptions:
            _check_exception(check, exc)
    for entry in base.policy.never_block:
        check.target(entry.entry, entry.where, "policy.never_block")
    _check_categories(check)
    _check_base(check, display_path(base_path), base)
    if base.policy.timezone is None:
        return None
    overlay_defaults = [s.policy.default_action for _, s in sections[1:] if s.policy.default_action]
    return Config(
        files=tuple(p for p, _ in sections),
        revision=config_revision([p for p, _ in sections]),
        timezone=base.policy.timezone,
        default_action=max([base.policy.default_action or Action.ALLOW, *overlay_defaults]),
        schedules=check.values["schedules"],
        holidays=tuple(h for _, s in sections for h in s.policy.holidays),
        categories=check.values["categories"],
        groups=check.values["groups"],
        never_block=base.policy.never_block,
        layers=tuple(layers),
        dns=base.dns,
        proxy=base.proxy,
        records=base.records,
        lists=base.lists,
        metrics=base.metrics,
        warnings=tuple(check.warnings),
    )


def _layer(check: _Checker, path: Path, sec: FileSection, *, overlay: bool) -> Layer:
    if overlay:
        _check_overlay(check, display_path(path), sec)
    for kind in _KINDS:
        for name, value in getattr(sec.policy, kind).items():
            check.define(kind, name, value)
    return Layer(sec.layer, display_path(path), sec.policy.rules, sec.policy.exceptions)


def _check_rule(check: _Checker, rule: RuleConfig) -> None:
    key, where = f"policy.rules[{rule.id}]", rule.where
    check.unique_id(rule.id, where, f"{key}.id")
    if not rule.categories:
        check.problem(where, f"{key}.categories", "empty: expected at least one category")
    check.known("categories", rule.categories, where, f"{key}.categories")
    check.known("groups", rule.groups, where, f"{key}.groups")
    if rule.schedule is not None:
        check.known("schedules", (rule.schedule,), where, f"{key}.schedule")
    elif rule.outside_schedule:
        check.problem(where, f"{key}.outside_schedule", "set without `schedule`: expected one")


def _check_exception(check: _Checker, exc: ExceptionConfig) -> None:
    key, where = f"policy.exceptions[{exc.id}]", exc.where
    check.unique_id(exc.id, where, f"{key}.id")
    for name in ("approved_by", "reference"):
        if not getattr(exc, name).strip():
            check.problem(
                where,
                f"{key}.{name}",
                "empty: exceptions need CIO approval: "
                "expected the approver and the approval reference",
            )
    if not exc.groups:
        check.problem(where, f"{key}.groups", "empty: expected the groups it is for")
    if not exc.hosts and not exc.urls:
        check.problem(where, key, "no hosts or urls: expected what the exception allows")
    check.known("groups", exc.groups, where, f"{key}.groups")
    check.known("categories", exc.categories, where, f"{key}.categories")
    for host in exc.hosts:
        check.target(host, where, f"{key}.hosts", url=False)
    for url in exc.urls:
        check.target(url, where, f"{key}.urls")
    if exc.expires < dt.datetime.now(dt.UTC).date():
        check.warnings.append(
            f"{where}: {key}: expired on {exc.expires}: ignored "
            "(renew it with the CIO or remove it)"
        )


def _check_categories(check: _Checker) -> None:
    for name, spec in check.values["categories"].items():
        key = f"policy.categories.{name}"
        if not spec.clause.strip():
            check.problem(
                spec.where,
                f"{key}.clause",
                "empty: expected the policy clause users see on the block page",
            )
        for ref in spec.lists:
            if not ref.path.exists():
                check.problem(
                    ref.where, f"{key}.lists", f"{str(ref.path)!r}: no such file or folder"
                )


def _check_overlay(check: _Checker, label: str, sec: FileSection) -> None:
    not_here = "not allowed in an overlay: "
    if sec.policy.never_block:
        check.problem(
            sec.policy.never_block[0].where,
            "policy.never_block",
            not_here + "an overlay may loosen the baseline only through approved exceptions",
        )
    if sec.policy.timezone is not None:
        check.problem(f"{label}:1", "policy.timezone", not_here + "the baseline sets it")
    if sec.overlays:
        check.problem(f"{label}:1", "overlays", not_here + "only the baseline names overlays")
    for name, default in _SERVICE_SECTIONS.items():
        if getattr(sec, name) != default:
            check.problem(f"{label}:1", name, not_here + "gateway services are set in the baseline")


def _check_base(check: _Checker, label: str, base: FileSection) -> None:
    if base.policy.timezone is None and not any(p.key == "policy.timezone" for p in check.problems):
        check.problem(
            f"{label}:1",
            "policy.timezone",
            "missing required key: expected an IANA time zone such as America/New_York",
        )
    notice = base.records.notice
    if not notice.text.strip() and notice.file is None:
        check.problem(
            f"{label}:1",
            "records.notice",
            "missing: electronic monitoring requires the notice given to employees: "
            "expected records.notice.text or records.notice.file",
        )
    elif notice.file is not None and not notice.file.is_file():
        check.problem(f"{label}:1", "records.notice.file", f"{str(notice.file)!r}: no such file")
