"""agent.logs: operational log configuration and the secret-masking processor."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from agent.logs import configure_logging, get_logger, redact_secrets


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if h.get_name() == "aupguard"]:
        root.removeHandler(handler)
    root.setLevel(level)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            {"event": "login", "password": "hunter2"},
            {"event": "login", "password": "REDACTED", "redacted": ["password"]},
            id="password",
        ),
        pytest.param(
            {"event": "x", "db_token": "t", "Client_Secret": "s"},
            {
                "event": "x",
                "db_token": "REDACTED",
                "Client_Secret": "REDACTED",
                "redacted": ["db_token", "Client_Secret"],
            },
            id="key-contains-secret-word",
        ),
        pytest.param(
            {"event": "fetch", "headers": {"Authorization": "Bearer x", "Accept": "*/*"}},
            {
                "event": "fetch",
                "headers": {"Authorization": "REDACTED", "Accept": "*/*"},
                "redacted": ["headers.Authorization"],
            },
            id="nested-header",
        ),
        pytest.param(
            {"event": "fetch", "url": "https://lists.example/ut1.tgz?token=abc"},
            {
                "event": "fetch",
                "url": "https://lists.example/ut1.tgz?token=REDACTED",
                "redacted": ["url.query.token"],
            },
            id="url-value",
        ),
        pytest.param(
            {"event": "fetching https://x.example/?access_token=abc"},
            {
                "event": "fetching https://x.example/?access_token=REDACTED",
                "redacted": ["event.query.access_token"],
            },
            id="url-in-message",
        ),
        pytest.param(
            {"event": "cookie jar", "cookie": None},
            {"event": "cookie jar", "cookie": None},
            id="none-kept",
        ),
        pytest.param(
            {"event": "reload", "key": "groups.x", "count": 3},
            {"event": "reload", "key": "groups.x", "count": 3},
            id="benign-untouched",
        ),
    ],
)
def test_redact_secrets(event: dict[str, Any], expected: dict[str, Any]) -> None:
    """Values of secret-named keys and URL secrets are masked, and the masked paths are listed."""
    assert redact_secrets(None, "info", dict(event)) == expected


def test_redact_secrets_does_not_mutate_nested_values() -> None:
    """A dict passed to a log call is copied, not masked in place."""
    headers = {"Cookie": "sid=1"}
    redact_secrets(None, "info", {"event": "x", "headers": headers})
    assert headers == {"Cookie": "sid=1"}


def test_json_lines_for_journald(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a TTY, events are JSON lines with level, UTC timestamp and logger name, secrets masked."""
    configure_logging(level="info")
    log = get_logger("agent.test")
    log.debug("hidden")
    log.info("reload.done", revision="r1", api_key="k")
    [line] = lines(capsys.readouterr().out)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line.pop("timestamp"))
    assert line == {
        "event": "reload.done",
        "revision": "r1",
        "api_key": "REDACTED",
        "redacted": ["api_key"],
        "level": "info",
        "logger": "agent.test",
    }


def test_debug_level_and_exceptions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`level="debug"` shows debug events; exceptions are rendered as text in JSON."""
    configure_logging(json=True, level="DEBUG")
    log = get_logger("agent.test")
    log.debug("shown")
    try:
        (tmp_path / "missing" / "records.jsonl").write_text("x")
    except OSError:
        log.exception("records.sink_failed")
    first, second = lines(capsys.readouterr().out)
    assert first["event"] == "shown"
    assert second["level"] == "error"
    assert "FileNotFoundError" in second["exception"]


def test_console_on_tty(capsys: pytest.CaptureFixture[str]) -> None:
    """`json=False` renders a console view, not JSON."""
    configure_logging(json=False)
    get_logger("agent.test").warning("list.stale", name="gambling")
    out = capsys.readouterr().out
    assert "list.stale" in out
    assert "gambling" in out
    assert not out.startswith("{")


def test_stdlib_logging_goes_through_structlog(capsys: pytest.CaptureFixture[str]) -> None:
    """stdlib records (mitmproxy's) come out as the same JSON lines, with their logger name."""
    configure_logging(json=True)
    logging.getLogger("mitmproxy.proxy").warning("upstream %s failed", "example.org")
    logging.getLogger("mitmproxy.proxy").debug("not shown at info")
    [line] = lines(capsys.readouterr().out)
    assert line | {"timestamp": None} == {
        "event": "upstream example.org failed",
        "level": "warning",
        "logger": "mitmproxy.proxy",
        "timestamp": None,
    }


def test_reconfigure_replaces_handler() -> None:
    """Configuring twice leaves one aupguard handler on the root logger."""
    configure_logging(json=True)
    configure_logging(json=True)
    assert [h.get_name() for h in logging.getLogger().handlers].count("aupguard") == 1


def test_bad_level() -> None:
    """An unknown level names the ones that exist."""
    with pytest.raises(ValueError, match="unknown log level 'loud': expected one of debug, info"):
        configure_logging(level="loud")


def test_capture_logs_sees_operational_events() -> None:
    """Loggers are not cached, so tests can capture their events."""
    configure_logging(json=True)
    with capture_logs() as logs:
        get_logger("agent.test").info("started", port=8080)
    assert logs == [{"event": "started", "port": 8080, "log_level": "info"}]
