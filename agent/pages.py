"""Block, warn and error pages: self-contained HTML for navigations, short JSON otherwise.

Everything shown is escaped here, once (a page that reflects a URL is a classic XSS target).
Agencies override texts with `PageTexts` fields or the whole template (`string.Template`
with `$`-placeholders; values arrive already escaped).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

NAVIGATION_DESTS = frozenset({"document", "iframe", "frame", "embed", "object"})


@dataclass(frozen=True, slots=True)
class PageTexts:
    """Texts an agency may override (ProxySection fields map onto these)."""

    lang: str = "en"
    contact: str = "your IT service desk"
    exception_howto: str = (
        "If you need this site for state business, ask your supervisor to request an "
        "exception; exceptions require the written approval of the State CIO."
    )
    block_title: str = "This site is blocked"
    warn_title: str = "This site may not be appropriate for work"
    error_title: str = "This site could not be reached safely"
    suspended_title: str = "Web access is suspended"
    continue_label: str = "Continue to the site"
    notice_title: str = "Notice of electronic monitoring"
    acknowledge_label: str = "I acknowledge"


@dataclass(frozen=True, slots=True)
class PageFacts:
    """What a page tells the user about one decision."""

    url: str
    category: str | None
    clause: str | None
    time: str
    reference: str
    notice: str = ""
    continue_href: str | None = None
    detail: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:1rem/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1a1a1a;background:#f4f4f4}
main{max-width:40rem;margin:0 auto;padding:1.25rem;background:#fff}
h1{font-size:1.5rem;line-height:1.25;margin:.5rem 0 1rem;color:#8b0000}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
dl{margin:0}dt{font-weight:600;margin-top:.5rem}dd{margin:0}
.url,dd{overflow-wrap:anywhere;word-break:break-word}
.notice{font-size:.9rem;color:#333;border-top:1px solid #767676;padding-top:.75rem}
a.button{display:inline-block;margin:1rem 0;padding:.75rem 1.25rem;background:#0b4f9c;
color:#fff;text-decoration:none;border-radius:.25rem;font-weight:600}
a.button:focus{outline:3px solid #ffbf47;outline-offset:2px}
button{font:inherit;margin:1rem 0;padding:.75rem 1.25rem;background:#0b4f9c;color:#fff;
border:0;border-radius:.25rem;font-weight:600;cursor:pointer}
button:focus{outline:3px solid #ffbf47;outline-offset:2px}
""".strip()

# Both pages start alike: language, phone viewport, no referrer leak, one h1.
_HEAD = """<!DOCTYPE html>
<html lang="$lang">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>$title</title>
<style>$style</style>
</head>
<body>
<main>
<h1>$title</h1>
"""

DEFAULT_TEMPLATE = string.Template(
    _HEAD
    + """<p>$lead</p>
<dl>
<dt>Requested address</dt><dd class="url" id="aup-url">$url</dd>
<dt>Category</dt><dd id="aup-category">$category</dd>
<dt>Policy</dt><dd id="aup-clause">$clause</dd>
<dt>Time</dt><dd id="aup-time">$time</dd>
<dt>Reference</dt><dd id="aup-reference">$reference</dd>
</dl>
$action
<h2>Need help?</h2>
<p>Contact $contact and quote the reference above.</p>
<h2>Requesting an exception</h2>
<p>$exception_howto</p>
<p class="notice" id="aup-notice">$notice</p>
</main>
</body>
</html>
"""
)

NOTICE_TEMPLATE = string.Template(
    _HEAD
    + """<p>Before you continue, read the notice below and acknowledge it.</p>
<div class="notice" id="aup-notice">$paragraphs</div>
<p>Notice version <span id="aup-notice-version">$version</span>.
You asked for <span class="url" id="aup-url">$url</span>.</p>
<form method="post" action="$action">
<button type="submit" id="aup-acknowledge">$label</button>
</form>
<h2>Need help?</h2>
<p>Contact $contact.</p>
</main>
</body>
</html>
"""
)

_LEADS = {
    "block": "Access to this address is not permitted on state systems.",
    "warn": "This address is in a category that is limited on state systems. "
    "Your visit will be recorded if you continue.",
    "error": "The gateway could not verify this site's identity, so it did not load it.",
    "suspended": "Web access through this gateway is suspended because the records that the "
    "electronic-monitoring policy requires cannot be stored right now. It resumes by itself "
    "when they can.",
}


class Pages:
    """Renders pages with one template and one set of texts (chosen in `configure`)."""

    def __init__(self, texts: PageTexts | None = None, template: Path | None = None) -> None:
        self.texts = texts or PageTexts()
        self.template = (
            string.Template(template.read_text(encoding="utf-8")) if template else DEFAULT_TEMPLATE
        )

    def render(self, kind: str, facts: PageFacts) -> str:
        """The page for `kind` (block, warn or error) with every value escaped."""
        t = self.texts
        title = {
            "block": t.block_title,
            "warn": t.warn_title,
            "error": t.error_title,
            "suspended": t.suspended_title,
        }[kind]
        action = ""
        if kind == "warn" and facts.continue_href:
            href = html.escape(facts.continue_href, quote=True)
            label = _e(t.continue_label)
            action = f'<p><a class="button" id="aup-continue" href="{href}">{label}</a></p>'
        lead = _LEADS[kind] + (f" {facts.detail}" if facts.detail else "")
        values = {
            "lang": _e(t.lang),
            "title": _e(title),
            "style": _STYLE,
            "lead": _e(lead),
            "url": _e(facts.url),
            "category": _e(facts.category or "uncategorised"),
            "clause": _e(facts.clause or "Acceptable Use of State Systems"),
            "time": _e(facts.time),
            "reference": _e(facts.reference),
            "action": action,
            "contact": _e(t.contact),
            "exception_howto": _e(t.exception_howto),
            "notice": _e(facts.notice),
            **{k: _e(v) for k, v in facts.extra.items()},
        }
        return self.template.safe_substitute(values)

    def body(self, kind: str, facts: PageFacts, headers: Mapping[str, str]) -> tuple[bytes, str]:
        """(body, content type): the HTML page for a navigation, else a short reason."""
        if wants_html(headers):
            return self.render(kind, facts).encode(), "text/html; charset=utf-8"
        return short_body(kind, facts, headers)

    def render_notice(self, *, url: str, notice: str, version: str, action: str) -> str:
        """The monitoring-notice page with an "I acknowledge" button posting to `action`."""
        t = self.texts
        paragraphs = "".join(f"<p>{_e(p.strip())}</p>" for p in notice.split("\n\n") if p.strip())
        return NOTICE_TEMPLATE.substitute(
            lang=_e(t.lang),
            title=_e(t.notice_title),
            style=_STYLE,
            paragraphs=paragraphs,
            version=_e(version),
            url=_e(url),
            action=_e(action),
            label=_e(t.acknowledge_label),
            contact=_e(t.contact),
        )


def page_time(config: object, now: float) -> str:
    """`now` as a page shows it, in the policy's time zone (UTC when it has none)."""
    zone = getattr(config, "timezone", dt.UTC)
    return dt.datetime.fromtimestamp(now, zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def wants_html(headers: Mapping[str, str]) -> bool:
    """True for a navigation: `Sec-Fetch-Dest: document`, or `Accept: text/html` without it."""
    dest = headers.get("sec-fetch-dest")
    if dest is not None:
        return dest.strip().lower() in NAVIGATION_DESTS
    return "text/html" in headers.get("accept", "").lower()


def short_body(kind: str, facts: PageFacts, headers: Mapping[str, str]) -> tuple[bytes, str]:
    """A short JSON (or plain text) reason for non-navigation requests: (body, content type)."""
    doc = {
        "error": {
            "block": "blocked",
            "warn": "warning",
            "error": "upstream_error",
            "suspended": "suspended",
        }[kind],
        "category": facts.category,
        "clause": facts.clause,
        "reference": facts.reference,
        "url": facts.url,
    }
    if facts.continue_href:
        doc["continue"] = facts.continue_href
    if facts.detail:
        doc["reason"] = facts.detail
    if "json" in headers.get("accept", "").lower() or "*/*" in headers.get("accept", "*/*"):
        return json.dumps(doc).encode(), "application/json"
    what = facts.detail or facts.category or "uncategorised"
    text = f"{doc['error']}: {what} (reference {facts.reference})\n"
    return text.encode(), "text/plain; charset=utf-8"
