"""Operational logs (start, reload, errors) and the redaction both logs and records use.

structlog renders JSON lines to stdout for journald, or a console view on a TTY; stdlib
logging (mitmproxy's) goes through the same processors. Monitoring records are not
logs: they go through `agent.records`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import structlog

if TYPE_CHECKING:
    from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

REDACTED = "REDACTED"

# --- redaction (records and logs) ----------------------------------------------------

_SECRET_NAMES = frozenset(
    ("password", "passwd", "pwd", "pass", "token", "access_token", "id_token", "refresh_token",
     "key", "api_key", "apikey", "secret", "client_secret", "session", "sessionid", "sid",
     "auth", "code", "signature", "sig")
)  # fmt: skip
_SECRET_SUFFIXES = ("_password", "_passwd", "_pwd", "_pass", "_token", "_key", "_secret",
                    "_sid", "_auth", "_signature", "_sig")  # fmt: skip
_SECRET_PARTS = ("password", "passwd", "secret", "token", "sessid", "session", "signature",
                 "apikey", "credential")  # fmt: skip
# Every secret name contains one of these: a query without them (and without %-escapes)
# needs no parsing, which keeps the common case off urlsplit.
_SECRET_HINT = re.compile(
    r"pass|pwd|token|key|secret|sid|session|auth|code|sig|credential", re.IGNORECASE
)
_PAIR_SPLIT = re.compile(r"([&;])")
_PATH_PARAM = re.compile(r";([^;/=]+)=([^;/]+)")
_AUTH_HEADERS = frozenset({"authorization", "proxy-authorization"})
_SECRET_HEADERS = frozenset({"cookie", "set-cookie", "x-api-key", "x-auth-token"})
_URL_HEADERS = frozenset({"referer", "location", "content-location"})


def is_secret_name(name: str) -> bool:
    """Tell whether a parameter/header name carries credentials (case, `-`/`_` ignored)."""
    n = name.strip().lower().replace("-", "_")
    return n in _SECRET_NAMES or n.endswith(_SECRET_SUFFIXES) or any(p in n for p in _SECRET_PARTS)


def _redact_pairs(text: str, where: str, found: list[str]) -> str:
    """Replace the values of secret `name=value` pairs (`&` or `;` separated)."""
    if "=" not in text:
        return text
    pieces = _PAIR_SPLIT.split(text)
    for i in range(0, len(pieces), 2):
        raw, eq, value = pieces[i].partition("=")
        name = unquote_plus(raw)
        if eq and value and is_secret_name(name):
            pieces[i] = f"{raw}={REDACTED}"
            found.append(f"{where}.{name}")
    return "".join(pieces)


def _redact_path(path: str, found: list[str]) -> str:
    """Replace secret path parameters (`/cart;jsessionid=...`)."""

    def one(m: re.Match[str]) -> str:
        name = unquote_plus(m[1])
        if not is_secret_name(name):
            return m[0]
        found.append(f"url.path.{name}")
        return f";{m[1]}={REDACTED}"

    return _PATH_PARAM.sub(one, path) if ";" in path else path


def redact_url(url: str) -> tuple[str, tuple[str, ...]]:
    """Return `url` without userinfo or secret values, and the paths of what was removed."""
    head, _, query = url.partition("?")
    if not ("@" in head or "#" in url or ";" in url or "%" in query or _SECRET_HINT.search(query)):
        return url, ()
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: keep nothing we cannot read
        return REDACTED, ("url.full",)
    found: list[str] = []
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
        found.append("url.userinfo")
    path = _redact_path(parts.path, found)
    query = _redact_pairs(parts.query, "url.query", found)
    fragment = _redact_pairs(parts.fragment, "url.fragment", found)
    if not found:
        return url, ()
    return urlunsplit((parts.scheme, netloc, path, query, fragment)), tuple(dict.fromkeys(found))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Copy `headers` with credentials replaced by REDACTED (auth scheme kept) and URLs redacted."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        if low in _AUTH_HEADERS:
            scheme, space, _ = value.strip().partition(" ")
            out[name] = f"{scheme} {REDACTED}" if space else REDACTED
        elif low in _SECRET_HEADERS or is_secret_name(low):
            out[name] = REDACTED
        elif low in _URL_HEADERS:
            out[name] = redact_url(value)[0]
        else:
            out[name] = value
    return out


def redact_path(path: str) -> tuple[str, tuple[str, ...]]:
    """Return `path` (no query) with secret path parameters replaced, and what was replaced."""
    found: list[str] = []
    return _redact_path(path, found), tuple(found)


# --- operational logs -------------------------------------------------------------------

_SECRET_KEY_PARTS = ("password", "passwd", "token", "secret", "authorization", "cookie",
                     "api_key", "apikey", "credential")  # fmt: skip
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_HANDLER_NAME = "aupguard"


def _mask(key: str, value: Any, path: str, found: list[str], depth: int = 0) -> Any:
    """`value` with secrets masked; appends the masked paths to `found`."""
    if value is None:
        return None
    if any(p in key.lower() for p in _SECRET_KEY_PARTS):
        found.append(path)
        return REDACTED
    if isinstance(value, str) and "://" in value:
        clean, what = redact_url(value)
        found.extend(f"{path}{w.removeprefix('url')}" for w in what)
        return clean
    if isinstance(value, Mapping) and depth < 2:
        return {k: _mask(str(k), v, f"{path}.{k}", found, depth + 1) for k, v in value.items()}
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Mask values of secret-named keys and URL secrets; list the masked keys in `redacted`."""
    found: list[str] = []
    for key, value in event_dict.items():
        event_dict[key] = _mask(key, value, key, found)
    if found:
        event_dict["redacted"] = found
    return event_dict


def _level_number(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        names = ", ".join(_LEVELS)
        raise ValueError(f"unknown log level {level!r}: expected one of {names}") from None


def configure_logging(
    *, json: bool | None = None, level: str = "info", stdlib: bool = True
) -> None:
    """Log to stdout: JSON lines when not a TTY (or `json=True`), else a console view.

    `stdlib=False` leaves stdlib logging alone (mitmproxy's own log view prints it).
    """
    as_json = not sys.stdout.isatty() if json is None else json
    levelno = _level_number(level)
    shared: list[Processor] = [
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    tail: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if as_json
        else [structlog.dev.ConsoleRenderer()]
    )
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, *tail],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=_LoggerFactory(sys.stdout),
        # Not cached: loggers stay re-configurable (tests' capture_logs); the hot path
        # does not log, so the per-call bind costs nothing that matters.
        cache_logger_on_first_use=False,
    )
    if stdlib:
        _route_stdlib(shared, tail, levelno)


def _route_stdlib(pre_chain: list[Processor], tail: list[Processor], levelno: int) -> None:
    """Send stdlib logging (mitmproxy, asyncio) through the same processors to stdout."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)


class _NamedWriteLogger(structlog.WriteLogger):
    """A WriteLogger with a `name`, so `add_logger_name` works as for stdlib loggers."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _LoggerFactory:
    """`structlog.get_logger(name)` -> a named WriteLogger on `file`."""

    __slots__ = ("_file",)

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "aupguard")


def get_logger(name: str) -> FilteringBoundLogger:
    """Return the structlog logger `name` (shown as `logger`); configuration is looked up lazily."""
    return cast("FilteringBoundLogger", structlog.get_logger(name))
