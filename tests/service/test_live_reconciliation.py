"""The risk-control money-loss path, live: a debit held past the gateway's query schedule (the trade
fails), the close-first checkout closes trade and order, then risk control releases the debit.
``gateway.late_approval = "ignore"`` leaves the buyer's money in clearing (the checker's
``paid_but_closed``, unresolved); statement reconciliation finds it (长款) and returns it;
``"reverse"`` returns it at once. Real processes on loopback, real SQLite; the checker judges the
live history."""

from __future__ import annotations

import time

from sim.check import CheckConfig, check_events

from .helpers import balance, events_of, http, new_order, order_state, start_payment, uid, wait_for

# The gateway waits 30 s, asks the bank once 30 s later and gives up (failed); the order's 90 s close
# closes the failed trade, then the order; risk control releases the debit at 240 s.
HELD = {"bank.risk_hold_probability": 1.0, "bank.risk_hold_duration": "240s", "gateway.timeout": "30s",
        "gateway.bank_query_schedule": ["30s"], "order_service.order_ttl": "90s",
        "order_service.close_policy": "close_trade_then_order", "order_service.late_payment": "auto_refund"}


def _now(s) -> float:
    return s.admin("checkout", "GET", "/admin/stats").json()["now"]


def _types(s, order: str) -> list[str]:
    return [e["type"] for e in events_of(s, order)]


def _checked(s, order: str):
    """The checker's judgement of ``order``, observed until now."""
    return check_events((e for e in s.history() if e.get("order") == order), CheckConfig(end=_now(s)))


def _held_then_released(s) -> tuple[str, str, str]:
    """Pay an order whose debit risk control holds; wait until the hold is released (the late debit)."""
    buyer = uid("held")
    order = new_order(s, amount=2600, user=buyer)["order"]
    trade = start_payment(s, order)["trade"]
    assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "unknown"
    wait_for(lambda: order_state(s, order) == "closed", timeout=15, what="the order closed")
    assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "closed"
    wait_for(lambda: any(e["type"] == "ledger.txn" and e["kind"] == "charge" for e in events_of(s, order)),
             timeout=15, what="the held debit released")
    return order, trade, buyer


def test_late_approval_ignored_leaves_paid_but_closed(services):
    """ignore, no reconciliation: the bank debits a closed trade; nobody returns the money."""
    s = services
    s.set_faults({**HELD, "gateway.late_approval": "ignore"})
    order, trade, buyer = _held_then_released(s)
    time.sleep(0.5)  # 30 s of scenario time: nothing more happens to it
    types = _types(s, order)
    assert types.index("trade.failed") < types.index("trade.closed") < types.index("order.closed") \
        < types.index("ledger.txn"), types
    assert "trade.reversed" not in types and "recon.found" not in types
    assert balance(s, f"user:{buyer}") == -2600
    assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "closed"
    summary = _checked(s, order)
    assert summary.per_class["paid_but_closed"].count == 1, summary.end_states
    assert summary.end_states == {"paid_closed_unrefunded": 1}, summary.end_states


def test_late_approval_reversed_by_the_gateway(services):
    """reverse: the gateway returns the late debit at once; no paid-but-closed remains."""
    s = services
    s.set_faults({**HELD, "gateway.late_approval": "reverse"})
    order, trade, buyer = _held_then_released(s)
    wait_for(lambda: "trade.reversed" in _types(s, order), timeout=5, what="the reversal")
    events = events_of(s, order)
    reversed_ = next(e for e in events if e["type"] == "trade.reversed")
    assert reversed_["actor"] == "gateway" and reversed_["amount"] == 2600
    kinds = [e["kind"] for e in events if e["type"] == "ledger.txn"]
    assert kinds == ["charge", "refund"], kinds
    assert balance(s, f"user:{buyer}") == 0
    view = http.get(f"{s.provider_url}/trades/{trade}").json()
    assert view["state"] == "closed" and view["refunded"] == 2600
    summary = _checked(s, order)
    assert summary.per_class["paid_but_closed"].count == 0, summary.end_states
    assert "paid_closed_unrefunded" not in summary.end_states, summary.end_states
