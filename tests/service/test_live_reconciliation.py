"""The risk-control money-loss path, live: a debit held past the gateway's query schedule (the trade
fails), the close-first checkout closes trade and order, then risk control releases the debit.
``gateway.late_approval = "ignore"`` leaves the buyer's money in clearing (the checker's
``paid_but_closed``, unresolved); statement reconciliation finds it (长款) and returns it;
``"reverse"`` returns it at once. Real processes on loopback, real SQLite; the checker judges the
live history."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from loadtests.service.runner import Services
from sim.check import CheckConfig, check_events

from .conftest import launch
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


@pytest.fixture(scope="module")
def reconciling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Services whose checkout reconciles every 2 minutes the debits older than 90 s (reconciliation is
    fixed for a run: no fault override turns it on), at time scale 120. (The delay keeps a debit from
    being read before its order's 60 s close: a debit of an open order is filled in, not refunded.)"""
    s = launch(tmp_path_factory.mktemp("recon"), {"reconciliation.interval": "120s",
                                                   "reconciliation.statement_delay": "90s"}, time_scale=120)
    yield s
    s.stop()


@pytest.fixture
def recon(reconciling: Services) -> Services:
    reconciling.set_faults({})
    return reconciling


def test_statement_reconciliation_returns_the_late_debit(recon):
    """ignore + reconciliation every 2 minutes: the first run after the release that reads it finds the debit on the
    statement — the trade is closed, nothing returned it: 长款 — and has the provider return it."""
    s = recon
    s.set_faults({**HELD, "gateway.late_approval": "ignore"})
    order, trade, buyer = _held_then_released(s)
    wait_for(lambda: "recon.repaired" in _types(s, order), timeout=10, what="the reconciliation's repair")
    wait_for(lambda: balance(s, f"user:{buyer}") == 0, timeout=5, what="the debit returned")
    events = events_of(s, order)
    found = next(e for e in events if e["type"] == "recon.found")
    repaired = next(e for e in events if e["type"] == "recon.repaired")
    reversed_ = next(e for e in events if e["type"] == "trade.reversed")
    assert (found["kind"], found["trade"], found["actor"]) == ("long", trade, "reconciler")
    assert (repaired["action"], repaired["trade"]) == ("refund", trade)
    assert reversed_["actor"] == "reconciler" and reversed_["amount"] == 2600
    charge = next(e for e in events if e["type"] == "ledger.txn" and e["kind"] == "charge")
    # at the first run (a multiple of 120 s) that reads debits this old (90 s)
    assert charge["t"] + 90 < found["t"] <= ((charge["t"] + 90) // 120 + 1) * 120 + 60, (charge["t"], found["t"])
    summary = _checked(s, order)
    pbc = summary.per_class["paid_but_closed"]
    assert pbc.count == 0 and pbc.repaired == 1, (pbc, summary.end_states)
    # Run again over nothing new: the repaired debit is not found a second time.
    t = _now(s)
    wait_for(lambda: _now(s) > (t // 120 + 1) * 120 + 10, timeout=5, what="the next reconciliation")
    time.sleep(0.2)
    assert [e["type"] for e in events_of(s, order)].count("recon.found") == 1


def test_statement_pages_and_reverse_refusals(services):
    """The statement lists each debit once, oldest first, paged; a reversal is refused for a paid
    trade (it is refunded instead) and for a closed trade the bank never debited."""
    s = services
    since = _now(s)
    trades = []
    for _ in range(3):
        order = new_order(s, amount=700)["order"]
        trade = start_payment(s, order)["trade"]
        assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
        trades.append((trade, order))
    seen, offset = [], 0
    while offset is not None:
        page = http.get(f"{s.provider_url}/statement", params={"since": since, "offset": offset, "limit": 2}).json()
        seen += [(d["trade"], d["order"]) for d in page["debits"] if d["amount"] == 700]
        assert all(since < d["t"] <= page["until"] for d in page["debits"])
        offset = page["next_offset"]
    assert [x for x in seen if x in trades] == trades
    refused = http.post(f"{s.provider_url}/trades/{trades[0][0]}/reverse")
    assert refused.status_code == 409 and refused.json()["code"] == "TRADE_NOT_CLOSED", refused.text
    order = new_order(s)["order"]
    unpaid = start_payment(s, order)["trade"]
    assert http.post(f"{s.provider_url}/trades/{unpaid}/close").status_code == 200
    refused = http.post(f"{s.provider_url}/trades/{unpaid}/reverse")
    assert refused.status_code == 409 and refused.json()["code"] == "NO_DEBIT", refused.text
    bad = http.get(f"{s.provider_url}/statement", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["field"] == "limit", bad.text
    bad = http.get(f"{s.provider_url}/statement", params={"since": "nan"})
    assert bad.status_code == 422 and bad.json()["field"] == "since", bad.text


def test_statement_reconciliation_refunds_an_ignored_late_payment(recon):
    """The classic one: a naive close, the payment's notification after it, ignored (late_payment =
    ignore). The trade succeeded, the order is closed: 长款 on the statement; the checkout refunds it."""
    s = recon
    s.set_faults({"order_service.order_ttl": "60s", "gateway.notify_latency": "120s",
                  "gateway.notify_schedule": ["30s"] * 5, "order_service.close_policy": "naive",
                  "order_service.late_payment": "ignore"})
    buyer = uid("late")
    order = new_order(s, amount=1900, user=buyer)["order"]
    trade = start_payment(s, order)["trade"]
    assert http.post(f"{s.provider_url}/trades/{trade}/pay").json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, order) == "refunded", timeout=15, what="refunded by reconciliation")
    types = _types(s, order)
    assert types.index("order.closed") < types.index("recon.found") < types.index("recon.repaired") \
        < types.index("order.refund_pending") < types.index("order.refunded"), types
    assert balance(s, f"user:{buyer}") == 0
    summary = _checked(s, order)
    pbc = summary.per_class["paid_but_closed"]
    assert pbc.count == 0 and pbc.repaired == 1, (pbc, summary.end_states)


def test_a_held_debit_is_not_made_again_when_its_failed_trade_is_paid_again(services):
    """The buyer pays the same trade number again after the gateway gave up on it (failed) while risk
    control still holds the first debit: the trade number is the bank's idempotency key, so the bank
    debits once — when the hold is released — not twice."""
    s = services
    s.set_faults({**HELD, "order_service.order_ttl": "150s", "gateway.late_approval": "ignore"})
    buyer = uid("again")
    order = new_order(s, amount=3300, user=buyer)["order"]
    trade = start_payment(s, order)["trade"]
    pay_url = f"{s.provider_url}/trades/{trade}/pay"
    assert http.post(pay_url).json()["state"] == "unknown"
    wait_for(lambda: http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "failed", timeout=10,
             what="the gateway giving up")
    # Risk control would let a new debit through at once; but the held one is this trade's: the bank
    # does not debit again, and has no answer until the hold is released.
    s.set_faults({**HELD, "order_service.order_ttl": "150s", "gateway.late_approval": "ignore",
                  "bank.risk_hold_probability": 0.0})
    assert http.post(pay_url).json()["state"] == "unknown"
    wait_for(lambda: any(e["type"] == "ledger.txn" for e in events_of(s, order)), timeout=15,
             what="the held debit released")
    time.sleep(0.3)
    charges = [e for e in events_of(s, order) if e["type"] == "ledger.txn" and e["kind"] == "charge"]
    assert len(charges) == 1, charges
    assert balance(s, f"user:{buyer}") == -3300
    assert _checked(s, order).per_class["double_charge"].count == 0
