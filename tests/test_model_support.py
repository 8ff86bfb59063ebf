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
