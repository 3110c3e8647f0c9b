"""The compiled index file: reused when lists are unchanged, rebuilt and swapped when not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import index as index_module
from agent.classifier import Classifier
from agent.errors import ListRejected
from agent.index import (
    KEEP_BUILDS,
    build_index,
    lists_version,
    load_index,
    open_index,
    open_latest,
)
from agent.lists import ListFormat, ListSource
from tests.agent.test_classifier import make_index, write_lists

# --- index file: cache, rebuild, swap --------------------------------------------------------


def test_load_index_reuses_cache_when_lists_unchanged(tmp_path: Path) -> None:
    """A restart with unchanged lists maps the cached file instead of rebuilding it."""
    sources = write_lists(tmp_path / "lists", {"webmail": "x.com\n"})
    first = load_index(sources, tmp_path / "cache")
    before = first.path.stat()
    second = load_index(sources, tmp_path / "cache")
    after = second.path.stat()
    assert second.path == first.path
    assert after.st_ino == before.st_ino  # a rebuild would os.replace a new file


def test_load_index_rebuilds_when_a_list_changes(tmp_path: Path) -> None:
    """Changing a list builds a new index; old builds beyond the newest few are removed but
    stay usable while mapped."""
    sources = write_lists(tmp_path / "lists", {"webmail": "x.com\n"})
    old = load_index(sources, tmp_path / "cache")
    for n in range(KEEP_BUILDS - 1):
        write_lists(tmp_path / "lists", {"webmail": f"v{n}.com\n"})
        os.utime(old.path, (1, 1))  # the first build is the oldest
        load_index(sources, tmp_path / "cache")
    assert old.path.exists()
    write_lists(tmp_path / "lists", {"webmail": "y.com\nz.com\n"})
    new = load_index(sources, tmp_path / "cache")
    assert new.path != old.path
    assert not old.path.exists()
    assert len(list((tmp_path / "cache").glob("index-*.aupidx"))) == KEEP_BUILDS
    assert [m.entry for m in Classifier(old).classify("x.com", None).matches] == ["x.com"]
    assert [m.entry for m in Classifier(new).classify("z.com", None).matches] == ["z.com"]
    assert Classifier(new).classify("x.com", None).matches == ()


def test_two_configs_sharing_a_cache_do_not_rebuild_each_other(tmp_path: Path) -> None:
    """A what-if run with another config leaves the gateway's build in place for its restart."""
    gateway = write_lists(tmp_path / "a", {"webmail": "x.com\n"})
    other = write_lists(tmp_path / "b", {"games": "y.com\n"})
    first = load_index(gateway, tmp_path / "cache")
    load_index(other, tmp_path / "cache")
    again = load_index(gateway, tmp_path / "cache")
    assert again.path == first.path
    assert again.path.stat().st_ino == first.path.stat().st_ino  # reused, not rebuilt


def test_rebuild_in_place_keeps_old_handle_working(tmp_path: Path) -> None:
    """build_index replaces the file atomically; an open index keeps answering from the old one."""
    path = tmp_path / "index.aupidx"
    build_index(write_lists(tmp_path, {"games": "old.com\n"}), path)
    old = open_index(path)
    build_index(write_lists(tmp_path, {"games": "new.com\n"}), path)
    assert Classifier(old).classify("old.com", None).categories == ("games",)
    assert Classifier(open_index(path)).classify("new.com", None).categories == ("games",)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    """A truncated or foreign cache file is rebuilt, not trusted."""
    sources = write_lists(tmp_path / "lists", {"games": "x.com\n"})
    index = load_index(sources, tmp_path / "cache")
    path = index.path
    del index
    path.write_bytes(path.read_bytes()[:100])
    assert Classifier(load_index(sources, tmp_path / "cache")).classify(
        "x.com", None
    ).categories == ("games",)


def test_rejected_list_keeps_last_good_index(tmp_path: Path) -> None:
    """A list over its error budget raises ListRejected; open_latest gives the last good index."""
    sources = write_lists(tmp_path / "lists", {"games": "x.com\n"})
    load_index(sources, tmp_path / "cache")
    write_lists(tmp_path / "lists", {"games": "bad..com\n" * 30})
    with pytest.raises(ListRejected, match=r"blocklists/games\.txt: 30 bad lines"):
        load_index(sources, tmp_path / "cache")
    last = open_latest(tmp_path / "cache")
    assert last is not None
    assert Classifier(last).classify("x.com", None).categories == ("games",)
    assert open_latest(tmp_path / "empty") is None


def test_index_stats_survive_the_cache(tmp_path: Path) -> None:
    """Entry counts and bad lines (with the first errors) are stored in the index header."""
    sources = write_lists(
        tmp_path / "lists", {"games": "x.com\n*bet..com\ny.com/z\n", "vpn": "v.com\n"}
    )
    built = load_index(sources, tmp_path / "cache").stats
    cached = load_index(sources, tmp_path / "cache").stats
    assert cached == built
    assert built.entries == {"games": 2, "vpn": 1}
    assert built.bad_lines == {"blocklists/games.txt": 1}
    assert [str(e) for e in built.errors["blocklists/games.txt"]] == [
        "blocklists/games.txt:2: '*bet..com': not a valid domain pattern"
    ]
    assert (built.domains, built.url_rules) == (2, 1)
    assert "games: 2 entries" in built.describe()


def test_index_knows_categories_and_labels(tmp_path: Path) -> None:
    """The header names the categories and list files."""
    index = make_index(tmp_path, {"vpn": "v.com\n", "games": "g.com\n"})
    assert index.categories == ("games", "vpn")
    assert index.lists == (("vpn", "blocklists/vpn.txt"), ("games", "blocklists/games.txt"))
    assert len(index) == 2


def test_index_file_is_compact(tmp_path: Path) -> None:
    """The file stays well under 40 bytes per listed domain (plus a fixed header)."""
    names = "".join(f"host{i}.example{i % 97}.com\n" for i in range(20000))
    index = make_index(tmp_path, {"c": names})
    assert (index.path.stat().st_size - 4096) / 20000 < 40


# --- lists version: what the lists say, named in every record ---------------------------------


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ("nothing", True),
        ("the lists' folder", True),  # copied elsewhere: the same lists
        ("one entry", False),
        ("a list's category", False),
        ("a list's format", False),
        ("a UT1 folder's urls file", False),
    ],
)
def test_lists_version_follows_content_not_paths(tmp_path: Path, change: str, same: bool) -> None:
    """Equal for the same categories, formats and bytes; different when any of them differ."""

    def sources(folder: Path, entry: str = "x.com", category: str = "games",
                fmt: ListFormat = ListFormat.AUTO, urls: str = "") -> list[ListSource]:  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "list.txt").write_text(f"{entry}\n")
        (folder / "ut1").mkdir(exist_ok=True)
        (folder / "ut1" / "domains").write_text("y.com\n")
        (folder / "ut1" / "urls").write_text(urls)
        return [ListSource(category, folder / "list.txt", fmt, "list.txt"),
                ListSource("vpn", folder / "ut1", ListFormat.UT1, "ut1")]  # fmt: skip

    base = lists_version(sources(tmp_path / "a"))
    other = {
        "nothing": lambda: sources(tmp_path / "a"),
        "the lists' folder": lambda: sources(tmp_path / "b"),
        "one entry": lambda: sources(tmp_path / "a", entry="z.com"),
        "a list's category": lambda: sources(tmp_path / "a", category="webmail"),
        "a list's format": lambda: sources(tmp_path / "a", fmt=ListFormat.DOMAINS),
        "a UT1 folder's urls file": lambda: sources(tmp_path / "a", urls="y.com/p\n"),
    }[change]()
    assert base.startswith("sha256:")
    assert (lists_version(other) == base) is same


def test_index_carries_its_lists_version(tmp_path: Path) -> None:
    """A build stores the version of the lists it was built from, and a new list a new one."""
    sources = write_lists(tmp_path / "lists", {"games": "x.com\n"})
    first = load_index(sources, tmp_path / "cache")
    assert first.lists_version == lists_version(sources)
    write_lists(tmp_path / "lists", {"games": "x.com\ny.com\n"})
    second = load_index(sources, tmp_path / "cache")
    assert second.lists_version == lists_version(sources) != first.lists_version


def test_a_build_without_lists_version_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build from before lists versions is redone at load, so records never lack one;
    it still serves as the last good build."""
    sources = write_lists(tmp_path / "lists", {"games": "x.com\n"})
    with monkeypatch.context() as m:
        m.setattr(index_module, "lists_version", lambda _sources: None)
        old = load_index(sources, tmp_path / "cache")
    assert old.lists_version is None
    last = open_latest(tmp_path / "cache")
    assert last is not None
    assert last.lists_version is None
    assert load_index(sources, tmp_path / "cache").lists_version == lists_version(sources)
