"""Partial observability: a history declares (or the checker infers) what it saw; what it did not see
is reported as not observable, never as 0, and money is inferred from trade events without a ledger."""

from __future__ import annotations

import json

from test_check import END, Order, bnpl_order

from sim.check import CLASS_NEEDS, CheckConfig, check_events, read_history
from sim.examples import EXAMPLE_HISTORY
from sim.vocabulary import ANOMALY_CLASSES, OBSERVATION_SOURCES

LEDGER_ONLY = {"ledger_imbalance", "refund_to_wrong_party"}


def without(events: list[dict], *types: str) -> list[dict]:
    return [e for e in events if e["type"] not in types]


def test_every_class_says_what_it_needs():
    assert set(CLASS_NEEDS) == set(ANOMALY_CLASSES)
    for needs in CLASS_NEEDS.values():
        for need in needs:
            assert all(n in (*OBSERVATION_SOURCES, "money") for n in need.split("|"))


def test_a_full_history_observes_everything():
    s = check_events(read_history(EXAMPLE_HISTORY))
    assert s.observed == {src: True for src in OBSERVATION_SOURCES}
    assert s.observed_how["ledger"] == "seen" and s.money_from == "ledger"
    assert s.not_observable == [] and all(v.observable for v in s.per_class.values())


def test_a_log_without_ledger_lines_is_not_order_paid_without_charge():
    """The gateway's trade.succeeded stands for the money: paid orders are not 'paid without charge'."""
    o = Order().paid_flow()
    s = check_events(without(o.events, "ledger.txn"), CheckConfig(end=END))
    assert s.per_class["order_paid_without_charge"].n_windows == 0
    assert s.money_from == "trade events" and s.observed["ledger"] is False
    assert set(s.not_observable) == LEDGER_ONLY
    assert all(not s.per_class[c].observable and s.per_class[c].count == 0 for c in LEDGER_ONLY)
    assert s.inferred == {"orders_money_from_trade_events": 1}


def test_money_from_trade_events_finds_paid_but_closed_and_its_refund():
    """Without a ledger: succeeded then closed is paid_but_closed; trade.refunded repairs it."""
    o = Order().created().add(10, "trade.created", trade="A", amount=5000)
    o.add(1790, "trade.succeeded", trade="A", amount=5000).add(1800, "order.closed", reason="ttl")
    o.add(2500, "trade.refunded", trade="A", amount=5000)
    s = check_events(o.events, CheckConfig(end=END))
    pbc = s.per_class["paid_but_closed"]
    assert (pbc.count, pbc.repaired, pbc.windows) == (0, 1, [700.0])
    open_ = check_events(o.events[:-1], CheckConfig(end=END)).per_class["paid_but_closed"]
    assert (open_.count, open_.amount_fen) == (1, 5000)


def test_two_trades_succeeded_is_a_double_charge_without_a_ledger():
    o = Order().created().add(10, "trade.succeeded", trade="A", amount=5000)
    o.add(20, "trade.succeeded", trade="B", amount=5000).add(21, "order.paid", trade="A")
    s = check_events(o.events, CheckConfig(end=END))
    assert s.per_class["double_charge"].count == 1


def test_no_money_at_all_decides_no_money_class():
    """Only the buyer's screens and the order's states (a foreign checkout seen from outside)."""
    o = Order().created().screen(11, "payment_succeeded").add(12, "order.paid", trade="A")
    o2 = Order("o2").created().add(1800, "order.closed", reason="ttl")
    s = check_events(o.events + o2.events, CheckConfig(end=END))
    assert s.money_from is None
    blind = set(s.not_observable)
    assert {"order_paid_without_charge", "paid_but_closed", "double_charge", "over_refund"} <= blind
    assert "success_shown_then_closed" not in blind and "oversold" not in blind
    assert all(v.n_windows == 0 for v in s.per_class.values())


def test_run_start_declares_what_was_not_observed():
    """run.start observed.screens = false: the screens present are ignored and screen classes are blind."""
    o = Order().created().charge(10).screen(11, "payment_failed").add(12, "order.paid", trade="A")
    run = {"t": 0, "type": "run.start", "observed": {"screens": False}}
    s = check_events([run] + o.events, CheckConfig(end=END))
    assert s.observed["screens"] is False and s.observed_how["screens"] == "declared"
    assert {"failure_shown_but_charged", "success_shown_then_closed"} <= set(s.not_observable)
    assert s.per_class["failure_shown_but_charged"].n_windows == 0
    undeclared = check_events(o.events, CheckConfig(end=END))
    assert undeclared.per_class["failure_shown_but_charged"].count == 1


def test_the_callers_declaration_wins_over_run_start():
    run = {"t": 0, "type": "run.start", "observed": {"ledger": True}}
    o = Order().paid_flow()
    s = check_events([run] + without(o.events, "ledger.txn"), CheckConfig(end=END, observed={"ledger": False}))
    assert s.observed["ledger"] is False and s.money_from == "trade events"
    assert s.per_class["order_paid_without_charge"].n_windows == 0


def test_declared_ledger_makes_missing_charges_count():
    """A history that says it saw the ledger, with a paid order and no debit: order_paid_without_charge."""
    o = Order().created().add(12, "order.paid", trade="A")
    run = {"t": 0, "type": "run.start", "observed": {"ledger": True, "checkout": True}}
    s = check_events([run] + o.events, CheckConfig(end=END))
    assert s.per_class["order_paid_without_charge"].count == 1
    assert set(s.not_observable) == {"success_shown_then_closed", "failure_shown_but_charged"}  # no screens


def test_bnpl_orders_without_provider_events_are_not_observable():
    o = bnpl_order(delivered=100.0)
    s = check_events(without(o.events, "bnpl.authorized"), CheckConfig(end=400_000))
    assert s.observed["bnpl"] is False
    assert {"bnpl_stuck_unfinished", "bnpl_false_overdue", "bnpl_deduction_failed",
            "bnpl_double_deduction"} <= set(s.not_observable)
    assert s.per_class["bnpl_stuck_unfinished"].n_windows == 0
    seen = check_events(o.events, CheckConfig(end=400_000))
    assert seen.per_class["bnpl_stuck_unfinished"].count == 1


def test_no_bnpl_orders_means_bnpl_classes_are_zero_not_blind():
    s = check_events(Order().paid_flow().events, CheckConfig(end=END))
    assert s.observed["bnpl"] is True and s.observed_how["bnpl"] == "no BNPL orders"
    assert "bnpl_deduction_failed" not in s.not_observable


def test_results_json_marks_blind_classes(tmp_path, capsys):
    """The command: blind classes get observable: false in results.json and a line saying why."""
    from sim.cli import main
    from sim.results import load_results

    lines = [ln for ln in EXAMPLE_HISTORY.read_text().splitlines() if json.loads(ln)["type"] != "ledger.txn"]
    p = tmp_path / "no-ledger.jsonl"
    p.write_text("\n".join(lines) + "\n")
    assert main(["check", str(p), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "not observable in this history (no ledger lines (ledger.txn))" in out
    assert "money inferred from the gateway's trade events" in out
    doc = load_results(tmp_path / "out" / "results.json")
    assert doc["anomalies"]["ledger_imbalance"]["observable"] is False
    assert "observable" not in doc["anomalies"]["paid_but_closed"]
    assert set(doc["history"]["not_observable"]) == LEDGER_ONLY
    table = out.split("not observable")[0]
    assert "ledger_imbalance" not in table and "paid_but_closed" in table
