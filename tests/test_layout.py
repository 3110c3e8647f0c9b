"""Every module has a test file named after it (like mitmproxy's test/filename_matching.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Modules whose behaviour is covered through another module's tests, and why.
COVERED_ELSEWHERE = {
    "agent/__main__.py": "tests/agent/test_cli.py runs `python -m agent`",
    "agent/errors.py": "exception types asserted where they are raised",
    "agent/schema.py": "the decoder is tested through tests/agent/test_config.py tables",
    "agent/config_check.py": "cross-reference checks are tested in tests/agent/test_config.py",
    "agent/runtime.py": "reload is tested in tests/agent/test_pipeline.py",
    "agent/logcheck.py": "tests/agent/test_chain.py runs `aupguard logs verify` and `logs keygen`",
}


def modules() -> list[str]:
    return sorted(
        str(p.relative_to(ROOT))
        for pkg in ("agent", "addons")
        for p in (ROOT / pkg).glob("*.py")
        if p.name != "__init__.py"
    )


@pytest.mark.parametrize("module", modules())
def test_module_has_a_test_file(module: str) -> None:
    """tests/<package>/test_<module>.py exists, or the module is listed with a reason."""
    path = Path(module)
    expected = ROOT / "tests" / path.parent / f"test_{path.stem}.py"
    assert expected.exists() or module in COVERED_ELSEWHERE, (
        f"{module}: add {expected.relative_to(ROOT)}"
    )


def test_exemptions_are_current() -> None:
    """Every exemption names a module that still exists."""
    assert set(COVERED_ELSEWHERE) <= set(modules())
