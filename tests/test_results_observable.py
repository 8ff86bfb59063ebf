"""Every results document says what its histories observed and which classes they can decide."""

from __future__ import annotations

from test_check import END, Order

from sim.check import CheckConfig, check_events, read_history
from sim.examples import EXAMPLE_HISTORY
from sim.results import build_results
from sim.runner import simulate
from sim.scenario import Scenario
from sim.vocabulary import ANOMALY_CLASSES, OBSERVATION_SOURCES

LEDGER_ONLY = {"ledger_imbalance", "refund_to_wrong_party"}


def _doc(summaries, kind="check"):
    return build_results(kind, summaries, scenario=None, scenario_name=None, seed=None, horizon_s=None,
                         warmup_s=None, end_s=None)


def test_a_simulation_declares_that_it_observes_everything():
    """The simulation sees every party's events, so it declares every source (even BNPL, with no BNPL
    order at all) rather than leaving the checker to infer them: no class is ever blind in a simulation."""
    scenario = Scenario(name="tiny").with_overrides({
        "run.horizon": "60s", "run.warmup": "5s", "run.drain": "5m", "run.replications": 2,
        "load.arrival_rate": 1.0, "user.payment_methods": {"card": 1.0}})
    doc = simulate(scenario, progress=False)
    obs = doc["observable"]
    assert obs["sources"] == {src: True for src in OBSERVATION_SOURCES}
    assert obs["how"] == {src: "declared" for src in OBSERVATION_SOURCES}
    assert obs["classes"] == {cls: True for cls in ANOMALY_CLASSES}
    assert obs["not_observable"] == [] and obs["money_from"] == "ledger"
    assert not any("observable" in a for a in doc["anomalies"].values())


def test_a_history_without_ledger_lines_marks_the_ledger_classes_not_observable():
    o = Order().paid_flow()
    s = check_events([e for e in o.events if e["type"] != "ledger.txn"], CheckConfig(end=END))
    doc = _doc([s])
    obs = doc["observable"]
    assert obs["sources"]["ledger"] is False and obs["how"]["ledger"] == "not seen"
    assert obs["money_from"] == "trade events"
    assert set(obs["not_observable"]) == LEDGER_ONLY
    assert {c for c, ok in obs["classes"].items() if not ok} == LEDGER_ONLY
    for cls in ANOMALY_CLASSES:
        assert doc["anomalies"][cls].get("observable", True) is (cls not in LEDGER_ONLY)


def test_over_replications_a_class_is_decidable_only_if_every_one_observed_it():
    full = check_events(read_history(EXAMPLE_HISTORY))
    o = Order().paid_flow()
    blind = check_events([e for e in o.events if e["type"] != "ledger.txn"], CheckConfig(end=END))
    obs = _doc([full, blind])["observable"]
    assert obs["sources"]["ledger"] is False and obs["sources"]["gateway"] is True
    assert obs["how"]["ledger"] == "varies between replications"
    assert obs["money_from"] == "varies between replications"
    assert set(obs["not_observable"]) == LEDGER_ONLY
    assert _doc([full, full])["observable"]["not_observable"] == []


def test_tables_and_report_say_not_observable_rather_than_zero():
    from rich.console import Console

    from reports import charts
    from reports.html import anomaly_table
    from sim.results import summary_table

    o = Order().paid_flow()
    doc = _doc([check_events([e for e in o.events if e["type"] != "ledger.txn"], CheckConfig(end=END))])
    console = Console(width=250, record=True)
    console.print(summary_table(doc))
    lines = console.export_text().splitlines()
    for cls in ANOMALY_CLASSES:
        row = next(line for line in lines if line.strip().startswith(cls + " "))
        assert ("not observable" in row) is (cls in LEDGER_ONLY), row
    html = anomaly_table(doc)
    assert html.count("not observable in this history") == len(LEDGER_ONLY)
    fig = charts.anomaly_rates(doc)
    names = {t.get_text() for t in fig.axes[0].get_yticklabels()}
    assert names == set(ANOMALY_CLASSES) - LEDGER_ONLY  # no rate drawn for what was not observed
