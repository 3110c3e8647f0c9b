"""Value types: action order and labels, categories of a classification, fast frozen init."""

from __future__ import annotations

import dataclasses

import pytest

from agent.model import Action, Classification, Client, Decision, Match, MatchKind, Request

WEBMAIL = Match("webmail", "x.com", "f:1", MatchKind.HOST, (0, 2, 0))
SHOPPING = Match("shopping", "x.com", "g:9", MatchKind.HOST, (0, 2, 0))
NEVER = Match(None, "x.com", "policy.yaml:3", MatchKind.HOST, (0, 2, 0))


def test_actions_order_by_restrictiveness() -> None:
    """block > warn > log > allow, and labels are the config words."""
    assert sorted(Action) == [Action.ALLOW, Action.LOG, Action.WARN, Action.BLOCK]
    assert [a.label for a in Action] == ["allow", "log", "warn", "block"]
    assert Action.parse("Block") is Action.BLOCK
    with pytest.raises(ValueError, match="expected one of block, warn, log, allow"):
        Action.parse("deny")


@pytest.mark.parametrize(
    ("matches", "categories", "never"),
    [
        pytest.param((), (), False, id="no-match"),
        pytest.param((WEBMAIL,), ("webmail",), False, id="one"),
        pytest.param((WEBMAIL, SHOPPING), ("shopping", "webmail"), False, id="several-sorted"),
        pytest.param((NEVER,), (), True, id="never-block"),
    ],
)
def test_classification_categories(
    matches: tuple[Match, ...], categories: tuple[str, ...], never: bool
) -> None:
    """The deciding level's categories, empty when a never-block entry decided."""
    cls = Classification("x.com", None, matches)
    assert cls.categories == categories
    assert cls.never_blocked is never


@pytest.mark.parametrize(
    ("cls", "args", "kwargs"),
    [
        pytest.param(Match, ("webmail", "x.com", "f:1", MatchKind.HOST, (0, 2, 0)), {}, id="match"),
        pytest.param(
            Classification,
            ("x.com",),
            {"path": "/a", "matches": (WEBMAIL,)},
            id="classification-defaults",
        ),
        pytest.param(Client, ("10.0.0.1",), {"groups": frozenset({"staff"})}, id="client"),
        pytest.param(Request, ("x.com", "/"), {}, id="request"),
        pytest.param(
            Decision,
            (
                Action.BLOCK,
                "webmail",
                ("webmail",),
                "r",
                "l",
                None,
                "why",
                "lbl",
                Classification("x.com", None),
            ),
            {"clause": "c"},
            id="decision",
        ),
    ],
)
def test_fast_init_matches_dataclass_semantics(cls: type, args: tuple, kwargs: dict) -> None:
    """The fast __init__ fills every field (defaults too) and the object stays frozen."""
    obj = cls(*args, **kwargs)
    names = [f.name for f in dataclasses.fields(cls)]
    expected = dict(zip(names, args, strict=False)) | kwargs
    for f in dataclasses.fields(cls):
        assert getattr(obj, f.name) == expected.get(f.name, f.default)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, names[0], None)
    with pytest.raises(TypeError):
        cls()
