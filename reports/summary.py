"""The written summary at the top of a report: sentences generated from the numbers.

Plain text (the HTML layer escapes it): which anomalies, how often, how long, how much money, and what
the compared mitigations change.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from reports import fmt
from reports.charts import (
    anomaly,
    intervals_overlap,
    nonzero_classes,
    occurred,
    rate_interval,
    short_key,
    sweep_series,
    value_key,
    window_quantiles,
)
from reports.documents import doc_name
from reports.style import ordered_classes


UNCLEAR = "the intervals overlap: not a clear difference"


def _rate_ci(a: Mapping[str, Any]) -> str:
    ci = a.get("ci95")
    if not ci or (not a.get("rate") and not ci[1]):  # "0", not "0 [0, 0]"
        return fmt.rate(a.get("rate"))
    return f"{fmt.rate(a.get('rate'))} {fmt.interval(ci)}"


def headline(doc: Mapping[str, Any]) -> str:
    reps = doc.get("replications")
    parts = [f"{fmt.count(doc.get('orders'))} orders counted"]
    if reps is not None:
        parts.append(f"over {reps} replication{'s' if reps != 1 else ''}")
    if doc.get("seed") is not None:
        parts.append(f"(seed {doc['seed']})")
    what = {"live": "measured live", "simulation": "simulated", "check": "checked", "sweep_point": "sweep point"}
    return f"{doc_name(doc)} ({what.get(str(doc.get('kind')), doc.get('kind'))}): " + " ".join(parts) + "."


def _occurred(a: Mapping[str, Any]) -> int:
    """Orders where the class arose (schema 1: the unresolved instances, all it knows)."""
    return int(a.get("occurred_orders", a.get("count")) or 0)


def class_sentence(cls: str, a: Mapping[str, Any]) -> str:
    """What buyers lived through, then the figures: occurred and unresolved rates with their intervals,
    time to repair, money held at the end."""
    from sim.results import buyer_sentence

    text = buyer_sentence(cls, dict(a), fmt.duration) or f"{cls}: none"
    if "occurred_rate" in a:
        text += (f" ({cls}: occurred {fmt.rate(a.get('occurred_rate'))} per order, 95% CI "
                 f"{fmt.interval(a.get('occurred_ci95'))}; unresolved {fmt.rate(a.get('unresolved_rate'))}, "
                 f"95% CI {fmt.interval(a.get('unresolved_ci95'))}")
        repair = a.get("repair_s") or {}
        if repair and repair.get("p99") is not None:
            text += f"; p99 time to repair {fmt.duration(repair['p99'])}"
        elif repair and repair.get("median") is not None:
            text += "; p99 time to repair not reached"
    else:  # schema 1
        text += f" ({cls}: rate {fmt.rate(a.get('rate'))} per order"
        text += f", 95% CI {fmt.interval(a.get('ci95'))}" if a.get("ci95") else ""
        p50, p99 = window_quantiles(a)
        if p50 is not None:
            text += f"; the parties disagreed for a median {fmt.duration(p50)} (p99 {fmt.duration(p99)})"
    if a.get("amount"):
        per = a.get("amount_per_replication") or {}
        text += f"; {fmt.money(a['amount'])} still held at the end"
        if per.get("ci95"):
            text += (f" (total; per replication {fmt.money(per['mean'])} "
                     f"[{fmt.money(per['ci95'][0])}, {fmt.money(per['ci95'][1])}])")
    return text + ")."


def _by_occurrence(doc: Mapping[str, Any]) -> list[str]:
    anomalies = doc.get("anomalies") or {}
    found = [c for c in ordered_classes(anomalies) if _occurred(anomaly(doc, c)) or occurred(anomaly(doc, c))]
    return sorted(found, key=lambda c: -(anomaly(doc, c).get("occurred_rate", anomaly(doc, c).get("rate")) or 0))


def results_summary(doc: Mapping[str, Any]) -> list[str]:
    """Sentences about one results document (beside its facts), the most frequent anomaly first."""
    out: list[str] = []
    anomalies = doc.get("anomalies") or {}
    found = _by_occurrence(doc)
    if not found:
        repaired = sum(int(a.get("repaired") or 0) for a in anomalies.values())
        out.append("No anomaly of any class was left unresolved: orders, payments, agreements and ledgers ended "
                   "consistent." + (f" {fmt.count(repaired)} instances arose and were repaired before the end."
                                    if repaired else ""))
    for cls in found:
        out.append(class_sentence(cls, anomaly(doc, cls)))
    money = sum(float(a.get("amount") or 0) for a in anomalies.values())
    if len(found) > 1 and money:
        out.append(f"In all, {fmt.money(money)} was held by unresolved anomalies at the end of observation "
                   "(summed over classes; an order in two classes counts twice).")
    faults = doc.get("faults") or []
    if faults:
        out.append("Fault windows: " + "; ".join(
            f"{f.get('label') or 'fault'} ({fmt.duration(f['from'])}–{fmt.duration(f['to'])})" for f in faults) + ".")
    methods = {a.get("ci_method") for a in anomalies.values()} | {a.get("occurred_ci_method") for a in anomalies.values()}
    if "clopper-pearson-effective-n" in methods:
        out.append("Where replications varied more than binomially, the interval is the exact one at the effective "
                   "number of orders their spread implies (wider than treating every order as independent).")
    if doc.get("replications") == 1 and "wilson" in methods:
        out.append("One replication: the intervals are Wilson score intervals on the count.")
    elif doc.get("replications") == 1 and not any(a.get("ci95") for a in anomalies.values()):
        out.append("One replication and no intervals: read the rates as single observations.")
    return out


def sweep_summary(sweep: Mapping[str, Any]) -> list[str]:
    """What the sweep shows: how each class moves along the x axis and what each compared policy changes."""
    points = sweep["points"]
    xkey, line_keys, xs, series = sweep_series(sweep)
    labels = list(series)
    xname = short_key(xkey) if xkey else "point"
    n = f"{len(points)} point{'s' if len(points) != 1 else ''}"
    if xkey is None:
        out = [f"Sweep of {n}, no parameter varied."]
    else:
        out = [f"Sweep of {xname} over {', '.join(str(x) for x in xs)}"
               + (f", comparing {', '.join(short_key(k) for k in line_keys)}: {', '.join(labels)}" if line_keys else "")
               + f" ({n})."]
    results = [p["results"] for p in points]
    found = nonzero_classes(results)
    if not found:
        out.append("No anomaly of any class at any point.")
        return out
    base = labels[0]
    for cls in found:
        b = series[base]
        bx = [x for x in xs if value_key(x) in b]
        if len(bx) > 1:
            first, last = anomaly(b[value_key(bx[0])], cls), anomaly(b[value_key(bx[-1])], cls)
            r0, r1 = first.get("rate") or 0, last.get("rate") or 0
            verb = "rises" if r1 > r0 else "falls" if r1 < r0 else "stays"
            out.append(f"{'With ' + base + ', ' if line_keys else ''}{cls} {verb} from {_rate_ci(first)} at {xname}={bx[0]} to "
                       f"{_rate_ci(last)} at {xname}={bx[-1]}.")
        for other in labels[1:]:
            o = series[other]
            common = [x for x in xs if value_key(x) in b and value_key(x) in o]
            if not common:
                continue
            diffs = [((anomaly(b[value_key(x)], cls).get("rate") or 0) - (anomaly(o[value_key(x)], cls).get("rate") or 0), x)
                     for x in common]
            if all(not occurred(anomaly(o[value_key(x)], cls)) for x in common):
                worst = max(common, key=lambda x: anomaly(b[value_key(x)], cls).get("rate") or 0)
                wa = anomaly(b[value_key(worst)], cls)
                if occurred(wa):
                    unclear = rate_interval(wa)[1] <= 0
                    out.append(f"{other} has no {cls} at any {xname} ({base}: up to {_rate_ci(wa)} at "
                               f"{xname}={worst}" + (f"; {UNCLEAR})." if unclear else ")."))
                continue
            gain, x = max(diffs, key=lambda d: abs(d[0]))
            ba, oa = anomaly(b[value_key(x)], cls), anomaly(o[value_key(x)], cls)
            if gain == 0:
                continue
            verb = "cuts" if gain > 0 else "raises"
            overlap = intervals_overlap(rate_interval(ba), rate_interval(oa))
            out.append(f"{other} {verb} {cls} from {_rate_ci(ba)} to {_rate_ci(oa)} at {xname}={x}"
                       + (f" ({UNCLEAR})." if overlap else "."))
    return out


def comparison_summary(simulation: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """How the measured rates stand against the predicted ones."""
    found = nonzero_classes([simulation, live])
    if not found:
        return ["Neither the simulation nor the live run found any anomaly: prediction and measurement agree."]
    differ = [c for c in found if not intervals_overlap(rate_interval(anomaly(simulation, c)), rate_interval(anomaly(live, c)))]
    out = [f"Predicted and measured agree (their 95% intervals overlap) for {len(found) - len(differ)} of the "
           f"{len(found)} classes that occurred in either."]
    for cls in ordered_classes(differ):
        s, m = anomaly(simulation, cls), anomaly(live, cls)
        word = "higher" if (m.get("rate") or 0) > (s.get("rate") or 0) else "lower"
        out.append(f"{cls}: measured {_rate_ci(m)} is {word} than predicted {_rate_ci(s)}.")
    return out


def top_summary(docs: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[int, int]]) -> list[tuple[str, str]]:
    """The few lines at the top of the report: ``(who, what)`` for every document and comparison."""
    out: list[tuple[str, str]] = []
    for doc in docs:
        if doc.get("kind") == "sweep":
            out.append((f"Sweep {doc_name(doc)}", " ".join(sweep_summary(doc)[:4])))
            continue
        if doc.get("kind") == "explain":
            firsts = []
            for cls, entry in (doc.get("classes") or {}).items():
                ranking = (entry.get("occurred") or {}).get("ranking") or []
                if ranking:
                    firsts.append(f"{cls}: {ranking[0]['key']} first")
            out.append((f"What drives each rate, {doc_name(doc)}",
                        ("; ".join(firsts) + ".") if firsts else "no anomaly occurred at any sampled point."))
            continue
        found = _by_occurrence(doc)
        who, _, facts = headline(doc).partition(": ")
        if not found:
            out.append((who, facts + " No anomaly was left unresolved."))
            continue
        top = found[0]
        a = anomaly(doc, top)
        from sim.results import buyer_sentence

        lived = buyer_sentence(top, dict(a), fmt.duration)
        money = sum(float(x.get("amount") or 0) for x in (doc.get("anomalies") or {}).values())
        text = (f"{facts} {len(found)} anomaly class{'es' if len(found) != 1 else ''} occurred; the most frequent, "
                f"{top}: {lived}")
        text += f"; {fmt.money(money)} was still held at the end." if money else "."
        out.append((who, text))
    for s, l in pairs:
        out.append((f"Predicted vs measured, {doc_name(docs[s])}", " ".join(comparison_summary(docs[s], docs[l])[:3])))
    return out
