"""Continue tokens: bound to subject, category and host; unforgeable; shared across workers."""

from __future__ import annotations

import contextlib
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.tokens import Allowances, Grant, TokenError, TokenSigner, load_secret

SECRET = b"k" * 32
GRANT = Grant("alice", "games", "games.test", "https://games.test/x", 1000.0)


def test_round_trip_on_another_worker():
    """A token issued by one signer verifies on another with the same secret."""
    token = TokenSigner(SECRET).issue(GRANT)
    assert TokenSigner(SECRET).verify(token, subject="alice", host="games.test", now=999) == GRANT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"subject": "bob"}, "someone else", id="other-user"),
        pytest.param({"host": "casino.test"}, "another host", id="other-host"),
        pytest.param({"now": 1000.5}, "expired", id="expired"),
    ],
)
def test_refused(kwargs, message):
    """Replays by another user, on another host, or late are refused."""
    token = TokenSigner(SECRET).issue(GRANT)
    args = {"subject": "alice", "host": "games.test", "now": 10.0} | kwargs
    with pytest.raises(TokenError, match=message):
        TokenSigner(SECRET).verify(token, **args)


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("", id="empty"),
        pytest.param("abc", id="no-dot"),
        pytest.param("a.b.c", id="two-dots"),
        pytest.param("!!!.???", id="not-base64"),
        pytest.param("x" * 5000 + ".y", id="too-long"),
    ],
)
def test_malformed(token):
    """Garbage is refused, never crashes."""
    with pytest.raises(TokenError):
        TokenSigner(SECRET).verify(token, subject="alice", host="games.test", now=0)


def test_other_secret_and_category_swap():
    """A different secret, or a payload with another category, fails the MAC."""
    token = TokenSigner(SECRET).issue(GRANT)
    with pytest.raises(TokenError, match="signature"):
        TokenSigner(b"z" * 32).verify(token, subject="alice", host="games.test", now=0)
    other = TokenSigner(b"z" * 32).issue(Grant("alice", "gambling", "games.test", "u", 1e9))
    forged = other.split(".")[0] + "." + token.split(".")[1]
    with pytest.raises(TokenError, match="signature"):
        TokenSigner(SECRET).verify(forged, subject="alice", host="games.test", now=0)


@given(st.binary(max_size=200))
def test_fuzz_never_crashes(data):
    """Any bytes as a token give a grant or TokenError, nothing else."""
    with contextlib.suppress(TokenError):
        TokenSigner(SECRET).verify(data.decode("latin-1"), subject="a", host="h", now=0)


def test_load_secret_creates_0600(tmp_path):
    """A missing secret file is created with mode 0600 and reused afterwards."""
    path = tmp_path / "k"
    first = load_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret(path) == first
    (tmp_path / "short").write_bytes(b"x")
    with pytest.raises(ValueError, match="at least"):
        load_secret(tmp_path / "short")


def test_allowances_expire_and_are_bounded():
    """Allowances end at their time and the oldest are evicted past the bound."""
    a = Allowances(max_entries=2)
    a.allow("alice", "games", 10)
    assert a.allowed("alice", "games", 5)
    assert not a.allowed("alice", "gambling", 5)
    assert not a.allowed("alice", "games", 11)
    for who in ("b", "c", "d"):
        a.allow(who, "games", 100)
    assert len(a) == 2
    assert not a.allowed("b", "games", 1)
