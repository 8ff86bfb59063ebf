"""The HTML report: one self-contained ``index.html``.

Images are embedded as base64 PNG data URIs and the CSS is inline, so the file opens anywhere with no
network (no fonts, CDNs or scripts). Every text that comes from a results document is escaped. Links
to the PNG and SVG files beside it are relative, for pasting charts into slides.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from reports import fmt
from reports.charts import (
    anomaly,
    intervals_overlap,
    nonzero_classes,
    rate_interval,
    sweep_series,
    value_key,
    window_quantiles,
)
from reports.documents import doc_name
from reports.render import Chart, slug
from reports.style import class_look, ordered_classes
from reports.summary import comparison_summary, results_summary, sweep_summary, top_summary

CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --accent: #0072B2; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 8px; padding-top: 12px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
p.meta, .muted { color: var(--muted); }
.summary { background: var(--soft); border: 1px solid var(--line); border-left: 5px solid var(--accent);
           border-radius: 6px; padding: 10px 18px; margin: 16px 0 8px; }
.summary ul, ul.facts { margin: 6px 0; padding-left: 20px; }
.summary li { margin: 4px 0; }
nav ul { margin: 4px 0; padding-left: 20px; columns: 2; }
p.facts { display: flex; flex-wrap: wrap; gap: 4px 22px; margin: 8px 0; font-size: 14px; }
p.facts b { color: var(--muted); font-weight: 600; margin-right: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13.5px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { background: var(--soft); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tr.zero td { color: #8c959f; }
td.agree { color: #117733; font-weight: 600; }
td.differ { color: #B00000; font-weight: 600; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px;
          vertical-align: baseline; border: 1px solid #0003; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13.5px; color: var(--muted); margin-top: 4px; }
figcaption b { color: var(--ink); }
details { margin: 8px 0; }
summary { cursor: pointer; color: var(--accent); }
pre { background: var(--soft); border: 1px solid var(--line); padding: 10px; overflow: auto; font-size: 12px;
      max-height: 480px; }
.scroll { overflow-x: auto; }
.invalid { background: #fff0f0; border: 1px solid #B00000; border-left: 6px solid #B00000; border-radius: 6px;
           padding: 10px 18px; margin: 16px 0 8px; }
.invalid b.title { color: #B00000; }
@media print { h2 { break-before: page; } figure { break-inside: avoid; } details { display: none; } }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'


def figure(chart: Chart) -> str:
    links = f'<a href="{esc(chart.png.name)}">PNG</a> · <a href="{esc(chart.svg.name)}">SVG</a>'
    return (f"<figure>{_img(chart.png, chart.title)}<figcaption><b>{esc(chart.title)}.</b> "
            f"{esc(chart.caption)} {links}</figcaption></figure>")


def _list(items: Iterable[str], cls: str = "") -> str:
    body = "".join(f"<li>{esc(s)}</li>" for s in items)
    return f'<ul class="{cls}">{body}</ul>' if cls else f"<ul>{body}</ul>"


def _class_cell(cls: str) -> str:
    return f'<span class="swatch" style="background:{class_look(cls).color}"></span>{esc(cls)}'


def anomaly_table(doc: Mapping[str, Any]) -> str:
    """Every anomaly class: unresolved count, repaired, rate, CI, window p50/p99 and money held."""
    rows = []
    for cls in ordered_classes(doc.get("anomalies") or {}):
        a = anomaly(doc, cls)
        p50, p99 = window_quantiles(a)
        zero = not (a.get("count") or a.get("rate") or a.get("repaired"))
        cells = [_class_cell(cls), esc(fmt.count(a.get("count"))), esc(fmt.count(a.get("repaired"))),
                 esc(fmt.rate(a.get("rate"))), esc(fmt.interval(a.get("ci95"))), esc(fmt.duration(p50)),
                 esc(fmt.duration(p99)), esc(fmt.money(a.get("amount")))]
        rows.append(f'<tr class="{"zero" if zero else ""}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    methods = sorted({str(a.get("ci_method")) for a in (doc.get("anomalies") or {}).values() if a.get("ci_method")})
    head = ("<tr><th>anomaly class</th><th>unresolved</th><th>repaired</th><th>rate per order</th>"
            f"<th>95% CI{esc(' (' + ', '.join(methods) + ')') if methods else ''}</th><th>window p50</th>"
            "<th>window p99</th><th>money held</th></tr>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _kv_table(data: Mapping[str, Any], key_header: str) -> str:
    """Rows of a mapping of mappings (metrics per actor), columns the union of their keys."""
    rows = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if not rows:
        return ""
    cols = list(dict.fromkeys(c for v in rows.values() for c in v))
    head = f"<tr><th>{esc(key_header)}</th>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"
    body = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(fmt.number(v.get(c)))}</td>" for c in cols) + "</tr>"
                   for k, v in rows.items())
    return f'<div class="scroll"><table>{head}{body}</table></div>'


def _flat_table(data: Mapping[str, Any]) -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, (Mapping, list))}
    if not scalars:
        return ""
    body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(fmt.number(v))}</td></tr>" for k, v in scalars.items())
    return f"<table>{body}</table>"


def _json_details(title: str, data: Any) -> str:
    if data in (None, {}, []):
        return ""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    return f"<details><summary>{esc(title)}</summary><pre>{esc(text)}</pre></details>"


def _facts(doc: Mapping[str, Any], source: str | None) -> str:
    facts = [("kind", doc.get("kind")), ("scenario", doc_name(doc)), ("seed", doc.get("seed")),
             ("replications", doc.get("replications")), ("orders counted", fmt.count(doc.get("orders"))),
             ("warmup", fmt.duration(doc.get("warmup_s")) if doc.get("warmup_s") is not None else None),
             ("horizon", fmt.duration(doc.get("horizon_s")) if doc.get("horizon_s") is not None else None),
             ("observed until", fmt.duration(doc.get("end_s")) if doc.get("end_s") is not None else None),
             ("source", source)]
    return '<p class="facts">' + "".join(f"<span><b>{esc(k)}</b> {esc(v)}</span>" for k, v in facts if v is not None) + "</p>"


def results_section(i: int, doc: Mapping[str, Any], charts: Sequence[Chart], source: str | None) -> str:
    scenario = doc.get("scenario") or {}
    title = doc_name(doc) if doc_name(doc) == doc.get("kind") else f"{doc_name(doc)} — {doc.get('kind')}"
    parts = [f'<h2 id="doc-{i + 1}">{esc(title)}</h2>']
    if scenario.get("description"):
        parts.append(f"<p>{esc(scenario['description'])}</p>")
    parts.append(_facts(doc, source))
    parts.append('<div class="summary">' + _list(results_summary(doc)) + "</div>")
    parts.append("<h3>Anomalies</h3>" + anomaly_table(doc))
    parts.extend(figure(c) for c in charts)
    if doc.get("metrics"):
        parts.append("<h3>Queues and latency per actor</h3>" + _kv_table(doc["metrics"], "actor"))
    if doc.get("end_states"):
        states = ", ".join(f"{k} {fmt.count(v)}" for k, v in doc["end_states"].items())
        parts.append(f'<p class="muted">Order end states: {esc(states)}.</p>')
    if doc.get("live"):
        parts.append("<h3>Live run</h3>" + _flat_table(doc["live"]))
        parts.append(_json_details("live run details (JSON)", doc["live"]))
    parts.append(_json_details("scenario (resolved, defaults included)", scenario or None))
    parts.append(_json_details("run info", doc.get("run_info")))
    return "\n".join(p for p in parts if p)


def sweep_section(i: int, sweep: Mapping[str, Any], charts: Sequence[Chart], source: str | None) -> str:
    xkey, _, xs, series = sweep_series(sweep)
    parts = [f'<h2 id="doc-{i + 1}">Sweep: {esc(doc_name(sweep))}</h2>']
    if source:
        parts.append(f'<p class="muted">source: {esc(source)}</p>')
    parts.append('<div class="summary">' + _list(sweep_summary(sweep)) + "</div>")
    parts.extend(figure(c) for c in charts)
    for cls in nonzero_classes([p["results"] for p in sweep["points"]]):
        head = f"<tr><th>{esc(xkey or 'point')}</th>" + "".join(f"<th>{esc(s)}</th>" for s in series) + "</tr>"
        body = ""
        for x in xs:
            cells = []
            for pts in series.values():
                res = pts.get(value_key(x))
                a = anomaly(res, cls) if res else {}
                cells.append(f"{fmt.rate(a.get('rate'))} {fmt.interval(a.get('ci95'))}" if res else "—")
            body += f"<tr><td>{esc(x)}</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
        parts.append(f"<h3>{_class_cell(cls)} rate per order [95% CI]</h3>"
                     f'<div class="scroll"><table>{head}{body}</table></div>')
    parts.append(_json_details("sweep definition", {"vary": sweep.get("vary"), "compare": sweep.get("compare")}))
    return "\n".join(parts)


def comparison_section(sim: Mapping[str, Any], live: Mapping[str, Any], charts: Sequence[Chart]) -> str:
    parts = [f'<h2 id="compare-{esc(slug(doc_name(sim)))}">Predicted vs measured: {esc(doc_name(sim))}</h2>',
             '<div class="summary">' + _list(comparison_summary(sim, live)) + "</div>"]
    parts.extend(figure(c) for c in charts)
    rows = []
    classes = nonzero_classes([sim, live]) or ordered_classes(sim.get("anomalies") or {})
    for cls in classes:
        s, m = anomaly(sim, cls), anomaly(live, cls)
        agree = intervals_overlap(rate_interval(s), rate_interval(m))
        rows.append(f"<tr><td>{_class_cell(cls)}</td><td>{esc(fmt.rate(s.get('rate')))} {esc(fmt.interval(s.get('ci95')))}</td>"
                    f"<td>{esc(fmt.rate(m.get('rate')))} {esc(fmt.interval(m.get('ci95')))}</td>"
                    f'<td class="{"agree" if agree else "differ"}">{"agree" if agree else "differ"}</td></tr>')
    parts.append('<div class="scroll"><table><tr><th>anomaly class</th><th>predicted (simulation)</th>'
                 "<th>measured (live)</th><th>intervals overlap</th></tr>" + "".join(rows) + "</table></div>")
    return "\n".join(parts)


def validity_banner(docs: Sequence[Mapping[str, Any]]) -> str:
    """A red box at the top for each live run that is not valid (``validity``), with its reasons."""
    out = []
    for doc in docs:
        if doc.get("valid") is not False:
            continue
        v = doc.get("validity") or {}
        out.append(f'<div class="invalid"><b class="title">This run is not valid: {esc(doc_name(doc))} — its numbers do '
                   "not measure the scenario</b>" + _list(v.get("reasons") or ())
                   + ("<b>What to change</b>" + _list(v["advice"]) if v.get("advice") else "") + "</div>")
    return "\n".join(out)


def render_index(docs: Sequence[Mapping[str, Any]], charts: Sequence[Chart], pairs: Sequence[tuple[int, int]],
                 sources: Sequence[str] | None = None) -> str:
    """The whole report as one HTML string."""
    srcs = list(sources) if sources else [None] * len(docs)
    sections, toc = [], []
    for i, doc in enumerate(docs):
        mine = [c for c in charts if c.doc == i]
        if doc.get("kind") == "sweep":
            sections.append(sweep_section(i, doc, mine, srcs[i]))
            toc.append((f"doc-{i + 1}", f"Sweep: {doc_name(doc)}"))
        else:
            sections.append(results_section(i, doc, mine, srcs[i]))
            toc.append((f"doc-{i + 1}", doc_name(doc) if doc_name(doc) == doc.get("kind") else f"{doc_name(doc)} — {doc.get('kind')}"))
    cross = [c for c in charts if c.doc is None]
    for n, (s, l) in enumerate(pairs):
        sections.append(comparison_section(docs[s], docs[l], cross[n:n + 1]))
        toc.append((f"compare-{slug(doc_name(docs[s]))}", f"Predicted vs measured: {doc_name(docs[s])}"))
    names = ", ".join(dict.fromkeys(doc_name(d) for d in docs))
    nav = ("<nav><b>Contents</b><ul>" + "".join(f'<li><a href="#{esc(a)}">{esc(t)}</a></li>' for a, t in toc)
           + "</ul></nav>") if len(toc) > 1 else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>checkout-chaos report — {esc(names)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>checkout-chaos report</h1>
<p class="meta">{esc(names)} · {len(docs)} document{'s' if len(docs) != 1 else ''} · rates are unresolved anomalies
per order counted; windows run from when the parties disagreed until they agreed or observation ended; money in CNY.</p>
{validity_banner(docs)}
<div class="summary"><b>Summary</b><ul>{"".join(f"<li><b>{esc(who)}</b>: {esc(what)}</li>" for who, what in top_summary(docs, pairs))}</ul></div>
{nav}
{chr(10).join(sections)}
</main>
</body>
</html>
"""


def write_index(docs: Sequence[Mapping[str, Any]], charts: Sequence[Chart], pairs: Sequence[tuple[int, int]],
                out_dir: Path, sources: Sequence[str] | None = None) -> Path:
    path = Path(out_dir) / "index.html"
    path.write_text(render_index(docs, charts, pairs, sources), encoding="utf-8")
    return path
