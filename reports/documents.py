"""Reading the documents a report is drawn from: results (``docs/results.md``) and sweeps.

A *results document* is the JSON that ``simulate``, ``check``, ``load`` and every sweep point write
(``schema_version = 2``, or 1 without the occurred/repaired figures; ``kind`` one of ``simulation``,
``check``, ``live``, ``sweep_point``). This
module parses it itself (it does not depend on ``sim.results``) and checks only what the charts read,
so a report can be drawn from any producer that keeps the contract.

A *sweep document* wraps the results of a grid of scenario variants. Its shape (``kind = "sweep"``)::

    {
      "schema_version": 2,
      "kind": "sweep",
      "scenario_name": "mall_pattern",                 // optional: the base scenario
      "vary":    {"order_service.order_ttl": ["5m", "15m", "30m"]},       // the x axis (first key)
      "compare": {"order_service.close_policy": ["naive", "close_trade_then_order"]},  // one line each
      "points": [
        {"params": {"order_service.order_ttl": "5m", "order_service.close_policy": "naive"},
         "results": { <a results document, kind "sweep_point" or "simulation"> }},
        ...
      ]
    }

``vary`` and ``compare`` map dotted scenario keys to the values tried, in the order they should be
shown; ``vary`` may hold several keys (the first is the x axis, the others become extra lines) and
``compare`` may be empty. ``params`` of each point holds one value for each key of ``vary`` and
``compare``. Values are written as in a scenario file: numbers, durations (``"15m"``) or words.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any, Mapping

from sim.errors import ConfigError

SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)  # a report still draws version 1 (unresolved rates only)
RESULT_KINDS = ("simulation", "check", "live", "sweep_point")
SWEEP_KIND = "sweep"
EXPLAIN_KIND = "explain"  # checkout-chaos explain's explain.json (docs/explain.md)


def load_document(path: str | Path) -> dict[str, Any]:
    """Read and check one results or sweep document, or raise :class:`ConfigError` naming the file.
    A directory stands for the ``results.json`` inside it (what ``simulate --out DIR`` writes)."""
    p = Path(path)
    if p.is_dir() and (p / "results.json").is_file():
        p = p / "results.json"
    elif p.is_dir() and (p / "explain.json").is_file():
        p = p / "explain.json"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (expected a results JSON written by simulate, check, load or sweep)") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory without a results.json; expected a results JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot be read: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return check_document(doc, str(p))


def check_document(doc: Any, source: str = "<results>") -> dict[str, Any]:
    """Check a parsed results or sweep document; return it unchanged, or raise :class:`ConfigError`."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object (a results document), found {_kind_of(doc)}")
    if doc.get("kind") == EXPLAIN_KIND:
        _check_explain(doc, source)
        return doc
    version = doc.get("schema_version")
    if version not in SCHEMA_VERSIONS or isinstance(version, bool):
        found = "no schema_version" if "schema_version" not in doc else f"schema_version {version!r}"
        raise ConfigError(f"{source}: expected schema_version {SCHEMA_VERSION} (or 1, docs/results.md), found {found}")
    kind = doc.get("kind")
    if kind == SWEEP_KIND:
        _check_sweep(doc, source)
    elif kind in RESULT_KINDS:
        _check_results(doc, source)
    else:
        raise ConfigError(
            f"{source}: kind: expected one of {', '.join(RESULT_KINDS + (SWEEP_KIND, EXPLAIN_KIND))}, found {kind!r}"
        )
    return doc


def is_explain(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind") == EXPLAIN_KIND


def _check_explain(doc: Mapping[str, Any], source: str) -> None:
    """What the report reads of an explain.json: its method, and per class and measure a ranking."""
    _expect(doc.get("schema_version") == 1, source, "schema_version", "1 (an explain document)",
            doc.get("schema_version"))
    _expect(isinstance(doc.get("method"), dict), source, "method", "an object", doc.get("method"))
    classes = doc.get("classes")
    _expect(isinstance(classes, dict), source, "classes", "an object of anomaly classes", classes)
    for cls, entry in classes.items():
        _expect(isinstance(entry, dict), source, f"classes.{cls}", "an object", entry)
        for measure in ("occurred", "unresolved"):
            m = entry.get(measure)
            _expect(isinstance(m, dict) and isinstance(m.get("ranking"), list), source,
                    f"classes.{cls}.{measure}.ranking", "a list", (m or {}).get("ranking") if isinstance(m, dict) else m)
            for j, row in enumerate(m["ranking"]):
                ok = (isinstance(row, dict) and isinstance(row.get("key"), str) and _is_number(row.get("mu_star"))
                      and isinstance(row.get("mu_star_ci95"), list) and len(row["mu_star_ci95"]) == 2
                      and all(_is_number(x) for x in row["mu_star_ci95"]))
                _expect(ok, source, f"classes.{cls}.{measure}.ranking[{j}]",
                        "an object with key, mu_star and mu_star_ci95 [low, high]", row)


def is_sweep(doc: Mapping[str, Any]) -> bool:
    return doc.get("kind") == SWEEP_KIND


def doc_name(doc: Mapping[str, Any]) -> str:
    """What a report calls a document: its scenario's name, else its kind."""
    return str(doc.get("scenario_name") or (doc.get("scenario") or {}).get("name") or doc.get("kind") or "results")


def _kind_of(value: Any) -> str:
    return {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}.get(type(value), type(value).__name__)


def _is_number(value: Any) -> bool:
    # numbers.Real: documents handed over in memory (simulate --report) may hold numpy scalars
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _expect(cond: bool, source: str, key: str, expected: str, found: Any, found_text: str | None = None) -> None:
    if not cond:
        shown = found_text or (_kind_of(found) if isinstance(found, (list, dict, type(None), bool)) else repr(found))
        raise ConfigError(f"{source}: {key}: expected {expected}, found {shown}")


def _check_results(doc: Mapping[str, Any], source: str) -> None:
    anomalies = doc.get("anomalies")
    _expect(isinstance(anomalies, dict), source, "anomalies", "an object of anomaly classes", anomalies)
    for cls, a in anomalies.items():
        key = f"anomalies.{cls}"
        _expect(isinstance(a, dict), source, key, "an object", a)
        for field in ("count", "rate", "occurred_rate", "unresolved_rate", "occurred_orders", "unresolved_orders"):
            if a.get(field) is not None:
                _expect(_is_number(a[field]), source, f"{key}.{field}", "a number", a[field])
        for field in ("ci95", "occurred_ci95", "unresolved_ci95"):
            ci = a.get(field)
            if ci is not None:
                _expect(isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci),
                        source, f"{key}.{field}", "null or [low, high]", ci)
        flags = a.get("window_samples_open")
        if flags is not None:
            _expect(isinstance(flags, list) and all(isinstance(v, bool) for v in flags)
                    and len(flags) == len(a.get("window_samples") or []), source, f"{key}.window_samples_open",
                    "a list of booleans, one per window sample", flags)
        samples = a.get("window_samples")
        if samples is not None:
            _expect(isinstance(samples, list) and all(_is_number(v) for v in samples),
                    source, f"{key}.window_samples", "a list of seconds", samples)
    timeline = doc.get("timeline")
    if timeline is not None:
        _expect(isinstance(timeline, dict), source, "timeline", "an object or null", timeline)
        t = timeline.get("t")
        _expect(isinstance(t, list) and all(_is_number(v) for v in t), source, "timeline.t",
                "a list of bucket starts (seconds)", t)
        n = len(t)
        series = [("arrivals", timeline.get("arrivals")), ("money_at_risk", timeline.get("money_at_risk"))]
        for group in ("states", "anomaly_starts"):
            sub = timeline.get(group) or {}
            _expect(isinstance(sub, dict), source, f"timeline.{group}", "an object", sub)
            series += [(f"{group}.{k}", v) for k, v in sub.items()]
        for name, values in series:
            if values is None:
                continue
            _expect(isinstance(values, list) and len(values) == n and all(_is_number(v) for v in values),
                    source, f"timeline.{name}", f"a list of {n} numbers (one per bucket of timeline.t)", values,
                    f"a list of {len(values)} items" if isinstance(values, list) and len(values) != n else None)
    faults = doc.get("faults")
    if faults is not None:
        _expect(isinstance(faults, list), source, "faults", "a list", faults)
        for i, f in enumerate(faults):
            _expect(isinstance(f, dict) and _is_number(f.get("from")) and _is_number(f.get("to")),
                    source, f"faults[{i}]", 'an object with numbers "from" and "to"', f)
    examples = doc.get("examples")
    if examples is not None:
        _expect(isinstance(examples, dict), source, "examples", "an object of anomaly classes", examples)
        for cls, items in examples.items():
            _expect(isinstance(items, list), source, f"examples.{cls}", "a list", items)
            for i, ex in enumerate(items):
                key = f"examples.{cls}[{i}]"
                _expect(isinstance(ex, dict), source, key, "an object", ex)
                events = ex.get("events")
                _expect(isinstance(events, list) and all(isinstance(e, dict) and _is_number(e.get("t")) for e in events),
                        source, f"{key}.events", 'a list of events, each with a number "t"', events)


def _check_sweep(doc: Mapping[str, Any], source: str) -> None:
    for group in ("vary", "compare"):
        value = doc.get(group) or {}
        _expect(isinstance(value, dict) and all(isinstance(v, list) for v in value.values()),
                source, group, "an object mapping scenario keys to lists of values", value)
    points = doc.get("points")
    _expect(isinstance(points, list) and points, source, "points", "a non-empty list", points)
    for i, point in enumerate(points):
        _expect(isinstance(point, dict) and isinstance(point.get("params"), dict), source,
                f"points[{i}]", 'an object with "params" and "results"', point)
        results = point.get("results")
        _expect(isinstance(results, dict), source, f"points[{i}].results", "a results document", results)
        check_document(results, f"{source}: points[{i}].results")
        if results.get("kind") == SWEEP_KIND:
            raise ConfigError(f"{source}: points[{i}].results: expected a results document, found a sweep")
