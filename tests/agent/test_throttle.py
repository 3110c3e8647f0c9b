"""Token buckets, byte windows and fair shares of the throttle pools, with an injected clock."""

from __future__ import annotations

import pytest

from agent.throttle import ByteWindow, ClientRateLimiter, Throttle, ThrottleSpec, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_burst_then_rate():
    """A full bucket lets the burst through, then debt is paid at `rate`."""
    clock = Clock()
    b = TokenBucket(rate=100, burst=50, clock=clock)
    assert b.reserve(50) == 0
    assert b.reserve(100) == pytest.approx(1.0)
    clock.t += 10
    assert b.reserve(10) == 0  # refilled, capped at the burst


def test_bucket_rejects_bad_rate():
    """Zero or negative rates are refused."""
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0, 1, Clock())


def test_window_sums_and_expires():
    """Bytes add up per client within the window and drop out after it."""
    w = ByteWindow(window=10)
    assert w.add("a", 5, 100.0) == 5
    assert w.add("a", 7, 101.5) == 12
    assert w.add("b", 1, 101.5) == 1
    assert w.total("a", 110.5) == 7
    assert w.total("a", 200) == 0


SPEC = ThrottleSpec(
    threshold=100_000,
    client_rate=1000,
    aggregate_rate=1500,
    window=60,
    exempt_groups=frozenset({"backup"}),
    exempt_hosts=frozenset({"mirror.test"}),
)


@pytest.mark.parametrize(
    ("active", "size", "recent", "expected"),
    [
        pytest.param(True, 100_001, 0, True, id="large-in-schedule"),
        pytest.param(False, 1_000_000, 0, False, id="outside-schedule"),
        pytest.param(True, 70_000, 0, False, id="below-threshold"),
        pytest.param(True, 70_000, 60_000, True, id="ranges-add-up"),
        pytest.param(True, 1_000, 200_000, False, id="tiny-bodies-never-paced"),
        pytest.param(True, None, 200_000, True, id="unknown-size-after-many-bytes"),
    ],
)
def test_should_pace(active, size, recent, expected):
    """Pace in the schedule when the size or the client's recent bytes pass the threshold."""
    t = Throttle(SPEC, lambda _now: active)
    if recent:
        t.window.add("10.0.0.1", recent, 5.0)
    assert t.should_pace("10.0.0.1", size, 5.0) is expected
    assert t.in_schedule(5.0) is active


@pytest.mark.parametrize(
    ("host", "groups", "expected"),
    [
        pytest.param("dl.mirror.test", (), True, id="exempt-host-subdomain"),
        pytest.param("example.test", ("backup",), True, id="exempt-group"),
        pytest.param("example.test", ("staff",), False, id="not-exempt"),
    ],
)
def test_exempt(host, groups, expected):
    """Exempt hosts (with subdomains) and groups are never paced."""
    assert Throttle(SPEC, lambda _n: True).exempt(host, groups) is expected


def test_fair_shares():
    """Transfers split their client's pool and all share the aggregate pool."""
    t = Throttle(SPEC, lambda _n: True)
    t.start("f1", "a")
    assert t.rates() == {"f1": 1000}
    t.start("f2", "a")
    assert t.rates() == {"f1": 500, "f2": 500}
    t.start("f3", "b")
    t.start("f4", "c")
    assert t.rates() == {"f1": 375, "f2": 375, "f3": 375, "f4": 375}
    assert t.finish("f1")
    assert not t.finish("f1")


def test_rate_limiter_refills() -> None:
    """A client gets `2 x rate` in a burst, then `rate` per second."""
    limiter = ClientRateLimiter(5)
    assert sum(limiter.allow("10.0.0.1", 100.0) for _ in range(20)) == 10
    assert sum(limiter.allow("10.0.0.1", 101.0) for _ in range(20)) == 5
    assert limiter.allow("10.0.0.2", 101.0)
