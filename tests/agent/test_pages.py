"""Block/warn/error pages: escaped, accessible, overridable; short bodies for non-navigation."""

from __future__ import annotations

import json

import pytest

from agent.pages import PageFacts, Pages, PageTexts, short_body, wants_html

FACTS = PageFacts(
    url='https://x.test/"><script>alert(1)</script>',
    category="gambling",
    clause="No <b>gambling</b>.",
    time="2026-11-23 10:00:00 UTC",
    reference="01abc",
    notice="NOTICE & monitoring",
)


@pytest.mark.parametrize("kind", ["block", "warn", "error"])
def test_escaped_and_accessible(kind):
    """Every value is escaped; the page has lang, viewport, one h1 and the facts."""
    page = Pages().render(kind, FACTS)
    assert "<script>" not in page
    assert "&quot;&gt;&lt;script&gt;" in page
    assert "No &lt;b&gt;gambling&lt;/b&gt;." in page
    assert "NOTICE &amp; monitoring" in page
    assert '<html lang="en">' in page
    assert 'name="viewport" content="width=device-width, initial-scale=1"' in page
    assert page.count("<h1>") == 1
    assert "01abc" in page
    assert "CIO" in page


def test_warn_continue_href_escaped():
    """The continue link is an escaped attribute."""
    facts = PageFacts(
        url="u",
        category="games",
        clause=None,
        time="t",
        reference="r",
        continue_href='/.aupguard/continue?token=a"b',
    )
    page = Pages().render("warn", facts)
    assert 'href="/.aupguard/continue?token=a&quot;b"' in page


def test_agency_overrides(tmp_path):
    """Agencies override texts and the whole template."""
    tpl = tmp_path / "t.html"
    tpl.write_text('<html lang="$lang"><h1>$title</h1>$url $contact</html>')
    texts = PageTexts(lang="es", contact="mesa de ayuda <x>", block_title="Bloqueado")
    page = Pages(texts, tpl).render("block", FACTS)
    assert page.startswith('<html lang="es"><h1>Bloqueado</h1>')
    assert "mesa de ayuda &lt;x&gt;" in page


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"sec-fetch-dest": "document"}, True, id="document"),
        pytest.param({"sec-fetch-dest": "empty", "accept": "text/html"}, False, id="fetch"),
        pytest.param({"accept": "text/html,*/*"}, True, id="accept-html"),
        pytest.param({"accept": "application/json"}, False, id="json"),
        pytest.param({}, False, id="none"),
    ],
)
def test_wants_html(headers, expected):
    """Navigation is Sec-Fetch-Dest: document, or Accept: text/html without Sec-Fetch-Dest."""
    assert wants_html(headers) is expected


def test_short_json():
    """Non-navigation requests get a short JSON reason with the reference."""
    body, ctype = short_body("block", FACTS, {"accept": "application/json"})
    assert ctype == "application/json"
    assert json.loads(body)["reference"] == "01abc"
