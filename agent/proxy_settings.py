"""Proxy settings the hot path needs, parsed once from `ProxySection` at configure time.

Secrets and template files are read here, so a bad setting stops the proxy at start with the
key named instead of failing on a request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from agent.config import Config, NoSni
from agent.pages import PageTexts
from agent.shared_state import STATE_FILE, SharedState, worker_count
from agent.throttle import ThrottleSpec
from agent.tokens import load_secret


@dataclass(frozen=True, slots=True)
class EnforcerSettings:
    """ProxySection fields the hot path needs, parsed once."""

    no_decrypt_hosts: frozenset[str]
    no_decrypt_categories: frozenset[str]
    record_allowed: bool
    warn_seconds: float
    secret: bytes
    texts: PageTexts
    template: Path | None
    user_map: Path | None
    throttle: ThrottleSpec | None
    throttle_schedule: str | None
    tenant_headers: dict[str, tuple[tuple[str, str], ...]]
    state_file: Path
    acknowledge_days: int | None  # None: no acknowledgment of the notice asked
    worker: str | None = None  # this worker's pid when several share the port (X-Aupguard-Worker)
    workers: int = 1  # proxy processes sharing the port (throttle pools are host-wide)
    no_sni: NoSni = NoSni.INTERCEPT  # a ClientHello without SNI (agent.tls_policy)

    @property
    def refuses_at_sni(self) -> bool:
        """True when some connections may be refused at the SNI (needs lazy connections)."""
        refuse = self.no_sni is NoSni.REFUSE
        return bool(self.no_decrypt_hosts or self.no_decrypt_categories or refuse)

    @classmethod
    def from_config(cls, config: Config) -> EnforcerSettings:
        """Parse `config.proxy`; ValueError/OSError for a bad secret or template file."""
        p = config.proxy
        secret_file = p.token_secret_file or _default_secret(config)
        texts = PageTexts(lang=p.page_lang, contact=p.page_contact)
        if p.page_exception_howto:
            texts = replace(texts, exception_howto=p.page_exception_howto)
        if p.page_template is not None:
            p.page_template.read_text(encoding="utf-8")  # fail at start, not on a request
        state_file = p.state_file or secret_file.parent / STATE_FILE
        SharedState.prepare(state_file)  # OSError now rather than at the first request
        if p.acknowledge.enabled and p.acknowledge.period_days < 1:
            raise ValueError(
                f"proxy.acknowledge.period_days: {p.acknowledge.period_days}: expected >= 1"
            )
        return cls(
            no_decrypt_hosts=frozenset(h.lower().rstrip(".") for h in p.no_decrypt_hosts),
            no_decrypt_categories=frozenset(p.no_decrypt_categories),
            record_allowed=p.record_allowed,
            warn_seconds=p.warn_minutes * 60.0,
            secret=load_secret(secret_file),
            texts=texts,
            template=p.page_template,
            user_map=p.user_map_file,
            throttle=_throttle_spec(config),
            throttle_schedule=p.throttle_schedule,
            tenant_headers={
                h.lower().rstrip("."): tuple(v.items()) for h, v in p.tenant_headers.items()
            },
            state_file=state_file,
            acknowledge_days=p.acknowledge.period_days if p.acknowledge.enabled else None,
            worker=str(os.getpid()) if worker_count() > 1 else None,
            workers=worker_count(),
            no_sni=NoSni(p.no_sni),
        )


def _throttle_spec(config: Config) -> ThrottleSpec | None:
    """The throttle settings, or None when no schedule is configured; ValueError if unknown."""
    p = config.proxy
    if p.throttle_schedule is None:
        return None
    if p.throttle_schedule not in config.schedules:
        names = ", ".join(sorted(config.schedules)) or "(none defined)"
        raise ValueError(
            f"proxy.throttle_schedule: unknown schedule {p.throttle_schedule!r}: "
            f"expected one of {names}"
        )
    if min(p.throttle_client_rate, p.throttle_aggregate_rate, p.throttle_window) <= 0:
        raise ValueError("proxy.throttle_*: rates and window must be positive")
    return ThrottleSpec(
        threshold=p.throttle_threshold,
        client_rate=p.throttle_client_rate,
        aggregate_rate=p.throttle_aggregate_rate,
        window=float(p.throttle_window),
        exempt_groups=frozenset(p.throttle_exempt_groups),
        exempt_hosts=frozenset(h.lower().rstrip(".") for h in p.throttle_exempt_hosts),
    )


def _default_secret(config: Config) -> Path:
    base = config.state_dir()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base / "continue.key"
