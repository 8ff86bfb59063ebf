"""From documents to files: decide which charts the inputs allow, save each as PNG and SVG, and write
the HTML report beside them.

:func:`render_report` is what ``simulate --report``, ``sweep --report`` and ``load --report`` call; the
``report`` command calls :func:`build_report` to print every path it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from sim.errors import ConfigError

from reports.chart import Chart, slug
from reports.documents import check_document, doc_name, is_explain, is_sweep

PNG_DPI = 110


@dataclass
class Report:
    index: Path
    charts: list[Chart] = field(default_factory=list)
    comparisons: list[tuple[int, int]] = field(default_factory=list)  # (simulation, live) document indexes

    @property
    def paths(self) -> list[Path]:
        return [p for c in self.charts for p in (c.png, c.svg)] + [self.index]


def save_figure(fig: Any, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.svg`` (SVG text kept as text, no timestamp, stable ids)."""
    import matplotlib

    from reports.style import RC

    png, svg = out_dir / f"{stem}.png", out_dir / f"{stem}.svg"
    with matplotlib.rc_context({**RC, "svg.hashsalt": stem}):
        fig.savefig(png, format="png", dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png, svg


def comparisons(docs: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(simulation, live) pairs of the same scenario (the simulation with the most orders when there are
    several); a lone simulation pairs with every live run whatever its name."""
    sims = [i for i, d in enumerate(docs) if d.get("kind") == "simulation"]
    pairs = []
    for j, d in enumerate(docs):
        if d.get("kind") != "live":
            continue
        same = [i for i in sims if docs[i].get("scenario_name") == d.get("scenario_name")]
        chosen = same or (sims if len(sims) == 1 else [])
        if chosen:
            pairs.append((max(chosen, key=lambda i: (docs[i].get("orders") or 0, -i)), j))
    return pairs


def choose_example(doc: Mapping[str, Any], example_class: str | None = None) -> tuple[str, Mapping[str, Any]] | None:
    """The example history to tell as a story: the requested class, else paid_but_closed, else the
    most frequent class with an example; within a class the "first" one (the most typical)."""
    from reports.charts import anomaly
    from reports.style import ordered_classes

    examples = {c: v for c, v in (doc.get("examples") or {}).items() if v}
    if example_class is not None:
        candidates = [example_class] if example_class in examples else []
    elif "paid_but_closed" in examples:
        candidates = ["paid_but_closed"]
    else:
        order = ordered_classes(examples)
        candidates = sorted(order, key=lambda c: -(anomaly(doc, c).get("count") or 0))
    if not candidates:
        return None
    cls = candidates[0]
    items = examples[cls]
    return cls, next((e for e in items if e.get("role") == "first"), items[0])


# The two measures the sweep and comparison charts are drawn for, each with the words its titles use.
_MEASURES = (("occurred", "occurred (arose at all)"), ("unresolved", "was unresolved at the end"))


def render_charts(docs: Sequence[Mapping[str, Any]], out_dir: Path, *,
                  example_class: str | None = None) -> tuple[list[Chart], list[tuple[int, int]]]:
    """Every chart the documents allow, saved under ``out_dir``; and the (simulation, live) pairs."""
    from reports import charts as ch
    from reports import fmt

    out_dir.mkdir(parents=True, exist_ok=True)
    many = len(docs) > 1
    made: list[Chart] = []
    used: set[str] = set()

    def emit(kind: str, title: str, caption: str, fig: Any, stem: str, doc: int | None) -> None:
        base, n = stem, 2
        while stem in used:
            stem, n = f"{base}-{n}", n + 1
        used.add(stem)
        png, svg = save_figure(fig, out_dir, stem)
        made.append(Chart(kind, title, caption, png, svg, doc))

    for i, doc in enumerate(docs):
        prefix = f"{i + 1}-{slug(doc_name(doc))}-" if many else ""
        if is_explain(doc):
            from sim.explain import active_classes, explain_figure

            m = doc.get("method") or {}
            for measure, what in (("occurred", "arose"), ("unresolved", "was left unresolved")):
                if measure == "unresolved" and not active_classes(doc, measure):
                    continue
                emit("explain", f"What drives each rate: the share of orders where the class {what}",
                     f"Morris screening ({m.get('points', '?')} points x {m.get('replications_per_point', '?')} "
                     f"replication(s) on common random numbers, seed {doc.get('seed')}): per class, the inputs "
                     "ranked by mu*, the mean absolute change in the rate per order as the input moves across its "
                     "range (0.5x-2x unless --vary said otherwise), with 95% bootstrap intervals; red raises the "
                     "rate as the input grows, blue lowers it, grey is mixed (interactions). Fix the top bar first.",
                     explain_figure(dict(doc), measure), f"{prefix}explain" + ("-unresolved" if measure == "unresolved"
                                                                                else ""), i)
            continue
        if is_sweep(doc):
            xkey, lines = ch.sweep_axes(doc)
            results = [p["results"] for p in doc["points"]]
            for measure, what in _MEASURES:
                if measure == "occurred" and not ch.has_measure(results, measure):
                    continue  # schema 1 points: unresolved only
                emit("sweep_rates", f"Anomaly rate vs {xkey or 'sweep point'}: {what}",
                     f"The share of counted orders where the class {what}. One line per "
                     f"{', '.join(lines) or 'series'}; shaded bands are 95% confidence intervals; hollow markers "
                     "are zero.", ch.sweep_rates(doc, measure=measure),
                     f"{prefix}sweep-rates" + ("-occurred" if measure == "occurred" else ""), i)
            continue
        if doc.get("anomalies"):
            emit("rates", "How often each anomaly occurred, and how often it was left unresolved",
                 "Per class, the share of counted orders where it arose at all (filled dot) and where it was "
                 "still unresolved at the end of observation (hollow square), each with its 95% interval; a "
                 "zero is drawn at the axis with its upper bound. Numbers on the right: orders affected.",
                 ch.anomaly_rates(doc), f"{prefix}rates", i)
        tl = doc.get("timeline") or {}
        if tl.get("t"):
            emit("timeline", "A run over time",
                 "Orders by state (stacked), arrivals per second (black line, right axis), fault windows "
                 "(hatched) and where anomalies began (rug below).", ch.run_timeline(doc), f"{prefix}timeline", i)
        if (any(ch.anomaly(doc, c).get("window_samples") for c in doc.get("anomalies") or {})
                or any(tl.get("money_at_risk") or ())):
            emit("windows", "How long money was stuck",
                 "Per class, the Kaplan–Meier share of anomaly instances repaired (the parties agreed again) "
                 "within x; an instance still open at the end of observation is censored there (a tick), not "
                 "counted as repaired, so a curve that stays below 100% is money never repaired; p50 and p99 "
                 "marked (\"not reached\" when the curve never gets there); money held by open anomalies over time.",
                 ch.stuck_windows(doc), f"{prefix}windows", i)
        chosen = choose_example(doc, example_class)
        if chosen:
            cls, example = chosen
            emit("story", f"The story of one {cls} order",
                 f"Order {example.get('order', '?')}, the {example.get('role', '')} example of {cls}: each mark "
                 f"is an event in its party's lane; arrows are messages; the shaded band starts where the "
                 f"parties began to disagree ({ch.disagreement_caption(cls, example)}).",
                 ch.order_story(example, cls, doc_name(doc)), f"{prefix}story-{slug(cls)}", i)
    pairs = comparisons(docs)
    for s, l in pairs:
        for measure, what in _MEASURES:
            if measure == "occurred" and not ch.has_measure([docs[s], docs[l]], measure):
                continue
            emit("predicted_vs_measured", f"Predicted vs measured: {doc_name(docs[s])}, {what}",
                 f"The share of counted orders where the class {what}. Dots are rates, whiskers 95% intervals, "
                 f"hollow dots zero; “agree” where the intervals overlap ({fmt.count(docs[s].get('orders'))} "
                 f"simulated vs {fmt.count(docs[l].get('orders'))} live orders).",
                 ch.predicted_vs_measured(docs[s], docs[l], measure=measure),
                 f"compare-{slug(doc_name(docs[s]))}" + ("-occurred" if measure == "occurred" else ""), None)
    return made, pairs


def build_report(docs: Sequence[Mapping[str, Any]], out_dir: str | Path, *, example_class: str | None = None,
                 sources: Sequence[str] | None = None) -> Report:
    """Check the documents, write every chart they allow and ``index.html``; return what was written."""
    from reports.html import write_index

    if not docs:
        raise ConfigError("report: expected at least one results document")
    names = list(sources) if sources else [f"document {i + 1}" for i in range(len(docs))]
    checked = [check_document(d, n) for d, n in zip(docs, names)]
    if example_class is not None:
        import difflib

        from sim.vocabulary import ANOMALY_CLASSES

        if example_class not in ANOMALY_CLASSES:
            close = difflib.get_close_matches(example_class, ANOMALY_CLASSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"--example-class: expected one of {', '.join(ANOMALY_CLASSES)}, found "
                              f"{example_class!r}{hint}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    charts, pairs = render_charts(checked, out, example_class=example_class)
    index = write_index(checked, charts, pairs, out, sources=sources)
    return Report(index, charts, pairs)


def render_report(docs: Sequence[Mapping[str, Any]], out_dir: str | Path, *, example_class: str | None = None) -> Path:
    """Charts (PNG + SVG) and a self-contained ``index.html`` in ``out_dir``; returns the index path."""
    return build_report(docs, out_dir, example_class=example_class).index
