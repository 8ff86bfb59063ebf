"""Charts of results documents: one function per chart, each returning a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global state; saving uses the Agg
renderer), in the look of :mod:`reports.style`. Every function reads only the results contract
(``docs/results.md``) and tolerates what a run may lack: zero classes, a missing interval, an empty
timeline. :mod:`reports.render` decides which charts the inputs allow and saves them as PNG and SVG.

* :func:`anomaly_rates` — each class's occurred and unresolved rates with intervals (one result);
* :func:`sweep_rates` — anomaly rate against a swept parameter, one line per compared policy;
* :func:`run_timeline` — orders by state, arrivals, fault windows and anomaly starts over time;
* :func:`stuck_windows` — how long money was stuck (CDF per class) and money at risk over time;
* :func:`order_story` — the swimlane story of one broken order;
* :func:`predicted_vs_measured` — simulation and live rates side by side.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.transforms import blended_transform_factory

from reports import fmt
from reports.documents import doc_name
from reports.style import (
    CORE_LANES,
    FAULT_COLOR,
    LANE_COLORS,
    LANES,
    LIVE_LOOK,
    RC,
    SIMULATION_LOOK,
    class_look,
    ordered_classes,
    series_looks,
    state_looks,
)

RATE_LABEL = "rate (anomalies per order)"
LOG_SPAN = 100.0  # use a log scale when positive values span more than two decades


def styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure inside the report's rc settings (they are read when artists are created)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------------
# Reading results


def anomaly(doc: Mapping[str, Any], cls: str) -> Mapping[str, Any]:
    return (doc.get("anomalies") or {}).get(cls) or {}


def rate_interval(a: Mapping[str, Any]) -> tuple[float, float, float]:
    """``(rate, low, high)``; without an interval both ends are the rate itself."""
    r = float(a.get("rate") or 0.0)
    ci = a.get("ci95")
    if ci:
        return r, float(ci[0]), float(ci[1])
    return r, r, r


def occurred(a: Mapping[str, Any]) -> bool:
    """The class arose at all (repaired or not; schema 1: was left unresolved)."""
    return bool(a.get("occurred_orders") or a.get("occurred_rate") or a.get("count") or a.get("rate"))


def measured(a: Mapping[str, Any], measure: str) -> tuple[float, float, float]:
    """``(rate, low, high)`` of ``occurred`` or ``unresolved``; zeros when the document lacks the measure."""
    return measure_interval(a, measure) or (0.0, 0.0, 0.0)


def has_measure(docs: Iterable[Mapping[str, Any]], measure: str) -> bool:
    """Any document has the figures of ``measure`` (schema 1 has the unresolved ones only)."""
    return any(measure_interval(anomaly(d, c), measure) is not None for d in docs for c in (d.get("anomalies") or {}))


def nonzero_classes(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Classes that occurred in any of the documents (repaired or not), in the vocabulary's order."""
    docs = list(docs)
    names = [c for d in docs for c in (d.get("anomalies") or {})]
    return [c for c in ordered_classes(names) if any(occurred(anomaly(d, c)) for d in docs)]


def window_quantiles(a: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The p50 and p99 windows: the document's own (over all instances), else from the sample."""
    w = a.get("window_s") or {}
    samples = a.get("window_samples") or []
    p50, p99 = w.get("median"), w.get("p99")
    if samples and p50 is None:
        p50 = float(np.quantile(samples, 0.5))
    if samples and p99 is None:
        p99 = float(np.quantile(samples, 0.99))
    return p50, p99


def measure_interval(a: Mapping[str, Any], measure: str) -> tuple[float, float, float] | None:
    """``(rate, low, high)`` of ``occurred``/``repaired``/``unresolved`` (schema 2), or None when the
    document does not have it (schema 1 has the unresolved rate only, as ``rate``/``ci95``)."""
    if f"{measure}_rate" not in a:
        return rate_interval(a) if measure == "unresolved" and "rate" in a else None
    r = float(a.get(f"{measure}_rate") or 0.0)
    ci = a.get(f"{measure}_ci95")
    return (r, float(ci[0]), float(ci[1])) if ci else (r, r, r)


def _reached(seconds: float | None) -> str:
    return "not reached" if seconds is None else fmt.duration(seconds)


def repair_curve(a: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The Kaplan–Meier share repaired by time x from the pooled sample: ``(times, share, censored)``
    where ``censored`` are the windows still open at the end (None without open/closed flags)."""
    samples = a.get("window_samples") or []
    flags = a.get("window_samples_open")
    if not samples or flags is None or len(flags) != len(samples):
        return None
    t = np.asarray(samples, dtype=float)
    opened = np.asarray(flags, dtype=bool)
    censored = t[opened]
    if opened.all():
        return np.array([]), np.array([]), censored
    from scipy.stats import CensoredData, ecdf

    res = ecdf(CensoredData(uncensored=t[~opened], right=censored))
    return res.sf.quantiles, 1.0 - res.sf.probabilities, censored


def time_unit(span_s: float) -> tuple[float, str]:
    """A divisor and unit name for a time axis spanning ``span_s`` seconds."""
    if span_s <= 600:
        return 1.0, "s"
    if span_s <= 4 * 3600:
        return 60.0, "min"
    if span_s <= 3 * 86400:
        return 3600.0, "h"
    return 86400.0, "d"


def log_floor(values: Iterable[float]) -> float | None:
    """Where zeros go on a log axis, or ``None`` when the values do not call for one."""
    positive = [v for v in values if v > 0]
    if not positive or max(positive) / min(positive) <= LOG_SPAN:
        return None
    return 0.5 * 10 ** math.floor(math.log10(min(positive)))


def _mark_floor(ax: Any, floor: float, axis: str = "y") -> None:
    """Zeros on a log axis: a dotted line at ``floor``, labelled 0, with a break mark on the spine."""
    if axis == "y":
        ax.axhline(floor, color="#999999", lw=0.8, ls=":", zorder=1)
        ax.set_ylim(bottom=floor / 1.8)
        lo, hi = ax.get_ylim()
        target = ax.yaxis
    else:
        ax.axvline(floor, color="#999999", lw=0.8, ls=":", zorder=1)
        ax.set_xlim(left=floor / 1.8)
        lo, hi = ax.get_xlim()
        target = ax.xaxis
    decades = [v for v in ticker.LogLocator(base=10).tick_values(lo, hi) if floor * 3 <= v <= hi]
    target.set_major_locator(ticker.FixedLocator([floor] + decades))
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _: "0" if v == floor else fmt.rate(v)))
    target.set_minor_formatter(ticker.NullFormatter())
    # a break mark on the spine, between the zero line and the first decade
    mid = math.sqrt(floor * (decades[0] if decades else floor * 10))
    kw = dict(color="#444444", lw=1.0, clip_on=False, zorder=6)
    if axis == "y":
        trans = blended_transform_factory(ax.transAxes, ax.transData)
        for d in (0.93, 1.07):
            ax.plot([-0.012, 0.012], [mid * d / 1.05, mid * d * 1.05], transform=trans, **kw)
    else:
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        for d in (0.93, 1.07):
            ax.plot([mid * d / 1.05, mid * d * 1.05], [-0.012, 0.012], transform=trans, **kw)


def _class_rate_axes(ax: Any, names: Sequence[str], floor: float | None, xlabel: str) -> None:
    """One row per anomaly class (named in its colour, the first on top), rates along x: linear from 0,
    or on a log scale above ``floor`` where one is given."""
    ax.set_yticks(range(len(names)), names)
    for lab, cls in zip(ax.get_yticklabels(), names):
        lab.set_color(class_look(cls).color)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    if floor is not None:
        ax.set_xscale("log")
        _mark_floor(ax, floor, axis="x")
    else:
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt.rate(v)))
    ax.set_xlabel(xlabel + (" — log scale" if floor is not None else ""))


def _shade_faults(ax: Any, faults: Sequence[Mapping[str, Any]], div: float, label: bool = True) -> None:
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for f in faults or ():
        ax.axvspan(f["from"] / div, f["to"] / div, facecolor=FAULT_COLOR, alpha=0.12, lw=0, zorder=0)
        ax.axvspan(f["from"] / div, f["to"] / div, facecolor="none", hatch="////", edgecolor="#55555566",
                   lw=0, zorder=2.5)
        if label and f.get("label"):
            ax.text(f["from"] / div, 0.98, " " + str(f["label"]), transform=trans, ha="left", va="top",
                    fontsize=8, color="#333333", style="italic", zorder=5,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _title(doc: Mapping[str, Any]) -> str:
    return f"{doc_name(doc)} ({doc.get('kind', 'results')})"


# --------------------------------------------------------------------------------------------------
# 1. Rate against a swept parameter


def value_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def sweep_axes(sweep: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """The x-axis key and the keys that tell lines apart (compared policies, further varied keys)."""
    points = sweep["points"]
    vary, compare = list(sweep.get("vary") or {}), list(sweep.get("compare") or {})
    varying = [k for k in dict.fromkeys(k for p in points for k in p["params"])
               if len({value_key(p["params"].get(k)) for p in points}) > 1]
    candidates = vary + [k for k in varying if k not in vary and k not in compare]
    xkey = next((k for k in candidates if k in varying), candidates[0] if candidates else None)
    lines = [k for k in compare + vary + varying if k != xkey]
    return xkey, list(dict.fromkeys(k for k in lines if k in varying))


def sweep_series(sweep: Mapping[str, Any]) -> tuple[str | None, list[str], list[Any], dict[str, dict[str, Mapping[str, Any]]]]:
    """The x key, the line keys, the x values in display order, and per line label the results at each
    x value (keyed by :func:`value_key`)."""
    points = sweep["points"]
    xkey, line_keys = sweep_axes(sweep)
    declared = list((sweep.get("vary") or {}).get(xkey, [])) if xkey else []
    seen = [p["params"].get(xkey) for p in points]
    present = {value_key(v) for v in seen}
    xvalues = [v for v in {value_key(v): v for v in declared + seen}.values() if value_key(v) in present]
    series: dict[str, dict[str, Mapping[str, Any]]] = {}
    for p in points:
        series.setdefault(series_label(p["params"], line_keys), {})[value_key(p["params"].get(xkey))] = p["results"]
    return xkey, line_keys, xvalues, series


def series_label(params: Mapping[str, Any], keys: Sequence[str]) -> str:
    if not keys:
        return "results"
    if len(keys) == 1:
        return str(params.get(keys[0]))
    return ", ".join(f"{short_key(k)}={params.get(k)}" for k in keys)


def _axis_positions(key: str | None, values: Sequence[Any]) -> tuple[list[float], list[str], str, bool]:
    """x positions, tick labels, axis label with unit, and whether the axis is categorical."""
    from sim.scenario import parse_duration

    label = key or "the one setting swept"
    if key is None:
        return [0.0] * len(values), ["all"] * len(values), label, True
    def spaced(xs: list[float], ticks: list[str], axis_label: str) -> tuple[list[float], list[str], str, bool]:
        if min(xs) > 0 and max(xs) / min(xs) >= 10:  # spread a 5m..1h or 1x..20x axis evenly
            return [math.log10(x) for x in xs], ticks, f"{axis_label}, log scale", False
        return xs, ticks, axis_label, False

    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return spaced([float(v) for v in values], [fmt.number(v) for v in values], label)
    try:
        secs = [parse_duration(v) for v in values]
    except (ValueError, TypeError):
        secs = None
    if values and secs is not None and all(isinstance(v, str) for v in values):
        return spaced(secs, [str(v) for v in values], f"{label} (duration)")
    return [float(i) for i in range(len(values))], [str(v) for v in values], label, True


@styled
def sweep_rates(sweep: Mapping[str, Any], classes: Sequence[str] | None = None,
                measure: str = "unresolved") -> Figure:
    """Anomaly rate (``measure``: ``occurred`` or ``unresolved``) against the swept parameter: one panel per
    class, one line per compared policy, 95% confidence bands, a log scale when rates span more than two
    decades."""
    points = sweep["points"]
    xkey, line_keys, xvalues, series = sweep_series(sweep)
    pos, ticklabels, xlabel, categorical = _axis_positions(xkey, xvalues)
    xpos = {value_key(v): p for v, p in zip(xvalues, pos)}
    looks = series_looks(series)

    results = [p["results"] for p in points]
    panels = list(classes) if classes else nonzero_classes(results)
    nothing = not panels
    if nothing:
        panels = ordered_classes(c for r in results for c in (r.get("anomalies") or {}))[:1] or ["paid_but_closed"]
    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(10.5 if ncols == 2 else 8.5, 1.3 + 3.1 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    span = (max(pos) - min(pos)) if len(pos) > 1 else 1.0
    dodge_step = 0.012 * span if len(series) > 1 else 0.0

    for ax, cls in zip(axes, panels):
        values = []
        for pts in series.values():
            for res in pts.values():
                values.extend(measured(anomaly(res, cls), measure))
        floor = log_floor(values)
        for i, (label, pts) in enumerate(series.items()):
            look = looks[label]
            dodge = (i - (len(series) - 1) / 2) * dodge_step
            rows = []
            for v in xvalues:
                res = pts.get(value_key(v))
                if res is not None:
                    rows.append((xpos[value_key(v)] + dodge, *measured(anomaly(res, cls), measure)))
            if not rows:
                continue
            xs, ys, lo, hi = (np.array(col, dtype=float) for col in zip(*rows))
            zero = ys <= 0
            if floor is not None:
                ys, lo, hi = (np.where(a <= 0, floor, a) for a in (ys, lo, hi))
            ax.fill_between(xs, lo, hi, color=look.color, alpha=0.15, lw=0, zorder=2)
            ax.vlines(xs, lo, hi, color=look.color, lw=1.0, alpha=0.8, zorder=2)  # whiskers: readable alone
            ax.plot(xs, ys, color=look.color, ls=look.linestyle, marker=look.marker, ms=6, lw=1.8,
                    label=label, zorder=3, clip_on=False)  # zeros sit on the axis: keep their markers whole
            if zero.any():
                ax.plot(xs[zero], ys[zero], ls="none", marker=look.marker, ms=6, mfc="white",
                        mec=look.color, mew=1.5, zorder=4, clip_on=False)
        if floor is not None:
            ax.set_yscale("log")
            _mark_floor(ax, floor)
        else:
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt.rate(v)))
        ax.set_title(cls, color=class_look(cls).color if not nothing else "#333333")
        ax.set_xticks(pos, ticklabels)
        if span and not categorical:
            ax.set_xlim(min(pos) - 0.06 * span, max(pos) + 0.06 * span)
        elif categorical:
            ax.set_xlim(-0.4, len(pos) - 0.6)
        ax.set_ylabel(RATE_LABEL + (" — log" if floor is not None else ""))
        ax.set_xlabel(xlabel)
        if nothing:
            ax.text(0.5, 0.55, "no anomaly of any class at any point", transform=ax.transAxes,
                    ha="center", fontsize=10, color="#555555")
    for ax in axes[len(panels):]:
        ax.set_visible(False)

    handles = [Line2D([], [], color=looks[s].color, ls=looks[s].linestyle, marker=looks[s].marker, lw=1.8, label=s)
               for s in series]
    handles.append(Patch(facecolor="#888888", alpha=0.25, label="95% CI"))
    if any(measured(anomaly(r, c), measure)[0] <= 0 for r in results for c in panels):
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="#555555", label="zero (hollow)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6))
    name = sweep.get("scenario_name") or next((r.get("scenario_name") for r in results if r.get("scenario_name")), None)
    by = f", by {', '.join(short_key(k) for k in line_keys)}" if line_keys else ""
    what = "occurred (arose at all)" if measure == "occurred" else "unresolved at the end"
    fig.suptitle(f"Anomaly rate, {what}, vs {short_key(xkey) if xkey else 'sweep point'}{by}"
                 + (f" — {name}" if name else ""), fontweight="bold", fontsize=12)
    return fig


# --------------------------------------------------------------------------------------------------
# 1b. Each class's occurred and unresolved rates in one result

MEASURE_LOOKS = (("occurred", "o", "occurred (arose at all)"), ("unresolved", "s", "unresolved at the end"))


@styled
def anomaly_rates(doc: Mapping[str, Any], classes: Sequence[str] | None = None) -> Figure:
    """One row per class: the share of orders where it occurred and where it was still unresolved at the
    end, each a dot with its 95% interval; zeros hollow at the axis with their upper bound drawn."""
    names = list(classes) if classes else [c for c in ordered_classes(doc.get("anomalies") or {})
                                           if anomaly(doc, c).get("observable") is not False]  # blind: no rate to draw
    values = [v for c in names for m, _, _ in MEASURE_LOOKS for v in (measure_interval(anomaly(doc, c), m) or ())]
    floor = log_floor(values)
    fig = Figure(figsize=(10.5, 1.9 + 0.48 * max(len(names), 1)), layout="constrained")
    ax = fig.add_subplot()
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    for row, cls in enumerate(names):
        a = anomaly(doc, cls)
        look = class_look(cls)
        notes = []
        for k, (measure, marker, _) in enumerate(MEASURE_LOOKS):
            iv = measure_interval(a, measure)
            if iv is None:
                continue
            r, lo, hi = iv
            y = row + (-0.16 if k == 0 else 0.16)
            if floor is not None:
                r, lo, hi = (max(v, floor) for v in (r, lo, hi))
            ax.plot([lo, hi], [y, y], color=look.color, lw=2.0, alpha=0.9 if k == 0 else 0.6, solid_capstyle="butt")
            ax.plot([lo, hi], [y, y], ls="none", marker="|", ms=8, color=look.color)
            zero = iv[0] <= 0
            ax.plot([r], [y], marker=marker, ms=7, color=look.color, mfc="white" if zero or k == 1 else look.color,
                    mec=look.color, mew=1.6, zorder=4, clip_on=False)
            orders = a.get(f"{measure}_orders")
            if orders is not None:
                notes.append(f"{fmt.count(orders)}")
        if notes:
            ax.text(1.01, row, " / ".join(notes), transform=trans, va="center", fontsize=8.5, color="#333333")
    _class_rate_axes(ax, names, floor, "share of counted orders")
    ax.text(1.01, 1.0, "orders\noccurred / unresolved", transform=ax.transAxes, fontsize=8, color="#555555",
            va="bottom")
    methods = sorted({str(anomaly(doc, c).get(f"{m}_ci_method")) for c in names for m, _, _ in MEASURE_LOOKS
                      if anomaly(doc, c).get(f"{m}_ci_method")}) or sorted(
        {str(anomaly(doc, c).get("ci_method")) for c in names if anomaly(doc, c).get("ci_method")})
    handles = [Line2D([], [], color="#444444", marker=marker, mfc="#444444" if k == 0 else "white", lw=2,
                      alpha=0.9 if k == 0 else 0.6, label=label) for k, (_, marker, label) in enumerate(MEASURE_LOOKS)]
    handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="#555555", label="zero: bar = 95% upper bound"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3,
               title=f"95% intervals: {', '.join(methods) or 'none'}", title_fontsize=8.5)
    reps = doc.get("replications")
    over = f" over {reps} replications" if reps and reps > 1 else ""
    fig.suptitle(f"{_title(doc)}: occurred and unresolved rates per class\n"
                 f"({fmt.count(doc.get('orders'))} orders counted{over})", fontweight="bold", fontsize=11.5)
    return fig


# --------------------------------------------------------------------------------------------------
# 2. A run over time

_STATE_ORDER = ("awaiting_payment", "paid", "refund_pending", "shipped", "delivered", "completed", "refunded", "closed")


def _time_axis(timeline: Mapping[str, Any]) -> tuple[np.ndarray, float, float, str]:
    t = np.asarray(timeline.get("t") or [], dtype=float)
    bucket = float(timeline.get("bucket_s") or (t[1] - t[0] if len(t) > 1 else 1.0))
    span = (t[-1] + bucket) if len(t) else bucket
    div, unit = time_unit(span)
    return t, bucket, div, unit


MAX_POINTS = 720  # longer timelines are re-bucketed: the eye cannot tell more apart, and SVGs stay small


def rebin(n: int, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indexes of the first bucket of each group when ``n`` buckets are merged into at most ``max_points``."""
    return np.arange(0, n, max(1, math.ceil(n / max_points)), dtype=int)


def _levels(values: Any, n: int, idx: np.ndarray) -> np.ndarray:
    """A level (orders in a state, money held) per group: its value at the group's first bucket."""
    return np.asarray(values, dtype=float)[:n][idx]


def _sums(values: Any, n: int, idx: np.ndarray) -> np.ndarray:
    """A count (arrivals, anomaly starts) per group: the sum over the group's buckets."""
    v = np.asarray(values, dtype=float)[:n]
    return np.add.reduceat(v, idx) if len(idx) else v


@styled
def run_timeline(doc: Mapping[str, Any]) -> Figure:
    """Orders by state as a stacked area, arrivals per second on a second axis, fault windows shaded,
    and where anomalies began (a strip per class, bar height by count). When observation runs on long
    after the horizon (a day of notification retries), the chart shows the first 1.5 horizons."""
    tl = doc.get("timeline") or {}
    t_all, bucket, _, _ = _time_axis(tl)
    end_all = (t_all[-1] + bucket) if len(t_all) else bucket
    horizon = doc.get("horizon_s")
    cut = 1.5 * horizon if horizon and end_all > 3 * horizon else end_all
    n = int(np.searchsorted(t_all, cut, "left"))
    idx = rebin(n)
    t = t_all[:n][idx]
    width = np.diff(np.append(idx, n)) * bucket  # seconds covered by each group
    span = (t[-1] + width[-1]) if len(t) else bucket
    div, unit = time_unit(span)
    x = t / div
    x_end = span / div
    starts_all = {c: np.asarray(v, dtype=float) for c, v in (tl.get("anomaly_starts") or {}).items()}
    starts = {c: _sums(v, n, idx) for c, v in starts_all.items()}
    later = {c: float(v[n:].sum()) for c, v in starts_all.items()}
    rug = [c for c in ordered_classes(starts) if starts[c].sum() > 0 or later[c] > 0]
    ratios = [3.2] + ([0.45 + 0.32 * len(rug)] if rug else [])
    fig = Figure(figsize=(10.5, 1.6 + sum(ratios)), layout="constrained")
    axes = fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios, squeeze=False)[:, 0]
    ax = axes[0]

    states = tl.get("states") or {}
    names = [s for s in _STATE_ORDER if s in states] + sorted(s for s in states if s not in _STATE_ORDER)
    looks = state_looks(names)
    handles: list[Any] = []
    if names and len(x):
        polys = ax.stackplot(np.append(x, x_end), *[np.append(lv, lv[-1]) for lv in
                                                    (_levels(states[s], n, idx) for s in names)],
                             colors=[looks[s].color for s in names], labels=names, lw=0.4, edgecolor="#FFFFFF")
        for poly, s in zip(polys, names):
            poly.set_hatch(looks[s].hatch)
            poly.set_edgecolor("#00000040")
        handles += [Patch(facecolor=looks[s].color, hatch=looks[s].hatch, edgecolor="#00000060", label=s)
                    for s in names]
    ax.set_ylabel("orders in each state")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt.count(v)))
    if len(x):
        ax.set_xlim(x[0], x_end)
    ax.set_ylim(bottom=0)

    arrivals = tl.get("arrivals")
    if arrivals is not None and len(x):
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        ax2.grid(False)
        per_s = _sums(arrivals, n, idx) / width
        ax2.step(np.append(x, x_end), np.append(per_s, per_s[-1]), where="post", color="#000000", lw=1.4)
        ax2.set_ylabel("arrivals (orders/s)")
        ax2.set_ylim(0, max(per_s.max(), 1e-9) * 1.25)
        handles.append(Line2D([], [], color="#000000", lw=1.4, label="arrivals (orders/s, right axis)"))

    faults = doc.get("faults") or []
    for a in axes:
        _shade_faults(a, faults, div, label=a is ax)
    if faults:
        handles.append(Patch(facecolor=FAULT_COLOR, alpha=0.3, hatch="////", edgecolor="#BBBBBB", label="fault window"))
    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for key, label, ha in (("warmup_s", "warmup ends ", "right"), ("horizon_s", " arrivals stop", "left")):
        v = doc.get(key)
        if v and len(x) and x[0] <= v / div <= x_end:
            for a in axes:
                a.axvline(v / div, color="#555555", lw=0.9, ls=(0, (2, 2)), zorder=4)
            ax.text(v / div, 1.01, label, transform=trans, ha=ha, va="bottom", fontsize=7.5, color="#555555")

    group = fmt.duration(width[0]) if len(width) else fmt.duration(bucket)
    if rug:
        axr = axes[1]
        right = blended_transform_factory(axr.transAxes, axr.transData)
        for row, cls in enumerate(rug):
            look = class_look(cls)
            y = len(rug) - 1 - row
            counts = starts[cls]
            nz = counts > 0
            peak = counts.max() if len(counts) else 0.0
            if peak > 0:
                axr.bar(x[nz], 0.78 * counts[nz] / peak, width=width[nz] / div, bottom=y - 0.39, align="edge",
                        color=look.color, edgecolor=look.color, lw=0.4, hatch=look.hatch, zorder=3)
            notes = [f"{fmt.count(counts.sum())} (max {fmt.count(peak)} per {group})"] if peak > 0 else []
            if later[cls]:
                notes.append(f"+{fmt.count(later[cls])} after {fmt.duration(cut)}")
            note = "\n".join(notes)
            axr.text(1.005, y, note, transform=right, va="center", fontsize=7.5, color="#333333")
        axr.set_yticks(range(len(rug)), list(reversed(rug)))
        for lab, cls in zip(axr.get_yticklabels(), reversed(rug)):
            lab.set_color(class_look(cls).color)
        axr.set_ylim(-0.55, len(rug) - 0.45)
        axr.grid(axis="y", visible=False)
        axr.set_title(f"where anomalies began (first replication): bar height = count per {group}, "
                      "relative to each row's maximum", fontsize=9, fontweight="normal", loc="left")
        axr.spines["left"].set_visible(False)
    axes[-1].set_xlabel(f"time since the run started ({unit}; buckets of {group})")
    if not len(x):
        _empty(ax, "no timeline in these results")
    note = "" if rug or not len(x) else " — no anomaly began in this replication"
    shown = f", first {fmt.duration(cut)} of {fmt.duration(end_all)}" if cut < end_all else ""
    fig.suptitle(f"{_title(doc)}: orders by state over time (first replication{shown}){note}",
                 fontweight="bold", fontsize=12)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
    return fig


# --------------------------------------------------------------------------------------------------
# 3. How long money was stuck

_DURATION_TICKS = (0.1, 1, 10, 60, 600, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


def _duration_log_axis(axis: Any, lo: float, hi: float) -> None:
    ticks = [v for v in _DURATION_TICKS if lo / 1.5 <= v <= hi * 1.5] or [lo, hi]
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt.duration(v)))
    axis.set_minor_locator(ticker.NullLocator())


@styled
def stuck_windows(doc: Mapping[str, Any], classes: Sequence[str] | None = None) -> Figure:
    """How long the parties disagreed: per class, the Kaplan–Meier share of instances repaired by time x
    (instances still open at the end are censored there, marked with a tick, not counted as repaired),
    with p50 and p99 marked; and (when there is a timeline) the money held by open anomalies over time.
    A schema 1 document, without open/closed flags, gets the plain CDF of its windows."""
    names = list(classes) if classes else [c for c in ordered_classes(doc.get("anomalies") or {})
                                           if anomaly(doc, c).get("window_samples")]
    tl = doc.get("timeline") or {}
    money = tl.get("money_at_risk")
    has_money = money is not None and len(tl.get("t") or []) > 0
    ratios = [3.0] + ([1.7] if has_money else [])
    fig = Figure(figsize=(10.5, 1.5 + 1.2 * sum(ratios)), layout="constrained")
    axes = fig.subplots(len(ratios), 1, height_ratios=ratios, squeeze=False)[:, 0]
    ax = axes[0]
    floor_note = False
    any_censored = False
    km = False
    all_samples: list[float] = []
    handles: list[Any] = []
    for cls in names:
        a = anomaly(doc, cls)
        samples = np.sort(np.asarray(a.get("window_samples") or [], dtype=float))
        if not len(samples):
            continue
        if (samples <= 0).any():
            floor_note = True
        all_samples.extend(np.maximum(samples, 0.1).tolist())
        look = class_look(cls)
        curve = repair_curve(a)
        repair = a.get("repair_s") or {}
        if curve is not None:
            km = True
            times, share, censored = curve
            p50, p99 = repair.get("median"), repair.get("p99")
            if len(times):
                xs = np.maximum(np.concatenate([[times[0]], times]), 0.1)
                ax.step(xs, np.concatenate([[0.0], share]), where="post", color=look.color, ls=look.linestyle,
                        lw=1.8)
                last = share[-1]
            else:
                last = 0.0
            if len(censored):
                any_censored = True
                cx = np.maximum(censored, 0.1)
                level = np.zeros(len(cx))
                if len(times):  # the step function's value at each censoring time
                    idx = np.searchsorted(np.maximum(times, 0.1), cx, side="right") - 1
                    level = np.where(idx >= 0, share[np.clip(idx, 0, None)], 0.0)
                ax.plot(cx, level, ls="none", marker="|", ms=9, mew=1.4, color=look.color, zorder=5)
                ax.hlines(last, np.maximum(times[-1], 0.1) if len(times) else cx.min(), cx.max(), color=look.color,
                          ls=look.linestyle, lw=1.2, alpha=0.7)
            share_txt = f"{repair['repaired_share']:.0%} repaired by the end" if repair.get("repaired_share") is not None else ""
            label = (f"{cls} (n={len(samples)}, {int(len(censored))} open at end)\n"
                     f"p50 {_reached(p50)} · p99 {_reached(p99)}" + (f" · {share_txt}" if share_txt else ""))
        else:
            p50, p99 = window_quantiles(a)
            y = np.arange(1, len(samples) + 1) / len(samples)
            ax.step(np.maximum(np.concatenate([[samples[0]], samples]), 0.1), np.concatenate([[0.0], y]),
                    where="post", color=look.color, ls=look.linestyle, lw=1.8)
            label = f"{cls} (n={len(samples)})\np50 {fmt.duration(p50)} · p99 {fmt.duration(p99)}"
        handles.append(Line2D([], [], color=look.color, ls=look.linestyle, lw=1.8, marker=look.marker, ms=7,
                              mec="black", mew=0.5, label=label))
        for q, v in ((0.5, p50), (0.99, p99)):
            if v is not None:
                ax.plot([max(v, 0.1)], [q], marker=look.marker, color=look.color, mec="black", mew=0.5, ms=7, zorder=5)
    if any_censored:
        handles.append(Line2D([], [], ls="none", marker="|", ms=9, mew=1.4, color="#444444",
                              label="open at the end (censored there)"))
    if all_samples:
        ax.set_xscale("log")
        lo, hi = min(all_samples), max(all_samples)
        ax.set_xlim(lo / 1.6, hi * 1.6)
        _duration_log_axis(ax.xaxis, lo, hi)
        trans = blended_transform_factory(ax.transAxes, ax.transData)
        for q, text in ((0.5, "p50"), (0.99, "p99")):
            ax.axhline(q, color="#999999", lw=0.8, ls=":", zorder=1)
            ax.text(1.005, q, text, transform=trans, va="center", fontsize=8, color="#555555")
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(1.0))
        if km:
            ax.set_ylabel("share repaired within x\n(Kaplan–Meier)")
            ax.set_xlabel("time to repair, log scale (disagreement until agreement; still open: censored at the end)"
                          + ("; zero drawn at 100ms" if floor_note else ""))
        else:
            ax.set_ylabel("share of instances with window ≤ x")
            ax.set_xlabel("window: from when the parties disagreed until they agreed or observation ended (log scale)"
                          + ("; zero windows drawn at 100ms" if floor_note else ""))
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.04, 1.0), title="class (instances sampled)",
                  labelspacing=0.9)
    else:
        _empty(ax, "no anomaly windows in these results")
    ax.set_title("time to repair per class, open instances censored (markers: p50 and p99)" if km else
                 "CDF of anomaly windows per class (markers: p50 and p99)", loc="left")

    if has_money:
        axm = axes[1]
        t, bucket, div, unit = _time_axis(tl)
        idx = rebin(len(t))
        x = np.append(t[idx] / div, (t[-1] + bucket) / div)
        m = _levels(money, len(t), idx)
        axm.fill_between(x, np.append(m, m[-1]), step="post", color="#D55E00", alpha=0.25, lw=0)
        axm.step(x, np.append(m, m[-1]), where="post", color="#D55E00", lw=1.5)
        _shade_faults(axm, doc.get("faults") or [], div)
        axm.set_xlim(x[0], x[-1])
        axm.set_ylim(bottom=0, top=max(m.max() * 1.15, 1.0))
        axm.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"¥{v:,.0f}"))
        axm.set_ylabel("CNY held by\nopen anomalies")
        axm.set_xlabel(f"time since the run started ({unit})")
        axm.set_title("money at risk over time (first replication; each order's money counted once)",
                      loc="left")
    fig.suptitle(f"{_title(doc)}: how long money was stuck", fontweight="bold", fontsize=12)
    return fig


# --------------------------------------------------------------------------------------------------
# 4. The story of one broken order

def _on_payment_side(e: Mapping[str, Any]) -> bool:
    return e.get("actor") in ("gateway", "bnpl")


# (source type, source test, destination type or None for any, destination test, field that must match,
# max gap in seconds): the first later event that passes is the message's arrival.
_MESSAGES: tuple[tuple[str, Callable[[dict], bool], str | None, Callable[[dict], bool], str | None, float], ...] = (
    ("notify.sent", lambda e: True, "notify.received", lambda e: True, "notify_id+attempt", 86400.0),
    ("user.pay", lambda e: True, None, _on_payment_side, "trade", 120.0),
    ("user.retry", lambda e: True, None, _on_payment_side, "trade", 120.0),
    ("user.pay", lambda e: True, "bnpl.authorized", lambda e: True, None, 120.0),
    ("trade.processing", lambda e: True, "ledger.txn", lambda e: e.get("actor") == "bank", "trade", 3600.0),
    ("ledger.txn", lambda e: e.get("actor") == "bank" and e.get("kind") == "charge", "trade.succeeded",
     lambda e: True, "trade", 86400.0),
    ("trade.succeeded", lambda e: True, "app.shown", lambda e: e.get("screen") == "payment_succeeded", None, 60.0),
    ("trade.failed", lambda e: True, "app.shown", lambda e: e.get("screen") == "payment_failed", None, 60.0),
    ("trade.unknown", lambda e: True, "app.shown", lambda e: e.get("screen") == "payment_unknown", None, 60.0),
    ("order.created", lambda e: True, "app.shown", lambda e: e.get("screen") == "awaiting_payment", None, 60.0),
    ("order.closed", lambda e: True, "app.shown", lambda e: e.get("screen") == "order_closed", None, 3600.0),
    ("order.paid", lambda e: True, "app.shown", lambda e: e.get("screen") == "order_paid", None, 3600.0),
    ("order.refunded", lambda e: True, "app.shown", lambda e: e.get("screen") == "refunded", None, 3600.0),
    ("bnpl.finish_sent", lambda e: True, "bnpl.finish_requested", lambda e: True, "agreement", 3600.0),
    ("recon.repaired", lambda e: e.get("action") == "refund", "trade.refunded", lambda e: True, "trade", 3600.0),
    ("client.invoke", lambda e: e.get("op") == "pay", "trade.created", lambda e: True, None, 60.0),
    ("client.invoke", lambda e: e.get("op") == "create_order", "order.created", lambda e: True, None, 60.0),
)

# What "from here" means for each class: the moment the parties started to disagree (docs/checker.md).
_DISAGREEMENT = {
    "paid_but_closed": "the bank had debited {amount} but the order said closed",
    "success_shown_then_closed": "the app had shown “payment succeeded” but the order said closed",
    "failure_shown_but_charged": "the app had said the payment failed or was unknown, yet the bank had debited {amount}",
    "double_charge": "the buyer had been debited twice for one order ({amount} extra)",
    "charge_without_order": "{amount} had been debited with no order to account for it",
    "order_paid_without_charge": "the order said paid but no debit stood behind it ({amount})",
    "stuck_pending": "the payment was past its deadline and grace and still undecided ({amount})",
    "bnpl_stuck_unfinished": "the goods had been delivered for the whole finish limit and the BNPL agreement "
                             "({amount}) was still unfinished",
    "bnpl_false_overdue": "the buyer had paid but the BNPL provider counted them overdue ({amount})",
    "bnpl_deduction_failed": "the deduction of {amount} had failed and nobody had resolved it",
    "ledger_imbalance": "debits and credits no longer balanced ({amount})",
    "amount_mismatch": "the buyer had been charged an amount other than the order's ({amount} apart)",
    "over_refund": "more had been refunded than was charged ({amount} too much)",
    "refund_to_wrong_party": "a refund of {amount} had gone to an account other than the one that paid",
    "duplicate_fulfilment": "the order had been fulfilled a second time ({amount})",
    "oversold": "the order was revived after its stock had been released ({amount})",
    "bnpl_double_deduction": "the BNPL agreement had been paid twice ({amount} extra)",
    "refunded_and_shipped": "a cancel was accepted after the goods shipped ({amount} back, goods gone)",
}
# The event that makes the class start, preferred among events at the start time.
_KEY_EVENTS = {
    "paid_but_closed": ("ledger.txn", "order.closed"),
    "success_shown_then_closed": ("order.closed", "app.shown"),
    "failure_shown_but_charged": ("ledger.txn", "app.shown"),
    "double_charge": ("ledger.txn",),
    "charge_without_order": ("ledger.txn",),
    "order_paid_without_charge": ("order.paid",),
    "bnpl_false_overdue": ("bnpl.overdue",),
    "bnpl_deduction_failed": ("bnpl.deduction",),
    "ledger_imbalance": ("ledger.txn",),
    "amount_mismatch": ("ledger.txn", "trade.succeeded"),
    "over_refund": ("ledger.txn", "trade.refunded"),
    "refund_to_wrong_party": ("ledger.txn",),
    "duplicate_fulfilment": ("order.paid", "order.shipped"),
    "oversold": ("order.reopened", "order.paid"),
    "bnpl_double_deduction": ("bnpl.deduction", "bnpl.repaid"),
    "refunded_and_shipped": ("after_sales.accepted",),
}


def disagreement_caption(cls: str, example: Mapping[str, Any]) -> str:
    amount = fmt.money(example.get("amount")) if example.get("amount") is not None else "the amount"
    phrase = _DISAGREEMENT.get(cls, "the parties disagreed ({amount})").format(amount=amount)
    return "from here " + phrase


def _money_label(e: Mapping[str, Any]) -> str:
    user = sum(p.get("amount", 0) for p in e.get("postings") or () if str(p.get("account", "")).startswith("user:"))
    if user:
        return f"{'−' if user < 0 else '+'}¥{abs(user) / 100:,.2f} user"
    total = sum(abs(p.get("amount", 0)) for p in e.get("postings") or ()) / 2
    return f"¥{total / 100:,.2f}" if total else ""


def event_label(e: Mapping[str, Any]) -> str:
    """A short label for one history event, with the detail that matters in a story."""
    typ = str(e.get("type", "?"))
    if typ == "order.created":
        amt = e.get("amount")
        return f"order.created ¥{amt / 100:,.2f} {e.get('method', '')}".rstrip() if isinstance(amt, (int, float)) else typ
    if typ == "order.closed":
        return f"order.closed ({e.get('reason', '?')})"
    if typ == "ledger.txn":
        return f"{e.get('kind', 'txn')} {_money_label(e)}".rstrip()
    if typ.startswith("notify."):
        extra = "" if typ != "notify.received" else (" acked" if e.get("acked") else " not acked")
        return f"{typ} #{e.get('attempt', '?')}{extra}"
    if typ == "app.shown":
        return f"shows {e.get('screen', '?')}"
    if typ in ("user.pay", "user.retry", "bnpl.finish_sent", "bnpl.finish_failed"):
        return f"{typ} #{e.get('attempt', '?')}"
    if typ == "trade.failed":
        return f"trade.failed ({e.get('reason', '?')})"
    if typ == "bnpl.deduction":
        return f"deduction #{e.get('attempt', '?')} {'ok' if e.get('ok') else 'failed'}"
    if typ.startswith("client."):
        status = f" {e['status']}" if e.get("status") is not None else ""
        return f"{typ} {e.get('op', '')}{status}".rstrip()
    if typ == "recon.found":
        return f"recon.found {e.get('kind', '')}".rstrip()
    if typ == "recon.repaired":
        return f"recon.repaired {e.get('action', '')}".rstrip()
    return typ


def _event_marker(e: Mapping[str, Any]) -> str:
    typ = str(e.get("type", ""))
    if typ == "ledger.txn":
        return "s"
    if typ in ("notify.lost", "trade.unknown", "trade.failed", "bnpl.finish_failed", "client.fail",
               "client.unknown", "order.closed", "trade.closed") or (typ == "bnpl.deduction" and not e.get("ok")):
        return "X"
    if typ == "app.shown":
        return "D"
    return "o"


def story_events(example: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The example's events in time order; at equal times the buyer's own action comes first (it is
    what the other parties answer)."""
    events = [dict(e) for e in example.get("events") or () if e.get("actor") != "run"]
    return sorted(events, key=lambda e: (e["t"], e.get("actor") != "user"))


def _collapse(events: list[dict[str, Any]], keep: int = 3) -> list[dict[str, Any]]:
    """Repetition (polling, retries) shortened: a block of one or two alike events repeated more than
    ``keep`` times becomes its first block, one ``… ×n`` mark, and its last block."""
    def sig(e: Mapping[str, Any]) -> tuple:
        return e.get("actor"), e.get("type"), e.get("screen"), e.get("op")

    sigs = [sig(e) for e in events]
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(events):
        best_period, best_reps = 1, 1
        for period in (1, 2):
            reps = 1
            while sigs[i + reps * period:i + (reps + 1) * period] == sigs[i:i + period]:
                reps += 1
            if reps * period > best_reps * best_period and reps > keep:
                best_period, best_reps = period, reps
        run = events[i:i + best_reps * best_period]
        if best_reps > keep:
            first, last = run[:best_period], run[-best_period:]
            out += [*first, {"t": run[best_period]["t"], "actor": run[0].get("actor"), "type": run[0].get("type"),
                             "_collapsed": len(run) - 2 * best_period}, *last]
        else:
            out.append(events[i])
            run = run[:1]
        i += len(run)
    return out


def _matches(src: Mapping[str, Any], dst: Mapping[str, Any], field: str | None) -> bool:
    if field is None:
        return True
    return all(src.get(f) is not None and src.get(f) == dst.get(f) for f in field.split("+"))


def story_messages(items: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """Pairs (source index, destination index) of the messages a story draws as arrows: for each
    event, the first rule of ``_MESSAGES`` that finds an arrival not already taken."""
    pairs: list[tuple[int, int]] = []
    used: set[int] = set()

    def arrival(i: int, d_type: str | None, d_ok: Callable[[dict], bool], field: str | None, gap: float) -> int | None:
        src = items[i]
        for j in range(i + 1, len(items)):
            dst = items[j]
            if dst["t"] - src["t"] > gap:
                return None
            if (j not in used and d_type in (None, dst.get("type")) and d_ok(dst)
                    and dst.get("actor") != src.get("actor") and _matches(src, dst, field)):
                return j
        return None

    for i, src in enumerate(items):
        for s_type, s_ok, d_type, d_ok, field, gap in _MESSAGES:
            if src.get("_collapsed") or src.get("type") != s_type or not s_ok(src):
                continue
            j = arrival(i, d_type, d_ok, field, gap)
            if j is not None:
                pairs.append((i, j))
                used.add(j)
                break
    return pairs


@styled
def order_story(example: Mapping[str, Any], cls: str, scenario_name: str | None = None) -> Figure:
    """A swimlane sequence diagram of one example history: a lane per party, a mark per event, arrows
    for messages, gaps compressed (real elapsed times on the axis), and the moment the parties started
    to disagree shaded with a caption."""
    events = story_events(example)
    items = _collapse(events)
    present = {str(e.get("actor")) for e in items}
    lanes = [a for a in LANES if a in CORE_LANES or a in present] + sorted(present - set(LANES))
    lane_y = {a: len(lanes) - 1 - i for i, a in enumerate(lanes)}

    times = np.array([e["t"] for e in items], dtype=float)
    xs = np.zeros(len(items))
    for i in range(1, len(items)):
        xs[i] = xs[i - 1] + 1.0 + 0.55 * math.log10(1.0 + max(0.0, times[i] - times[i - 1]))
    width_units = (xs[-1] if len(xs) else 1.0) + 6.0
    fig = Figure(figsize=(min(24.0, max(10.5, 2.2 + 0.36 * width_units)), 2.0 + 0.74 * len(lanes)),
                 layout="constrained")
    ax = fig.add_subplot()
    for a, y in lane_y.items():
        if (len(lanes) - 1 - y) % 2 == 0:
            ax.axhspan(y - 0.5, y + 0.5, color="#F3F3F3", lw=0, zorder=0)
        ax.axhline(y, color=LANE_COLORS.get(a, "#999999"), lw=0.8, alpha=0.6, zorder=1)
    ax.set_yticks(list(lane_y.values()), list(lane_y))
    for lab in ax.get_yticklabels():
        lab.set_fontweight("bold")
    ax.grid(False)
    for side in ("left", "top", "right"):
        ax.spines[side].set_visible(False)

    start = example.get("start")
    x_start, key_index = None, None
    if start is not None and len(items):
        at = int(np.searchsorted(times, start - 1e-6, "left"))  # first event at or after the start
        if at < len(items) and abs(times[at] - start) <= 1e-6:
            same = [i for i in range(at, len(items)) if abs(times[i] - start) <= 1e-6]
            wanted = _KEY_EVENTS.get(cls, ())
            key_index = next((i for i in same if items[i].get("type") in wanted), same[0])
            x_start = xs[at] - 0.4  # the band starts with the event that made the parties disagree
        elif at == 0:
            x_start = xs[0] - 0.6
        elif at == len(items):
            x_start = xs[-1] + 1.0
        else:
            x_start = float(np.interp(start, times, xs))
    right = max((xs[-1] if len(xs) else 0.0) + 3.5, (x_start or 0.0) + 2.5)
    left = (xs[0] if len(xs) else 0.0) - 1.0

    for i, e in enumerate(items):
        y = lane_y[str(e.get("actor"))]
        color = LANE_COLORS.get(str(e.get("actor")), "#555555")
        if e.get("_collapsed"):
            ax.text(xs[i], y, f"… ×{e['_collapsed']}", ha="center", va="center", fontsize=8, color="#444444",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="#BBBBBB"), zorder=4)
            continue
        key = i == key_index
        ax.plot([xs[i]], [y], marker=_event_marker(e), ms=8 if key else 6.5, color=color, mec="black", mew=0.6,
                zorder=5, ls="none")
        ax.annotate(event_label(e), (xs[i], y), xytext=(2, 6), textcoords="offset points", rotation=22,
                    rotation_mode="anchor", ha="left", va="bottom", fontsize=7.5,
                    fontweight="bold" if key or e.get("type") == "ledger.txn" else "normal", zorder=6)
    for i, j in story_messages(items):
        src, dst = items[i], items[j]
        ax.annotate("", xy=(xs[j], lane_y[str(dst.get("actor"))]), xytext=(xs[i], lane_y[str(src.get("actor"))]),
                    arrowprops=dict(arrowstyle="-|>", color="#555555", lw=0.9, shrinkA=5, shrinkB=5,
                                    mutation_scale=9), zorder=3)
    bottom = min(lane_y.values()) - 0.95
    top = max(lane_y.values()) + 1.7
    if x_start is not None:
        look = class_look(cls)
        window = example.get("window_s")
        resolved = bool(example.get("resolved"))
        x_end = right
        if resolved and window is not None and start is not None:
            end_t = start + window
            x_end = float(np.interp(end_t, times, xs)) if end_t <= times[-1] else xs[-1] + 1.0
        ax.axvspan(x_start, x_end, color=look.color, alpha=0.09, lw=0, zorder=0)
        ax.axvline(x_start, color=look.color, lw=2.0, zorder=2)
        if resolved and x_end < right:
            ax.axvline(x_end, color=look.color, lw=1.2, ls=(0, (3, 2)), zorder=2)
        caption = disagreement_caption(cls, example)
        tail = (f"they agreed again {fmt.duration(window)} later" if resolved and window is not None else
                f"still disagreeing when observation ended{f', {fmt.duration(window)} later' if window else ''}")
        near_right = x_start > left + 0.6 * (right - left)
        ax.text(x_start + (-0.15 if near_right else 0.15), top - 0.12, f"{caption}\n{tail}",
                ha="right" if near_right else "left", va="top", fontsize=9, color="#222222", zorder=7,
                bbox=dict(boxstyle="round,pad=0.35", fc="white", ec=look.color, lw=1.4))

    # Time axis: compressed gaps, real elapsed times as tick labels, large gaps written out.
    t0 = times[0] if len(times) else 0.0
    ticks, labels, last_x, last_label = [], [], -math.inf, None
    for xi, ti in zip(xs, times):
        lab = "+" + fmt.duration(ti - t0) if ti > t0 else "0s"
        if xi - last_x >= 1.4 and lab != last_label:
            ticks.append(xi)
            labels.append(lab)
            last_x, last_label = xi, lab
    ax.set_xticks(ticks, labels, rotation=50, ha="right", fontsize=7.5, rotation_mode="anchor")
    for i in range(1, len(items)):
        gap = times[i] - times[i - 1]
        if gap >= 120:
            ax.text((xs[i] + xs[i - 1]) / 2, bottom + 0.2, f"⋯ {fmt.duration(gap)} ⋯", ha="center", va="bottom",
                    fontsize=7.5, color="#666666", style="italic")
    if start is not None and len(times) and start - times[-1] >= 120 and x_start is not None:
        ax.text((xs[-1] + x_start) / 2, bottom + 0.2, f"⋯ {fmt.duration(start - times[-1])} ⋯", ha="center",
                va="bottom", fontsize=7.5, color="#666666", style="italic")
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.set_xlabel(f"time since the first event (t = {fmt.duration(t0)} on the run clock); "
                  "gaps compressed, elapsed time on the ticks")
    role = example.get("role")
    head = f"{cls}: the story of order {example.get('order', '?')}" + (f" ({role} example)" if role else "")
    if scenario_name:
        head += f" — {scenario_name}"
    fig.suptitle(head, fontweight="bold", fontsize=12, color="#222222")
    return fig


# --------------------------------------------------------------------------------------------------
# 5. Predicted against measured


def intervals_overlap(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return a[1] <= b[2] and b[1] <= a[2]


@styled
def predicted_vs_measured(simulation: Mapping[str, Any], live: Mapping[str, Any],
                          classes: Sequence[str] | None = None, measure: str = "unresolved") -> Figure:
    """Rates per class (``measure``: ``occurred`` or ``unresolved``) from a simulation (predicted) and a
    live run (measured) of the same scenario, as dots with 95% whiskers, and whether the intervals overlap."""
    names = list(classes) if classes else nonzero_classes([simulation, live])
    if not names:
        names = ordered_classes(list(simulation.get("anomalies") or {}) + list(live.get("anomalies") or {}))
    values = [v for c in names for d in (simulation, live) for v in measured(anomaly(d, c), measure)]
    floor = log_floor(values)
    fig = Figure(figsize=(10.5, 1.8 + 0.5 * max(len(names), 1)), layout="constrained")
    ax = fig.add_subplot()
    sides = ((simulation, SIMULATION_LOOK, -0.14, "predicted (simulation)"), (live, LIVE_LOOK, 0.14, "measured (live)"))
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    for row, cls in enumerate(names):
        ivs = []
        for doc, look, off, _ in sides:
            r, lo, hi = measured(anomaly(doc, cls), measure)
            ivs.append((r, lo, hi))
            if floor is not None:
                r, lo, hi = (max(v, floor) for v in (r, lo, hi))
            ax.plot([lo, hi], [row + off] * 2, color=look.color, lw=2.0, ls=look.linestyle, solid_capstyle="butt")
            ax.plot([lo, hi], [row + off] * 2, ls="none", marker="|", ms=8, color=look.color)
            hollow = ivs[-1][0] <= 0
            ax.plot([r], [row + off], marker=look.marker, ms=7, color=look.color,
                    mfc="white" if hollow else look.color, mec=look.color, mew=1.5, zorder=4, clip_on=False)
        agree = intervals_overlap(*ivs)
        ax.text(1.01, row, "✓ agree" if agree else "✗ differ", transform=trans, va="center", fontsize=9,
                color="#117733" if agree else "#B00000", fontweight="bold")
    _class_rate_axes(ax, names, floor, RATE_LABEL)
    ax.text(1.01, 1.0, "intervals\noverlap?", transform=ax.transAxes, fontsize=8, color="#555555", va="bottom")

    def method(doc: Mapping[str, Any]) -> str:
        m = {a.get(f"{measure}_ci_method", a.get("ci_method")) for a in (doc.get("anomalies") or {}).values()} - {None}
        return f", 95% CI ({'/'.join(sorted(m))})" if m else ", no interval"

    def reps(doc: Mapping[str, Any]) -> str:
        n = doc.get("replications")
        return f"{n} replication{'s' if n != 1 else ''}" if n is not None else "replications unknown"

    handles = [Line2D([], [], color=look.color, ls=look.linestyle, marker=look.marker, lw=2,
                      label=f"{label}: {reps(doc)}{method(doc)}")
               for doc, look, _, label in sides]
    handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="#555555", label="zero (hollow)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=3)
    name = simulation.get("scenario_name") or live.get("scenario_name") or "scenario"
    what = "occurred (arose at all)" if measure == "occurred" else "unresolved at the end"
    fig.suptitle(f"Predicted vs measured — {name}: share of orders where the class {what}", fontweight="bold",
                 fontsize=12)
    return fig
