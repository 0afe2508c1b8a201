"""Great Expectations Data Docs that read offline: an index of every validation, no asset from a CDN.

GX 1.x renders each validation and suite as static HTML, but (1) its index lists only validations kept in a
validation-results store, which a gate run in an ephemeral context does not have, so the index is empty, and
(2) every page loads Bootstrap, jQuery, bootstrap-table, Vega and Font Awesome from CDNs (and logos from S3):
on a machine without internet the pages render blank or broken. A store must be readable where it lies, so
after GX builds the docs:
- every page is rewritten without remote stylesheets, scripts and images (parsed with the standard library's
  HTML parser, not patterns), with a small local stylesheet instead: the content is static HTML and reads well
  without them (the scripts only add sorting and filtering);
- `index.html` is ours: each suite, its status and counts, links to its validation and suite pages.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

STYLESHEET = "static/styles/jstip_offline.css"
_CSS = """body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.ok { color: #1a7f37; } .failed { color: #c62828; font-weight: bold; }
nav, .navbar { margin-bottom: 1em; }
ul { padding-left: 1.2em; }
code, pre { background: #f6f6f6; }
"""


def _remote(url: str | None) -> bool:
    return bool(url) and url.split(":", 1)[0].lower() in {"http", "https"} or (url or "").startswith("//")


class _Offline(HTMLParser):
    """Re-emits a page verbatim but for remote <script>, <link> and <img> elements, which it drops, and local
    assets that are not where the page says, which it points at the docs' own copy (GX's validation pages sit
    one directory deeper than their `../../../static/...` links assume); adds the local stylesheet."""

    def __init__(self, page: Path, docs_dir: Path):
        super().__init__(convert_charrefs=False)
        self.page, self.docs_dir = page, docs_dir
        self.out: list[str] = []
        self.skipping_script = False

    def _local(self, url: str) -> str:
        if (self.page.parent / url).exists() or "static/" not in url:
            return url
        ours = self.docs_dir / "static" / url.split("static/", 1)[1]
        return os.path.relpath(ours, self.page.parent) if ours.exists() else url

    def handle_starttag(self, tag, attrs, closed: bool = False):
        key = {"script": "src", "img": "src", "link": "href"}.get(tag)
        url = dict(attrs).get(key) if key else None
        if url and _remote(url):
            self.skipping_script = tag == "script" and not closed
            return
        if url and self._local(url) != url:
            attrs = [(k, self._local(v) if k == key else v) for k, v in attrs]
            shown = "".join(f' {k}="{html.escape(v, quote=True)}"' if v is not None else f" {k}" for k, v in attrs)
            self.out.append(f"<{tag}{shown}{' /' if closed else ''}>")
        else:
            self.out.append(self.get_starttag_text())
        if tag == "head":
            stylesheet = os.path.relpath(self.docs_dir / STYLESHEET, self.page.parent)
            self.out.append(f'<link rel="stylesheet" href="{html.escape(stylesheet)}">')

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs, closed=True)

    def handle_endtag(self, tag):
        if tag == "script" and self.skipping_script:
            self.skipping_script = False
            return
        self.out.append(f"</{tag}>")

    def handle_data(self, data):
        if not self.skipping_script:
            self.out.append(data)

    def handle_entityref(self, name):
        self.out.append(f"&{name};")

    def handle_charref(self, name):
        self.out.append(f"&#{name};")

    def handle_comment(self, data):
        self.out.append(f"<!--{data}-->")

    def handle_decl(self, decl):
        self.out.append(f"<!{decl}>")

    def unknown_decl(self, data):
        self.out.append(f"<![{data}]>")

    def handle_pi(self, data):
        self.out.append(f"<?{data}>")


def make_offline(page: Path, docs_dir: Path) -> None:
    parser = _Offline(page, docs_dir)
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    page.write_text("".join(parser.out), encoding="utf-8")


@dataclass(frozen=True)
class SuiteOutcome:
    suite: str
    success: bool
    evaluated: int
    failed: int
    table_rows: str  # e.g. "1,234 rows" or "100,000 of 2,500,000 rows (sample)"


def write_offline_docs(docs_dir: Path, outcomes: list[SuiteOutcome], title: str) -> Path:
    """Rewrite the pages GX built under `docs_dir` to need no network, and write an index of `outcomes`."""
    docs_dir = Path(docs_dir)
    (docs_dir / STYLESHEET).parent.mkdir(parents=True, exist_ok=True)
    (docs_dir / STYLESHEET).write_text(_CSS, encoding="utf-8")
    for page in sorted(docs_dir.rglob("*.html")):
        make_offline(page, docs_dir)
    rows = []
    for outcome in outcomes:
        validations = sorted((docs_dir / "validations" / outcome.suite).rglob("*.html"))
        suite_page = docs_dir / "expectations" / f"{outcome.suite}.html"
        links = [f'<a href="{html.escape(p.relative_to(docs_dir).as_posix())}">validation</a>' for p in validations[-1:]]
        if suite_page.exists():
            links.append(f'<a href="expectations/{html.escape(outcome.suite)}.html">suite</a>')
        status = '<span class="ok">passed</span>' if outcome.success else '<span class="failed">FAILED</span>'
        rows.append(f"<tr><td>{html.escape(outcome.suite)}</td><td>{status}</td><td>{outcome.evaluated}</td>"
                    f"<td>{outcome.failed}</td><td>{html.escape(outcome.table_rows)}</td>"
                    f"<td>{' · '.join(links)}</td></tr>")
    failed = sum(not o.success for o in outcomes)
    summary = (f"all {len(outcomes)} suites passed" if not failed else f"{failed} of {len(outcomes)} suites failed")
    index = docs_dir / "index.html"
    index.write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="stylesheet" href="{STYLESHEET}"></head>
<body><h1>{html.escape(title)}</h1>
<p>Great Expectations suites of the publish gate: {summary}.</p>
<table><thead><tr><th>suite</th><th>status</th><th>expectations</th><th>failed</th><th>rows validated</th>
<th>pages</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
""", encoding="utf-8")
    return index
