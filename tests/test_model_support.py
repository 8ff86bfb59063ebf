"""The platform's customer service (support.*): buyers charged for an order that does not account for
the debit complain; agents, in one queue, repair what they still find wrong when they finish."""

from __future__ import annotations

from pathlib import Path

from sim.runner import simulate
from sim.scenario import Scenario, load_scenario

ROOT = Path(__file__).resolve().parents[1]

# Lost notifications and a naive close: buyers debited for orders the timer closed (paid_but_closed),
# nobody refunds them (no reconciliation, late payments ignored).
LOST = {"run.replications": 2, "run.horizon": "20m", "run.warmup": "2m", "run.drain": "2d", "run.seed": 7,
        "load.arrival_rate": 2.0, "gateway.notify_loss": 0.4, "order_service.order_ttl": "10m",
        "order_service.close_policy": "naive", "order_service.late_payment": "ignore"}
DESK = {"support.agents": 50, "support.complaint_probability": 1.0, "support.complaint_delay": "1h",
        "support.handle_time": "10m"}


def _sim(over: dict) -> dict:
    return simulate(Scenario().with_overrides(over), progress=False)


def test_customer_service_refunds_the_paid_but_closed_orders_buyers_complain_of():
    """Off: the paid-but-closed orders stay unrefunded. On, every buyer complaining an hour after the
    debit and agents to spare: the same orders occur (nothing before the complaint changes) and every
    one is refunded through its ticket, an hour and ten minutes after the debit at the least. A desk
    whose buyers never complain repairs nothing."""
    off, on = _sim(LOST), _sim({**LOST, **DESK})
    silent = _sim({**LOST, **DESK, "support.complaint_probability": 0.0})
    a_off, a_on = off["anomalies"]["paid_but_closed"], on["anomalies"]["paid_but_closed"]
    assert a_off["count"] >= 20 and a_off["repaired"] == 0, a_off
    assert a_on["occurred_orders"] == a_off["occurred_orders"] and on["orders"] == off["orders"]
    assert a_on["count"] == 0 and a_on["repaired"] == a_off["count"], a_on
    assert a_on["repair_s"]["median"] >= 3600 + 600, a_on["repair_s"]
    tickets = on["metrics"]["support_tickets"]
    assert tickets["refunded"] * on["replications"] >= a_off["count"], tickets
    assert on["ledger_total_fen"] == 0
    assert silent["anomalies"]["paid_but_closed"]["count"] == a_off["count"]
    assert silent["metrics"]["support_tickets"]["tickets"] == 0
    assert "support" not in off["metrics"] and "support_tickets" not in off["metrics"]


def test_a_short_staffed_desk_queues_the_tickets_and_the_money_stays_held_longer():
    """Five agents at 30 minutes a ticket against a thousand: the tickets of the peak (an hour after their
    debits, a few hundred within 18 minutes) queue for hours — the mean wait is what the backlog gives,
    (n - 1) / 2 tickets ahead at 5 tickets per 30 minutes — and the buyers' money is held that much
    longer: the same orders, the same tickets, only the desk differs."""
    few = _sim({**LOST, **DESK, "support.agents": 5, "support.handle_time": "30m"})
    many = _sim({**LOST, **DESK, "support.agents": 1000, "support.handle_time": "30m"})
    w1, wn = few["anomalies"]["paid_but_closed"]["repair_s"], many["anomalies"]["paid_but_closed"]["repair_s"]
    n = few["metrics"]["support_tickets"]["tickets"]
    assert n == many["metrics"]["support_tickets"]["tickets"] >= 100
    assert many["metrics"]["support"]["wait_mean_s"] == 0
    backlog = (n - 1) / 2 / 5 * 1800  # all tickets at once: the mean ticket waits for half the others
    assert 0.5 * backlog < few["metrics"]["support"]["wait_mean_s"] < 1.2 * backlog, (backlog, few["metrics"]["support"])
    assert w1["median"] > wn["median"] + 3600, (w1, wn)
    assert few["anomalies"]["paid_but_closed"]["count"] == 0 == many["anomalies"]["paid_but_closed"]["count"]


def test_customer_service_refunds_a_second_charge_and_leaves_the_first():
    """impatient_retry (retries with a new trade number debit twice): with customer service the extra
    debit of every double charge is refunded on its ticket and the order stays paid by its first."""
    small = {"run.replications": 1, "run.horizon": "3m", "run.warmup": "30s", "run.drain": "1d",
             "load.arrival_rate": 1.0, "run.seed": 20261201, "gateway.workers": 3,
             "load.profile": [{"at": "60s", "multiplier": 10.0}, {"at": "105s", "multiplier": 1.0}]}
    base = simulate(load_scenario(ROOT / "scenarios" / "impatient_retry.toml", small), progress=False)
    desk = simulate(load_scenario(ROOT / "scenarios" / "impatient_retry.toml", {**small, **DESK}), progress=False)
    b, d = base["anomalies"]["double_charge"], desk["anomalies"]["double_charge"]
    assert b["count"] >= 5 and b["repaired"] == 0, b
    assert d["occurred_orders"] == b["occurred_orders"] and d["count"] == 0, d
    assert desk["end_states"].get("double_charged", 0) == 0 and base["end_states"].get("double_charged", 0) >= 5
    assert desk["ledger_total_fen"] == 0


def test_a_desk_without_agents_is_refused_naming_the_key():
    import pytest

    from sim.scenario import ConfigError, scenario_from_dict

    with pytest.raises(ConfigError) as err:
        scenario_from_dict({"support": {"agents": 0}}, "desk.toml")
    assert "desk.toml: support.agents" in str(err.value) and '"off"' in str(err.value)


# -- after-sales escalations (seed 003: the merchant refused to cancel, the buyer asks the platform) ---------

AFTER_SALES = ROOT / "scenarios" / "after_sales_race.toml"
# The desk hears only escalations here (no charged buyer complains), so nothing else it does moves an order.
DESK_ONLY = {"support.agents": 20, "support.complaint_probability": 0.0, "support.handle_time": "5m"}
ESCALATE = {**DESK_ONLY, "support.escalate_probability": 1.0, "support.escalation_upheld": 1.0,
            "support.escalation_delay": "5m"}


def _after_sales(over: dict) -> dict:
    from sim.model.model import run_replication

    s = load_scenario(AFTER_SALES, {"run.replications": 1, **over})
    out = []
    for i in range(2):
        events: list[dict] = []
        r = run_replication(s, i, examples=False, tap=events.append)
        out.append((r, events))
    return out


def test_an_upheld_escalation_cancels_and_refunds_an_unshipped_order_and_only_that():
    """Every refused_declined request is escalated (probability 1); each ruling reads the order as it is when
    the agent acts: refunded if unshipped, the refusal standing if the goods shipped meanwhile; the refunds go
    through the order's refund path. (Runs with and without escalations are not compared order by order: an
    escalation's refund takes the order service's network and push-latency draws, which other orders share.)"""
    plain = _after_sales(DESK_ONLY)
    esc = _after_sales(ESCALATE)
    for (p, _), (e, events) in zip(plain, esc):
        assert "escalations" not in p.metrics["support_tickets"]
        t = e.metrics["support_tickets"]
        assert t["escalations"] == e.metrics["after_sales"]["refused_declined"] > 5, t
        assert t["escalations_refunded"] + t["escalations_shipped"] + t["escalations_not_upheld"] \
            + t["escalations_moot"] == t["escalations"]
        assert t["escalations_refunded"] >= 1 and t["escalations_not_upheld"] == 0, t
        by_order: dict[str, list[dict]] = {}
        for ev in events:
            by_order.setdefault(ev.get("order"), []).append(ev)
        for evs in by_order.values():
            ruled = [ev for ev in evs if ev["type"] == "support.resolved" and ev.get("about") == "after_sales"]
            if not ruled:
                continue
            (ruling,) = ruled
            shipped_before = any(ev["type"] == "order.shipped" and ev["t"] <= ruling["t"] for ev in evs)
            assert (ruling["ruling"] == "cancel_refund") == (not shipped_before), ruling
            if ruling["ruling"] == "cancel_refund":
                assert any(ev["type"] == "order.refund_pending" and ev.get("reason") == "support_after_sales"
                           for ev in evs)
                assert not any(ev["type"] == "order.shipped" for ev in evs)  # the shipment was stopped
        assert e.ledger_total == 0


def test_a_slower_desk_lets_more_escalated_orders_ship_first():
    """The race between the desk's queue and the shipment: the same escalations, answered by 1 slow agent
    instead of 20 quick ones, find a larger share of the orders already shipped."""
    fast = _after_sales(ESCALATE)
    slow = _after_sales({**ESCALATE, "support.agents": 1, "support.handle_time": "30m"})
    n = lambda runs, k: sum(r.metrics["support_tickets"][k] for r, _ in runs)  # noqa: E731
    share = lambda runs: n(runs, "escalations_shipped") / n(runs, "escalations")  # noqa: E731
    assert n(fast, "escalations") > 50 and n(slow, "escalations") > 50
    assert share(slow) > share(fast) + 0.2, (share(slow), share(fast))
