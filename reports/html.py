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
    has_measure,
    intervals_overlap,
    measure_interval,
    measured,
    nonzero_classes,
    sweep_series,
    value_key,
)
from reports.documents import doc_name
from reports.chart import Chart, slug
from reports.style import class_look, ordered_classes
from reports.summary import comparison_summary, results_summary, sweep_summary, top_summary
from sim.results import sentence_metrics

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
.agree { color: #117733; font-weight: 600; }
.differ { color: #B00000; font-weight: 600; }
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


def _rate_cell(a: Mapping[str, Any], measure: str) -> str:
    iv = measure_interval(a, measure)
    if iv is None:
        return "—"
    ci = a.get(f"{measure}_ci95", a.get("ci95") if measure == "unresolved" else None)
    return f"{fmt.rate(iv[0])} {fmt.interval(ci)}" if ci else fmt.rate(iv[0])


def _repair_cell(a: Mapping[str, Any], key: str) -> str:
    repair = a.get("repair_s")
    if not repair:
        return "—"
    value = repair.get(key)
    return "not reached" if value is None else fmt.duration(value)


def anomaly_table(doc: Mapping[str, Any]) -> str:
    """Every anomaly class: orders where it occurred, was repaired and was left unresolved, the occurred and
    unresolved rates with 95% intervals, Kaplan–Meier time to repair, and money held at the end (total and
    per replication)."""
    rows = []
    anomalies = doc.get("anomalies") or {}
    reps = doc.get("replications") or 1
    for cls in ordered_classes(anomalies):
        a = anomaly(doc, cls)
        if a.get("observable") is False:  # the history could not decide it: its zeros mean "not known"
            span = 10 if reps > 1 else 9
            rows.append(f'<tr class="zero"><td>{_class_cell(cls)}</td><td colspan="{span}">not observable in this '
                        "history (it lacks the events this class needs; docs/results.md, “Observable”)</td></tr>")
            continue
        repair = a.get("repair_s") or {}
        share = repair.get("repaired_share")
        per = a.get("amount_per_replication") or {}
        per_text = "—"
        if per.get("mean") is not None:
            per_text = fmt.money(per["mean"]) + (f" [{fmt.money(per['ci95'][0])}, {fmt.money(per['ci95'][1])}]"
                                                 if per.get("ci95") else "")
        zero = not (a.get("occurred_orders") or a.get("count") or a.get("rate") or a.get("repaired"))
        cells = [_class_cell(cls), esc(fmt.count(a.get("occurred_orders"))), esc(_rate_cell(a, "occurred")),
                 esc(fmt.count(a.get("repaired_orders"))), esc(fmt.count(a.get("unresolved_orders", a.get("count")))),
                 esc(_rate_cell(a, "unresolved")), esc("—" if share is None else f"{share:.0%}"),
                 esc(_repair_cell(a, "median")), esc(_repair_cell(a, "p99")), esc(fmt.money(a.get("amount")))]
        if reps > 1:
            cells.append(esc(per_text))
        rows.append(f'<tr class="{"zero" if zero else ""}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    methods = sorted({str(a.get(k)) for a in anomalies.values() for k in ("occurred_ci_method", "unresolved_ci_method")
                      if a.get(k)} or {str(a.get("ci_method")) for a in anomalies.values() if a.get("ci_method")})
    total = f" (total over {reps} replications)" if reps > 1 else ""
    head = ("<tr><th>anomaly class</th>"
            f"<th>occurred<br>(orders{esc(total)})</th><th>occurred rate<br>per order [95% CI]</th>"
            f"<th>repaired<br>(orders)</th><th>unresolved at end<br>(orders)</th><th>unresolved rate<br>per order [95% CI]</th>"
            "<th>repaired by end<br>(share of instances)</th><th>time to repair<br>p50 (Kaplan–Meier)</th>"
            "<th>time to repair<br>p99 (Kaplan–Meier)</th>"
            f"<th>money held at end<br>(CNY{esc(', total' if reps > 1 else '')})</th>"
            + ("<th>money held at end<br>(CNY per replication, mean [95% CI])</th>" if reps > 1 else "") + "</tr>")
    note = (f'<p class="muted">95% intervals: {esc(", ".join(methods) or "none")} — exact (Clopper–Pearson) over all '
            "counted orders; where replications vary more than binomially, at the effective number of orders their "
            "spread implies (docs/results.md). Time to repair treats an instance still open at the end as censored "
            "there; “not reached” means fewer than that share was repaired by the end.</p>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>{note}'


_METRIC_LABELS = {"utilization": ("utilisation", "share busy"), "wait_mean_s": ("wait mean", "time"),
                  "wait_p99_s": ("wait p99", "time"), "queue_mean": ("queue", "requests"),
                  "served": ("served", "requests"), "timeouts": ("timeouts", "requests")}
_TOTALS = ("timeouts",)  # summed over replications by sim.results; every other metric is a per-replication mean


def _metric_text(name: str, value: Any) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return fmt.number(value)
    if name.endswith("_s"):
        return fmt.duration(value)
    if name == "utilization":
        return f"{value:.0%}" if value >= 0.01 or value == 0 else f"{value:.2%}"
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.2g}"


def _metrics_table(data: Mapping[str, Any], replications: int) -> str:
    """Per actor, each metric with its unit and whether it is a per-replication mean or a total."""
    rows = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    if not rows:
        return ""
    cols = list(dict.fromkeys(c for v in rows.values() for c in v))

    def header(c: str) -> str:
        name, unit = _METRIC_LABELS.get(c, (c, ""))
        how = ("total" if c in _TOTALS else "mean per replication") if replications > 1 else ""
        detail = ", ".join(x for x in (unit, how) if x)
        return f"<th>{esc(name)}" + (f"<br>({esc(detail)})" if detail else "") + "</th>"

    head = "<tr><th>actor</th>" + "".join(header(c) for c in cols) + "</tr>"
    body = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(_metric_text(c, v.get(c)))}</td>" for c in cols) + "</tr>"
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
    first = [c for c in charts if c.kind == "rates"]
    parts.extend(figure(c) for c in first)  # the report of one result opens with its rates
    parts.append("<h3>Anomalies</h3>" + anomaly_table(doc))
    parts.extend(figure(c) for c in charts if c.kind != "rates")
    metrics = dict(doc.get("metrics") or {})
    sentences = sentence_metrics(metrics)
    if metrics:
        parts.append("<h3>Queues and latency per actor</h3>" + _metrics_table(metrics, doc.get("replications") or 1))
    parts.extend(f'<p class="muted">{esc(line)}.</p>' for line in sentences)
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
                if not res:
                    cells.append("—")
                    continue
                texts = [f"{fmt.rate(iv[0])} {fmt.interval(iv[1:])}"
                         for iv in (measure_interval(a, m) for m in ("occurred", "unresolved")) if iv is not None]
                cells.append(" / ".join(texts))
            body += f"<tr><td>{esc(x)}</td>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
        both = has_measure([p["results"] for p in sweep["points"]], "occurred")
        parts.append(f"<h3>{_class_cell(cls)} {'occurred / unresolved ' if both else ''}rate per order [95% CI]</h3>"
                     f'<div class="scroll"><table>{head}{body}</table></div>')
    parts.append(_json_details("sweep definition", {"vary": sweep.get("vary"), "compare": sweep.get("compare")}))
    return "\n".join(parts)


def explain_lines(doc: Mapping[str, Any], top: int = 3) -> list[str]:
    """Per class that occurred, its first inputs by mu* (what to fix first)."""
    out = []
    for cls, entry in (doc.get("classes") or {}).items():
        ranking = (entry.get("occurred") or {}).get("ranking") or []
        if not ranking:
            continue
        firsts = ", ".join(f"{r['key']} (mu* {fmt.rate(r['mu_star'])} {fmt.interval(r['mu_star_ci95'])}, "
                           f"{r.get('direction', 'mixed')})" for r in ranking[:top])
        out.append(f"{cls} (mean rate {fmt.rate((entry.get('occurred') or {}).get('mean_rate'))}): {firsts}")
    return out


def explain_section(i: int, doc: Mapping[str, Any], charts: Sequence[Chart], source: str | None) -> str:
    parts = [f'<h2 id="doc-{i + 1}">What drives each rate: {esc(doc_name(doc))}</h2>']
    if source:
        parts.append(f'<p class="muted">source: {esc(source)}</p>')
    lines = explain_lines(doc)
    parts.append('<div class="summary"><b>Inputs that move each rate most (occurred; mu* per order, 95% CI)</b>'
                 + _list(lines or ["no anomaly occurred at any sampled point"]) + "</div>")
    parts.extend(figure(c) for c in charts)
    parts.append(_json_details("method", doc.get("method")))
    parts.append(_json_details("inputs screened", doc.get("inputs")))
    return "\n".join(parts)


def comparison_section(sim: Mapping[str, Any], live: Mapping[str, Any], charts: Sequence[Chart]) -> str:
    parts = [f'<h2 id="compare-{esc(slug(doc_name(sim)))}">Predicted vs measured: {esc(doc_name(sim))}</h2>',
             '<div class="summary">' + _list(comparison_summary(sim, live)) + "</div>"]
    parts.extend(figure(c) for c in charts)
    rows = []
    classes = nonzero_classes([sim, live]) or ordered_classes(sim.get("anomalies") or {})
    measures = [m for m in ("occurred", "unresolved") if m == "unresolved" or has_measure([sim, live], m)]
    for cls in classes:
        s, m = anomaly(sim, cls), anomaly(live, cls)
        cells = [_class_cell(cls)]
        for measure in measures:
            si, li = measured(s, measure), measured(m, measure)
            agree = intervals_overlap(si, li)
            cells += [esc(f"{fmt.rate(si[0])} {fmt.interval(si[1:])}"), esc(f"{fmt.rate(li[0])} {fmt.interval(li[1:])}"),
                      f'<span class="{"agree" if agree else "differ"}">{"agree" if agree else "differ"}</span>']
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{esc(m)}: predicted (simulation)</th><th>{esc(m)}: measured (live)</th>"
                   f"<th>{esc(m)}: intervals overlap</th>" for m in measures)
    parts.append('<div class="scroll"><table><tr><th>anomaly class</th>' + head + "</tr>" + "".join(rows)
                 + "</table></div>")
    parts.append('<p class="muted">occurred: the share of counted orders where the class arose at all; unresolved: '
                 "where it was still open at the end of observation; 95% intervals.</p>")
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
        elif doc.get("kind") == "explain":
            sections.append(explain_section(i, doc, mine, srcs[i]))
            toc.append((f"doc-{i + 1}", f"What drives each rate: {doc_name(doc)}"))
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
<p class="meta">{esc(names)} · {len(docs)} document{'s' if len(docs) != 1 else ''} · rates are shares of the orders
counted: “occurred” where an anomaly arose at all, “unresolved” where it was still open at the end of observation; time
to repair runs from when the parties disagreed until they agreed again, open instances censored at the end; money in CNY.</p>
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
