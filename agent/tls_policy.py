"""TLS ClientHellos without SNI: decided by the destination address and `proxy.no_sni`.

`intercept` (the default) decrypts the connection and decides every request on its Host
header and the destination (domain fronting rules still apply); `refuse` refuses it at the
ClientHello without decrypting (the SNI-refusal path: `server_connect` error, which needs
`connection_strategy=lazy`) and records `event.action: refuse`, reason "no SNI".
"""

from __future__ import annotations

from typing import Any

from agent.config import NoSni
from agent.model import Source

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
