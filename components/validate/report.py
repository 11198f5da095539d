"""The validation report: Great Expectations' data docs inlined into ONE self-contained page.

Each table's validation result is rendered by GX's own renderers (ValidationResultsPageRenderer →
DefaultJinjaPageView, what `build_data_docs` writes per result); the pages' bodies and their
inline styles are inlined into one HTML document, GX's static stylesheet is inlined, and every
external reference (the CDN stylesheets and scripts the data docs load: Bootstrap, jQuery, Vega,
Font Awesome) is removed, so the page reads the same offline, in the KFP UI and as an MLflow
artefact. A small stylesheet stands in for Bootstrap's table styling. On top: our own summary
(passed / failed per severity, the failed expectations by name).

No user text: the results are SUMMARY counts without unexpected values (suites.RESULT_FORMAT),
and the page shows expectation names, bounds and counts only.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from components.validate.gate import GateResult

_FALLBACK_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 1.5em;
color:#212529}
table{border-collapse:collapse;margin:.5em 0;width:100%}
th,td{border:1px solid #dee2e6;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f1f3f5}
.summary td.critical,.badge-danger{color:#fff;background:#c92a2a}
.summary td.warning,.badge-warning{background:#ffd43b}
.summary td.ok,.badge-success{color:#fff;background:#2b8a3e}
.badge{display:inline-block;padding:.15em .45em;border-radius:.25em;font-size:85%}
.gx-page{border-top:3px solid #495057;margin-top:2em;padding-top:.5em}
.gx-page .container-fluid,.gx-page .container{padding-top:0}
.gx-page nav,.gx-page footer,.gx-page .sticky{position:static}
.fas,.fa,.far{display:none}
.collapse:not(.show){display:block}
"""


_EXTERNAL = re.compile(
    r"<script\b[^>]*>.*?</script>|<link\b[^>]*>|<img\b[^>]*src=\"(?:https?:|\.\./)[^\"]*\"[^>]*>",
    re.IGNORECASE | re.DOTALL)


def _strip_external(page: str) -> str:
    """Drop every script (they need the CDN's jQuery/Bootstrap) and external link/image."""
    page = _EXTERNAL.sub("", page)
    return re.sub(r"\s(?:href|src)=\"https?://[^\"]*\"", "", page)


def _scoped(body: str, table: str) -> str:
    """Ids and in-page links made unique per table (every GX page numbers its sections from 1);
    links to other pages of a docs site (index, suite pages) become plain text."""
    body = re.sub(r'\s(id|data-target|aria-controls|aria-labelledby)="#?([^"]*)"',
                  lambda m: f' {m.group(1)}="{"#" if m.group(0).count("#") else ""}'
                            f'{table}-{m.group(2)}"', body)
    body = re.sub(r'\shref="#([^"]*)"', lambda m: f' href="#{table}-{m.group(1)}"', body)
    return re.sub(r'\shref="(?!#)[^"]*"', "", body)


def _styles(page: str) -> list[str]:
    return re.findall(r"<style\b[^>]*>(.*?)</style>", page, re.IGNORECASE | re.DOTALL)


def _body(page: str) -> str:
    match = re.search(r"<body\b[^>]*>(.*)</body>", page, re.IGNORECASE | re.DOTALL)
    return match.group(1) if match else page


def render_gx_page(validation: Any) -> str:
    """One validation result as GX renders it in its data docs (a whole HTML page)."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    document = ValidationResultsPageRenderer().render(validation)
    return DefaultJinjaPageView().render(document)


def _summary(gate: "GateResult", title: str, facts: dict[str, Any]) -> str:
    esc = html.escape
    by_sev: dict[str, list[int]] = {"critical": [0, 0], "warning": [0, 0]}
    for check in gate.checks:
        by_sev.setdefault(check.severity, [0, 0])[0 if check.success else 1] += 1
    verdict = ("STOPPED: critical expectations failed, nothing trains on this data"
               if gate.stopped else "PASSED: the data may train")
    rows = "".join(
        f"<tr><td>{esc(sev)}</td><td class='ok'>{p}</td>"
        f"<td class='{sev if f else 'ok'}'>{f}</td></tr>" for sev, (p, f) in by_sev.items())
    failed = "".join(
        f"<tr><td>{esc(f['name'])}</td><td>{esc(f['table'])}</td><td>{esc(f['severity'])}</td>"
        f"<td>{esc(_fmt(f['observed']))}</td></tr>" for f in gate.failed) or \
        "<tr><td colspan='4'>none</td></tr>"
    table_rows = "".join(f"<tr><td><a href='#table-{esc(t)}'>{esc(t)}</a></td><td>{n}</td></tr>"
                         for t, n in gate.rows.items())
    fact_rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>"
                        for k, v in facts.items())
    return f"""<section class="summary">
<h1>{esc(title)}</h1>
<p><b>{esc(verdict)}</b></p>
<table>{fact_rows}</table>
<h2>expectations by severity</h2>
<table><tr><th>severity</th><th>passed</th><th>failed</th></tr>{rows}</table>
<h2>failed expectations</h2>
<table><tr><th>expectation</th><th>table</th><th>severity</th><th>observed</th></tr>{failed}</table>
<h2>rows validated</h2>
<table><tr><th>table</th><th>rows</th></tr>{table_rows}</table>
<p>Below: Great Expectations' data docs for each table (validation results, inlined).
Results keep counts only, never row values.</p>
</section>"""


def _fmt(observed: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in observed.items())


def render_report(gate: "GateResult", *, title: str, facts: dict[str, Any] | None = None) -> str:
    """The whole page: our summary, then every table's GX validation page, one document."""
    styles = [_FALLBACK_CSS]
    sections = []
    seen_styles: set[str] = set()
    for table, validation in gate.validations.items():
        page = _strip_external(render_gx_page(validation))
        for css in _styles(page):
            if css not in seen_styles:
                seen_styles.add(css)
                styles.append(css)
        body = re.sub(r"<style\b[^>]*>.*?</style>", "", _body(page), flags=re.I | re.S)
        body = _scoped(body, table)
        sections.append(f'<section class="gx-page" id="table-{html.escape(table)}">'
                        f"<h2>data docs: {html.escape(table)}</h2>{body}</section>")
    css = "\n".join(styles)
    # fonts and images the GX stylesheet references relative to a docs site: not shipped inline
    css = re.sub(r"url\((?!['\"]?data:)[^)]*\)", "none", css)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{css}</style></head><body>"
            f"{_summary(gate, title, dict(facts or {}))}{''.join(sections)}</body></html>")
