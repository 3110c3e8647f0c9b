"""The running engine and its one reload path (startup, SIGHUP and `aupguard lists update`).

Reload is transactional: config and lists are loaded into a *new* Engine off to the side;
only when that succeeds does one reference assignment swap it in. In-flight decisions keep
the Engine they started with. A failed reload keeps the last good engine and says why.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from agent.config import Config
from agent.errors import AupguardError
from agent.metrics import RELOADS
from agent.pipeline import Engine

log = structlog.get_logger("aupguard.runtime")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: whether it swapped, the revision in force and why it failed."""

    ok: bool
    revision: str
    error: str | None = None


def settle_gc(young: int | None = None) -> None:
    """Keep the garbage collector off long-lived tables and out of the hot path.

    After loading: collect, then freeze what survived (FACTS.md: a collector walking the
    loaded engine cost the proxy 6 % and doubled its p90), unfreezing first so a replaced
    engine's cycles can go after a reload. `young` raises the young-generation threshold
    (700 by default): the DNS filter's records are short-lived dicts and it gained 17 % with
    50,000, while mitmproxy lost 6 % and 20 % at p99 with it, so only the DNS filter sets it.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if young is not None:
        gc.set_threshold(young, 20, 20)


def restart_only_changes(old: Config, new: Config, sections: Iterable[str]) -> list[str]:
    """Which of `sections` changed in ways a reload does not apply (a restart does).

    `dns`: the DNS filter's listeners and modes. `proxy`: the proxy's settings, parsed at
    its start (pages, throttling, decrypt exceptions, listeners). `records`: where records
    go (the writer is built at start); the notice, also under `records:`, is reloaded.
    """
    changed = []
    if "dns" in sections and old.dns != new.dns:
        changed.append("dns")
    if "proxy" in sections and old.proxy != new.proxy:
        changed.append("proxy")
    if "records" in sections and replace(old.records, notice=new.records.notice) != new.records:
        changed.append("records")
    return changed


class Runtime:
    """Holds the current Engine; `engine` is read lock-free on every decision."""

    def __init__(
        self,
        config_path: Path | None,
        engine: Engine | None = None,
        *,
        restart_only: tuple[str, ...] = ("dns", "records"),
    ) -> None:
        self.config_path = config_path
        self.restart_only = restart_only  # sections of this service a reload cannot apply
        self.engine = engine if engine is not None else Engine.load(config_path)
        self.loaded_at = time.time()
        self.reloads = 0
        self.failed_reloads = 0
        self.last_error: str | None = None
        self._listeners: list[Callable[[Engine], None]] = []
        self._lock = threading.Lock()

    def on_reload(self, listener: Callable[[Engine], None]) -> None:
        """Call `listener(new_engine)` after every successful swap."""
        self._listeners.append(listener)

    def reload(self) -> ReloadResult:
        """Load config and lists anew; swap only on success."""
        with self._lock:
            try:
                fresh = Engine.load(self.config_path)
            except (AupguardError, OSError, ValueError) as e:
                self.failed_reloads += 1
                RELOADS.labels("failed").inc()
                self.last_error = str(e)
                log.error("reload_failed", keeping=self.engine.revision, error=str(e))
                return ReloadResult(ok=False, revision=self.engine.revision, error=str(e))
            old, self.engine = self.engine, fresh
            self.reloads += 1
            RELOADS.labels("ok").inc()
            self.loaded_at = time.time()
            self.last_error = None
        log.info("reloaded", revision=fresh.revision, previous=old.revision,
                 lists_version=fresh.lists_version, previous_lists=old.lists_version)  # fmt: skip
        if pending := restart_only_changes(old.config, fresh.config, self.restart_only):
            log.warning("reload_needs_restart", sections=pending,
                        detail="these settings take effect on restart; policy, lists and the "
                        "notice were reloaded")  # fmt: skip
        for listener in self._listeners:
            listener(fresh)
        return ReloadResult(ok=True, revision=fresh.revision)

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Reload on SIGHUP: from the event loop (in a worker thread) or a plain handler."""
        if loop is not None:

            def _reload_in_thread() -> None:
                loop.run_in_executor(None, self.reload)

            loop.add_signal_handler(signal.SIGHUP, _reload_in_thread)
        else:
            signal.signal(signal.SIGHUP, lambda _sig, _frame: self.reload())
