"""Warn-page "Continue" tokens and the allowances they grant.

A token is `base64url(payload).base64url(HMAC-SHA256(secret, payload))`; the payload names
the subject (user, else client address), category, host, original URL and expiry. Every
worker reads the same secret file, so a token issued by one verifies on all; changing any
field (another user, category or host) breaks the MAC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

SECRET_BYTES = 32
MIN_SECRET_BYTES = 16
TOKEN_MAX_LEN = 4096


class TokenError(ValueError):
    """A continue token is malformed, forged, expired or presented by someone else."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows: `subject` may visit `category` until the allowance ends."""

    subject: str
    category: str
    host: str
    url: str
    expires: float


def load_secret(path: Path) -> bytes:
    """Read the shared secret, creating it (0600, random) when missing; ValueError if too short."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
    data = path.read_bytes().strip()
    if len(data) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{path}: secret is {len(data)} bytes: expected at least {MIN_SECRET_BYTES}"
        )
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and verifies continue tokens with one shared secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"secret too short: expected at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, b"aupguard-continue-v1\0" + payload, hashlib.sha256).digest()

    def issue(self, grant: Grant) -> str:
        """A token for `grant`; `grant.expires` bounds when it may be redeemed."""
        doc = [grant.subject, grant.category, grant.host, grant.url, round(grant.expires, 3)]
        payload = json.dumps(doc, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, *, subject: str, host: str, now: float) -> Grant:
        """The grant of a genuine unexpired token for `subject` and `host`; TokenError otherwise."""
        if len(token) > TOKEN_MAX_LEN or token.count(".") != 1:
            raise TokenError("malformed token")
        body, mac = token.split(".")
        try:
            payload, tag = _unb64(body), _unb64(mac)
        except ValueError:
            raise TokenError("malformed token") from None
        if not hmac.compare_digest(tag, self._mac(payload)):
            raise TokenError("invalid signature")
        try:
            t_subject, category, t_host, url, expires = json.loads(payload)
            grant = Grant(str(t_subject), str(category), str(t_host), str(url), float(expires))
        except (ValueError, TypeError):
            raise TokenError("malformed payload") from None
        if grant.subject != subject:
            raise TokenError("token was issued to someone else")
        if grant.host != host.lower():
            raise TokenError("token was issued for another host")
        if now > grant.expires:
            raise TokenError("token expired")
        return grant


class Allowances:
    """In-memory (subject, category) -> allowed-until, bounded (oldest evicted first)."""

    __slots__ = ("_max", "_until")

    def __init__(self, max_entries: int = 100_000) -> None:
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._max = max_entries

    def allow(self, subject: str, category: str, until: float) -> None:
        """Allow `subject` to visit `category` until `until`."""
        key = (subject, category)
        self._until[key] = until
        self._until.move_to_end(key)
        while len(self._until) > self._max:
            self._until.popitem(last=False)

    def allowed(self, subject: str, category: str | None, now: float) -> bool:
        """True while an unexpired allowance exists (expired ones are dropped)."""
        if category is None:
            return False
        key = (subject, category)
        until = self._until.get(key)
        if until is None:
            return False
        if now > until:
            del self._until[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self._until)
