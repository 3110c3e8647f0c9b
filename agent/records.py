"""The decision record: one JSON-ready, ECS-named record per decision.

Records are monitoring data, not operational logs: secrets are redacted before a record
exists; `agent.writer.RecordWriter` writes them off the hot path. The schema is documented
in docs/records.md.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from agent.errors import ConfigError
from agent.logs import REDACTED, get_logger, redact_headers, redact_path, redact_url
from agent.model import Action, Source

if TYPE_CHECKING:
    from agent.model import Client, Decision, Match, Request

__all__ = [  # redaction lives in agent.logs (records and logs share it); re-exported here
    "REDACTED", "Notice", "build_record", "dropped_record", "format_timestamp", "merge_extra",
    "new_event_id", "notice_version", "records_required", "redact_headers", "redact_path",
    "redact_url",
]  # fmt: skip

ECS_VERSION = "8.17.0"
DATASET = "aupguard.decision"
# Characters kept of url.full, url.path and url.query, as Squid's MAX_URL: a 100 KB query
# string would otherwise go into a record twice, and a record that large into every
# file, spool and collector connection (a syslog sink sends a record whole).
MAX_URL_FIELD = 8192
_log = get_logger(__name__)

# --- notice -----------------------------------------------------------------------------


def notice_version(text: str) -> str:
    """`sha256:` + 16 hex of the text with LF line ends and trailing whitespace stripped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    canonical = "\n".join(line.rstrip() for line in lines).rstrip()
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Notice:
    """The electronic-monitoring notice employees were given, and its content version."""

    text: str
    version: str

    @classmethod
    def from_text(cls, text: str) -> Notice:
        """Version `text` (blank text is allowed here; `records_required` refuses it)."""
        return cls(text, notice_version(text))


def records_required(notice: Notice | None) -> None:
    """Refuse monitoring without a notice (None or blank): ConfigError naming the keys."""
    if notice is None or not notice.text.strip():
        msg = (
            "records.notice: electronic monitoring requires a notice to employees: "
            "set records.notice.text or records.notice.file to the notice employees were "
            "given (every record carries its version as aupguard.notice_version)"
        )
        raise ConfigError([msg])


# --- the record -------------------------------------------------------------------------

# action -> (event.action, event.type)
_ACTIONS = {a: (a.label, {Action.BLOCK: "denied", Action.WARN: "info"}.get(a, "allowed"))
            for a in Action}  # fmt: skip
# source -> (event.category, observer.type)
_SOURCES = {Source.HTTP: (("network", "web"), "proxy"), Source.TLS: (("network",), "proxy"),
            Source.DNS: (("network",), "dns"), Source.CLI: (("network", "web"), "cli")}  # fmt: skip
# Top-level ECS fields an `extra` key may extend; any other key goes under `aupguard`.
ECS_ROOTS = frozenset(
    ("agent", "client", "cloud", "container", "destination", "dns", "ecs", "email", "error",
     "event", "file", "group", "host", "http", "labels", "log", "message", "network",
     "observer", "organization", "package", "process", "related", "rule", "server", "service",
     "source", "tags", "threat", "tls", "trace", "url", "user", "user_agent", "aupguard")
)  # fmt: skip


class _RandomPool(threading.local):
    """Random bytes fetched 28 KiB at a time per thread: one syscall per 4,096 event ids."""

    def __init__(self) -> None:
        self.pool = b""
        self.at = 0


_RANDOM = _RandomPool()


def new_event_id(now: float) -> str:
    """Return a 26-hex-digit time-sortable id: 48-bit milliseconds + 56 random bits."""
    rnd = _RANDOM
    at = rnd.at
    if at >= len(rnd.pool):
        rnd.pool, at = os.urandom(7 * 4096), 0
    rnd.at = at + 7
    return (int(now * 1000).to_bytes(6, "big") + rnd.pool[at : at + 7]).hex()


@functools.lru_cache(maxsize=8)
def iso_second(sec: int) -> str:
    """Whole epoch seconds as ISO 8601 UTC without a fraction: `2026-11-23T13:08:12`."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def format_timestamp(now: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with microseconds: `2026-11-23T13:08:12.123456Z`."""
    sec, micros = divmod(round(now * 1_000_000), 1_000_000)
    return f"{iso_second(sec)}.{micros:06d}Z"


def _match(m: Match) -> dict[str, Any]:
    return {"category": m.category, "entry": m.entry, "source": m.source}


def _subject(record: dict[str, Any], request: Request, found: list[str]) -> list[str]:
    """Add what was asked for in the source's ECS field set (url, dns or tls).

    URL fields longer than `MAX_URL_FIELD` are cut to it; their names are returned.
    """
    if request.source is Source.DNS:
        record["dns"] = {"question": {"name": request.host}}
        return []
    if request.source is Source.TLS:
        record["tls"] = {"client": {"server_name": request.host}}
        return []
    url: dict[str, Any] = {"domain": request.host}
    if request.url is not None:
        full, what = redact_url(request.url)
        found.extend(what)
        url["full"] = full
        scheme, sep, rest = full.partition("://")
        if sep:
            url["scheme"] = scheme
        query = rest.partition("#")[0].partition("?")[2]
        if query:
            url["query"] = query
    if request.path is not None:
        path, what = redact_path(request.path.partition("?")[0].partition("#")[0])
        found.extend(what)
        url["path"] = path
    record["url"] = url
    cut = [key for key in ("full", "path", "query") if len(url.get(key, "")) > MAX_URL_FIELD]
    for key in cut:
        url[key] = url[key][:MAX_URL_FIELD]
    return [f"url.{key}" for key in cut]


def _aupguard(  # noqa: PLR0913  (the record's own inputs, passed on)
    decision: Decision,
    client: Client,
    event_id: str,
    notice: Notice,
    *,
    policy_rev: str,
    lists_rev: str | None,
) -> dict[str, Any]:
    """Return the fields ECS has no name for."""
    fields: dict[str, Any] = {
        "category": decision.category,
        "categories": list(decision.categories),
        "groups": sorted(client.groups),
        "layer": decision.layer,
        "schedule": decision.schedule,
        "reference_id": event_id,
        "policy_version": policy_rev,
        "lists_version": lists_rev,
        "notice_version": notice.version,
        "reason_label": decision.reason_label,
        "matched": [_match(m) for m in decision.classification.matches],
        "overridden": [_match(m) for m in decision.classification.overridden],
        "exception": decision.exception,
        "user_independent": decision.user_independent,
    }
    if decision.clause is not None:
        fields["clause"] = decision.clause
    if decision.notes:
        fields["notes"] = list(decision.notes)
    return fields


def _put(target: dict[str, Any], key: str, value: Any) -> None:
    """Set `target[key]`, merging mappings recursively into dicts this record owns."""
    old = target.get(key)
    if isinstance(value, Mapping):
        if not isinstance(old, dict):
            old = target[key] = {}
        for k, v in value.items():
            _put(old, k, v)
    else:
        target[key] = value


def merge_extra(record: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Merge `extra` (dotted keys allowed) at the top level for ECS roots, else under aupguard."""
    own = record["aupguard"]
    for key, value in extra.items():
        *parents, leaf = key.split(".")
        target = record if (parents[0] if parents else leaf) in ECS_ROOTS else own
        for part in parents:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        _put(target, leaf, value)


def build_record(  # noqa: PLR0913 the inputs are named, keyword-only and all needed
    *,
    request: Request,
    client: Client,
    decision: Decision,
    now: float,
    policy_rev: str,
    notice: Notice,
    lists_rev: str | None = None,
    event_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the one record of one decision: JSON-ready, ECS names, redacted (docs/records.md).

    `lists_rev` is the category lists' version (`index.lists_version`); None when unknown.
    """
    eid = event_id or new_event_id(now)
    categories, observer = _SOURCES[request.source]
    action, event_type = _ACTIONS[decision.action]
    record: dict[str, Any] = {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": eid,
            "kind": "event",
            "category": list(categories),
            "type": [event_type],
            "action": action,
            "dataset": DATASET,
            "reason": decision.reason,
        },
        "source": {"ip": client.ip},
    }
    if client.user is not None:
        record["user"] = {"name": client.user}
    found: list[str] = []
    truncated = _subject(record, request, found)
    record["rule"] = {"name": decision.rule, "ruleset": decision.layer}
    record["observer"] = {"type": observer, "product": "aupguard"}
    record["aupguard"] = _aupguard(
        decision, client, eid, notice, policy_rev=policy_rev, lists_rev=lists_rev
    )
    if found:
        record["aupguard"]["redacted"] = list(dict.fromkeys(found))
    if truncated:
        record["aupguard"]["truncated"] = truncated
    if extra:
        merge_extra(record, extra)
    return record


def _json_default(value: object) -> object:
    """Encode sets as sorted lists and anything else unknown as str(): keep the record."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


def encode(record: object) -> str:
    """One record as compact JSON (UTF-8 text, no line end); TypeError if it cannot be."""
    return orjson.dumps(record, default=_json_default).decode()


def dropped_record(count: int, total: int, now: float) -> dict[str, Any]:
    """Build the record a writer emits after `count` drops (`total` since start)."""
    eid = new_event_id(now)
    return {
        "@timestamp": format_timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": eid,
            "kind": "event",
            "type": ["info"],
            "action": "records-dropped",
            "outcome": "failure",
            "dataset": DATASET,
            "reason": f"{count} records dropped (queue full, unserialisable or after close)",
        },
        "observer": {"product": "aupguard"},
        "aupguard": {"reference_id": eid, "dropped": count, "dropped_total": total},
    }
