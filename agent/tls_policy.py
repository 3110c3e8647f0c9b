"""TLS decisions at the ClientHello: no-decrypt pass-through, and ClientHellos without SNI.

No-decrypt hosts (`proxy.no_decrypt_hosts` / `no_decrypt_categories`) pass through untouched
only when the SNI is shown to be where the connection goes (`unproven_destination`): the
CONNECT authority in explicit mode, an address the gateway's DNS filter recently answered
for the name in transparent mode (agent.recent_answers). Otherwise they are intercepted.

Without SNI, `proxy.no_sni` decides: `intercept` (the default) decrypts the connection and
decides every request on its Host header and the destination (domain fronting rules still
apply); `refuse` refuses it at the ClientHello without decrypting (the SNI-refusal path:
`server_connect` error, which needs `connection_strategy=lazy`) and records
`event.action: refuse`, reason "no SNI".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.classifier import host_of, is_under
from agent.config import NoSni
from agent.model import Source

if TYPE_CHECKING:
    from agent.pipeline import Evaluation
    from agent.proxy_settings import EnforcerSettings
    from agent.recent_answers import RecentAnswers

NO_SNI_REASON = "no SNI"


def refuses_without_sni(policy: NoSni, sni: str | None) -> bool:
    """True when this ClientHello must be refused: no SNI and `proxy.no_sni: refuse`."""
    return sni is None and policy is NoSni.REFUSE


def no_sni_record(engine: Any, context: Any, now: float) -> dict[str, Any] | None:
    """The `refuse` record of a ClientHello without SNI, decided on the destination address.

    `context` is the connection's mitmproxy Context (client address, CONNECT authority or
    transparent destination). None when the destination is unknown or not a readable host.
    """
    address = context.server.address
    destination = str(address[0]).strip("[]").lower() if address else None
    client_ip = context.client.peername[0]
    if not destination:
        return None
    try:
        ev = engine.evaluate(client_ip, destination, now=now, source=Source.TLS, host_only=True)
    except ValueError:
        return None
    extra = {
        "event.action": "refuse",
        "event.type": ["denied"],
        "event.reason": NO_SNI_REASON,
        "aupguard.refused_reason": NO_SNI_REASON,
    }
    record: dict[str, Any] = engine.record(ev, now, extra=extra)
    record.pop("tls", None)  # the client named no server: do not pretend it did
    record["destination"] = {"address": destination}
    return record


def no_decrypt(settings: EnforcerSettings, ev: Evaluation) -> bool:
    """True for hosts/categories that must not be decrypted."""
    if settings.no_decrypt_categories.intersection(ev.decision.categories):
        return True
    return is_under(ev.request.host, settings.no_decrypt_hosts)


def unproven_destination(
    sni: str,
    destination: tuple[str, int] | None,
    modes: tuple[str, ...],
    answers: RecentAnswers,
    now: float,
) -> str | None:
    """None when the SNI is where the connection goes, else why that is not shown.

    Explicit mode: the CONNECT authority is the SNI. Transparent mode: the original
    destination is an address the gateway's DNS filter recently answered for the SNI.
    """
    if destination is None:
        return "no_destination"
    explicit = any(m.startswith("regular") for m in modes)
    if explicit and host_of(destination[0]) == sni:
        return None
    if any(m.startswith("transparent") for m in modes):
        if answers.answered(sni, destination[0], now):
            return None
        return "destination_not_answered"
    return "sni_not_connect_authority" if explicit else "mode_unverified"


def passthrough_fields(destination: tuple[str, int] | None, unproven: str | None) -> dict[str, Any]:
    """Record fields of a no-decrypt host's TLS decision: passed through, or why not."""
    extra: dict[str, Any] = {"aupguard.passthrough": unproven is None}
    if destination is not None:
        extra["destination.address"] = str(destination[0]).strip("[]").lower()
    if unproven is not None:
        extra["aupguard.passthrough_refused_reason"] = unproven
    return extra
