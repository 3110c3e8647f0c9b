"""`aupguard` subcommands. Admins script these: output formats and exit codes are a contract.

Exit codes: 0 success, 1 config/list errors (or a failed check), 2 bad command-line input.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Config, display_path, load_config
from agent.errors import AupguardError, ConfigError
from agent.schedule import local_time

Command = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Command, str]] = {}


def command(
    name: str, help_text: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Command], Command]:
    """Register `aupguard NAME`; `arguments(parser)` adds its options."""

    def register(func: Command) -> Command:
        COMMANDS[name] = (arguments or (lambda _p: None), func, help_text)
        return func

    return register


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="baseline policy file (default: the shipped config/policy.yaml)",
    )


# --- classify -----------------------------------------------------------------------------


def _classify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", help="a URL, host/path or host name")
    p.add_argument("--client", default="127.0.0.1", help="client IP address (default 127.0.0.1)")
    p.add_argument("--user", default=None, help="signed-in user name")
    p.add_argument("--user-group", action="append", default=[], help="the user's directory group")
    p.add_argument(
        "--at", default=None, help="ISO-8601 time; without an offset, in the policy's zone"
    )
    p.add_argument("--host-only", action="store_true", help="decide as the DNS filter would")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--records", type=Path, default=None, help="also append the decision record")
    _config_arg(p)


@command("classify", "decide one URL or host and explain why", _classify_args)
def cmd_classify(args: argparse.Namespace) -> int:
    """Decide one URL and explain why (like `pihole -q`, with the full reasoning)."""
    from agent.pipeline import Engine  # noqa: PLC0415  (loading lists is only for deciding commands)

    engine = Engine.load(args.config)
    zone = engine.config.timezone
    try:
        now = local_time(args.at, zone) if args.at else time.time()
        ev = engine.evaluate(
            args.client,
            args.url,
            now=now,
            user=args.user,
            user_groups=args.user_group,
            host_only=args.host_only,
        )
    except ValueError as e:
        print(f"aupguard classify: {args.url!r}: {e}", file=sys.stderr)
        return 2
    if args.records is not None:
        _write_record(engine, ev, now, args.records)
    d = ev.decision
    at = dt.datetime.fromtimestamp(now, zone).isoformat(timespec="seconds")
    out: dict[str, Any] = {
        "url": args.url,
        "host": ev.request.host,
        "path": ev.request.path,
        "client": ev.client.ip,
        "user": ev.client.user,
        "groups": sorted(ev.client.groups),
        "at": at,
        "action": d.action.label,
        "category": d.category,
        "categories": list(d.categories),
        "rule": d.rule,
        "layer": d.layer,
        "schedule": d.schedule,
        "exception": d.exception,
        "reason": d.reason,
        "reason_label": d.reason_label,
        "clause": d.clause,
        "matched": [_match(m) for m in d.classification.matches],
        "overridden": [_match(m) for m in d.classification.overridden],
        "dns_enforceable": d.user_independent,
        "notes": list(d.notes),
        "policy_version": engine.revision,
        "lists_version": engine.lists_version,
        "notice_version": engine.notice.version,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for key in (
        "url",
        "client",
        "user",
        "groups",
        "at",
        "action",
        "category",
        "rule",
        "layer",
        "schedule",
        "exception",
        "reason",
        "clause",
        "policy_version",
        "lists_version",
    ):
        value = out[key]
        if value not in (None, [], ""):
            print(f"{key:<15} {', '.join(value) if isinstance(value, list) else value}")
    for m in d.classification.matches:
        print(f"{'matched':<15} {m.describe()}")
    for m in d.classification.overridden:
        print(f"{'overridden':<15} {m.describe()}")
    return 0


def _write_record(engine: Any, ev: Any, now: float, path: Path) -> None:
    """Append the decision's record to `path` through the same writer the services use."""
    from agent.writer import JsonLinesFileSink, RecordWriter  # noqa: PLC0415

    with RecordWriter([JsonLinesFileSink(path)]) as writer:
        writer.write(engine.record(ev, now))


def _match(m: Any) -> dict[str, Any]:
    return {"category": m.category, "entry": m.entry, "source": m.source, "kind": str(m.kind)}


# --- check-config -------------------------------------------------------------------------


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "files", nargs="*", type=Path, help="baseline policy files (default: the shipped one)"
    )


@command("check-config", "validate the policy and its overlays", _check_args)
def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate config files; print every error as file:line and exit 1 on any."""
    status = 0
    for path in args.files or [None]:
        try:
            config = load_config(path)
        except ConfigError as e:
            status = 1
            for line in e.errors:
                print(line, file=sys.stderr)
            continue
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        rules = sum(len(layer.rules) for layer in config.layers)
        grants = sum(len(layer.exceptions) for layer in config.layers)
        print(
            f"ok: {', '.join(display_path(f) for f in config.files)}: "
            f"{len(config.categories)} categories, {rules} rules, {grants} exceptions, "
            f"layers {' > '.join(layer.name for layer in config.layers)}, "
            f"policy {config.revision}"
        )
    return status


# --- exceptions ---------------------------------------------------------------------------


@command("exceptions", "list exceptions, their approvers and expiry", _config_arg)
def cmd_exceptions(args: argparse.Namespace) -> int:
    """List every exception with approver, reference and expiry; flag expired and expiring."""
    config = load_config(args.config)
    today = dt.datetime.now(config.timezone).date()
    for layer in config.layers:
        for e in layer.exceptions:
            left = (e.expires - today).days
            flag = "EXPIRED" if left < 0 else ("EXPIRES SOON" if left <= 30 else "active")
            targets = ", ".join((*e.hosts, *e.urls))
            print(
                f"{e.id}\t{flag}\texpires {e.expires}\tapproved by {e.approved_by} ({e.reference})"
                f"\tgroups {', '.join(e.groups)}\t{targets}\t{e.where}"
            )
    return 0


# --- lists --------------------------------------------------------------------------------


def _lists_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["stats"], help="stats: entries per category and bad lines")
    _config_arg(p)


@command("lists", "category list statistics", _lists_args)
def cmd_lists(args: argparse.Namespace) -> int:
    """`lists stats`: the lists' version, entries per category, bad lines per file."""
    from agent.index import build_index, open_index  # noqa: PLC0415

    config = load_config(args.config)
    out = config.index_dir() / "stats-build"
    stats = build_index(config.list_sources(), out)
    print(f"lists version {open_index(out).lists_version} (aupguard.lists_version in records)")
    print(stats.describe())
    return 0


# --- run (until the gateway services land: a demo of the decision engine) ---------------


# `aupguard run` lives in agent/gateway.py.


def _print_summary(config: Config) -> None:
    print(
        f"aupguard {__version__}: policy {config.revision} "
        f"({' > '.join(layer.name for layer in config.layers)}), "
        f"{len(config.categories)} categories"
    )


# --- entry point --------------------------------------------------------------------------


# Modules that register more subcommands with @command when imported (one line each).
_COMMAND_MODULES: tuple[str, ...] = (
    "agent.dns_server",
    "agent.logcheck",
    "agent.report",
    "agent.gateway",
    "agent.status",
    "agent.updates",
    "agent.proxy",
)


def build_parser() -> argparse.ArgumentParser:
    """The `aupguard` argument parser with every registered subcommand."""
    for module in _COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="aupguard", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aupguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (arguments, func, help_text) in sorted(COMMANDS.items()):
        p = sub.add_parser(name, help=help_text, description=func.__doc__)
        arguments(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `aupguard`; config/list errors print as file:line and exit 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        return 1
    except AupguardError as e:
        print(f"aupguard {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
