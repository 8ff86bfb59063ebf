"""Sweep and comparison charts and tables offer both measures: where a class occurred, and where it was
left unresolved — a class that was always repaired is not dropped as if it never happened."""

from __future__ import annotations

import copy

from reports import charts
from reports.html import comparison_section, sweep_section
from reports.render import render_charts
from sim.check import check_events, read_history
from sim.examples import EXAMPLE_HISTORY
from sim.results import build_results


def _doc(kind: str) -> dict:
    doc = build_results(kind, [check_events(read_history(EXAMPLE_HISTORY))], scenario=None, scenario_name="example",
                        seed=None, horizon_s=None, warmup_s=None, end_s=None)
    return doc


def _repaired_only(doc: dict) -> list[str]:
    return [c for c, a in doc["anomalies"].items() if a["occurred_orders"] and not a["unresolved_orders"]]


def test_a_class_always_repaired_is_still_charted():
    doc = _doc("simulation")
    repaired = _repaired_only(doc)
    assert repaired, "the example history repairs at least one class completely"
    assert set(repaired) <= set(charts.nonzero_classes([doc]))
    cls = repaired[0]
    assert charts.measured(doc["anomalies"][cls], "occurred")[0] > 0
    assert charts.measured(doc["anomalies"][cls], "unresolved")[0] == 0


def test_sweeps_and_comparisons_get_an_occurred_and_an_unresolved_chart(tmp_path):
    sim, live = _doc("simulation"), _doc("live")
    point = copy.deepcopy(sim)
    point["kind"] = "sweep_point"
    sweep = {"schema_version": 2, "kind": "sweep", "scenario_name": "example", "vary": {"x.y": [1, 2]}, "compare": {},
             "points": [{"params": {"x.y": 1}, "results": point}, {"params": {"x.y": 2}, "results": point}]}
    made, pairs = render_charts([sim, live, sweep], tmp_path)
    assert pairs == [(0, 1)]
    sweeps = [c.title for c in made if c.kind == "sweep_rates"]
    compared = [c.title for c in made if c.kind == "predicted_vs_measured"]
    assert len(sweeps) == 2 and any("occurred" in t for t in sweeps) and any("unresolved" in t for t in sweeps)
    assert len(compared) == 2 and any("occurred" in t for t in compared) and any("unresolved" in t for t in compared)
    fig = charts.predicted_vs_measured(sim, live, measure="occurred")
    assert set(_repaired_only(sim)) <= {t.get_text() for t in fig.axes[0].get_yticklabels()}
    html = comparison_section(sim, live, [])
    assert "occurred: predicted (simulation)" in html and "unresolved: measured (live)" in html
    assert "occurred / unresolved rate per order" in sweep_section(0, sweep, [], None)


def test_a_schema_1_sweep_draws_its_unresolved_chart_only(tmp_path):
    import json
    from pathlib import Path

    sweep = json.loads((Path(__file__).parent / "fixtures" / "results_sweep.json").read_text())
    made, _ = render_charts([sweep], tmp_path)
    assert [c.kind for c in made] == ["sweep_rates"] and "unresolved" in made[0].title
