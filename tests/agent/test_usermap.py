"""The transparent-mode address -> user map: parsing, reload on change, last good kept."""

from __future__ import annotations

import os

from agent.usermap import UserMap, parse_user_map


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_parse_skips_malformed():
    """Comments, bad addresses and wrong field counts are skipped."""
    text = "10.0.0.1 alice # desk\n# comment\nnot-an-ip bob\n10.0.0.2\n2001:db8::1 carol\n"
    assert parse_user_map(text) == {"10.0.0.1": "alice", "2001:db8::1": "carol"}


def test_reload_on_change_and_keep_last_good(tmp_path):
    """A changed file is re-read after the interval; a vanished file keeps the last map."""
    path = tmp_path / "users"
    path.write_text("10.0.0.1 alice\n")
    clock = Clock()
    users = UserMap(path, interval=1.0, clock=clock)
    assert users.lookup("10.0.0.1") == "alice"
    assert users.lookup("::ffff:10.0.0.1") == "alice"
    path.write_text("10.0.0.1 bob\n")
    os.utime(path, ns=(1, 10**18))
    assert users.lookup("10.0.0.1") == "alice"  # within the interval
    clock.t = 2.0
    assert users.lookup("10.0.0.1") == "bob"
    path.unlink()
    clock.t = 4.0
    assert users.lookup("10.0.0.1") == "bob"


def test_no_file_means_no_user():
    """Without a configured file nobody is mapped."""
    assert UserMap(None).lookup("10.0.0.1") is None
