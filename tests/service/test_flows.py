"""Anomalies arising live from timing and policy, never drawn: paid-but-closed and what prevents it,
unknown debits settled by the gateway's queries, and the BNPL life cycle."""

from __future__ import annotations

import math


from .helpers import http, balance, events_of, new_order, order_state, start_payment, uid, wait_for

# The notification takes 2 scenario minutes; the order lives 1 minute. At time scale 60 that is 2 s and 1 s.
RACE = {"order_service.order_ttl": "60s", "gateway.notify_latency": "120s", "gateway.notify_schedule": ["30s"] * 5}


def _pay_and_wait_for_close(s, order: str) -> None:
    pay = http.post(start_payment(s, order)["pay_url"])
    assert pay.json()["state"] == "succeeded"
    wait_for(lambda: any(e["type"] == "notify.received" for e in events_of(s, order)), timeout=10,
             what="the late notification")


def test_paid_but_closed_arises_from_a_naive_close(services):
    """naive close + a notification slower than the order TTL: the buyer is charged, the order is closed."""
    s = services
    s.set_faults({**RACE, "order_service.close_policy": "naive", "order_service.late_payment": "ignore"})
    buyer = uid("buyer")
    order = new_order(s, amount=4200, user=buyer)["order"]
    _pay_and_wait_for_close(s, order)
    assert order_state(s, order) == "closed"
    types = [e["type"] for e in events_of(s, order)]
    assert types.index("order.closed") < types.index("notify.received")
    assert balance(s, f"user:{buyer}") == -4200


def test_query_then_close_keeps_the_paid_order(services):
    """query_then_close asks the gateway at expiry, learns it is paid, and marks the order paid instead."""
    s = services
    s.set_faults({**RACE, "order_service.close_policy": "query_then_close"})
    order = new_order(s)["order"]
    _pay_and_wait_for_close(s, order)
    assert order_state(s, order) == "paid"
    assert "order.closed" not in [e["type"] for e in events_of(s, order)]


def test_close_trade_then_order_and_auto_refund(services):
    """close_trade_then_order closes unpaid trades first; auto_refund returns a late payment's money."""
    s = services
    s.set_faults({**RACE, "order_service.close_policy": "close_trade_then_order"})
    unpaid = new_order(s)["order"]
    trade = start_payment(s, unpaid)["trade"]
    wait_for(lambda: order_state(s, unpaid) == "closed", timeout=10, what="unpaid order closed")
    assert http.get(f"{s.provider_url}/trades/{trade}").json()["state"] == "closed"
    assert http.post(f"{s.provider_url}/trades/{trade}/pay").status_code == 409  # nobody can pay any more

    s.set_faults({**RACE, "order_service.close_policy": "naive", "order_service.late_payment": "auto_refund"})
    buyer = uid("late")
    late = new_order(s, user=buyer)["order"]
    _pay_and_wait_for_close(s, late)
    wait_for(lambda: order_state(s, late) == "refunded", timeout=10, what="late payment refunded")
    types = [e["type"] for e in events_of(s, late)]
    assert types.index("order.closed") < types.index("order.refund_pending") < types.index("order.refunded")
    assert balance(s, f"user:{buyer}") == 0


def test_lost_bank_response_leaves_the_trade_unknown_until_queried(services):
    """The debit happens, its answer is lost: 'unknown' after gateway.timeout, then the query finds it."""
    s = services
    s.set_faults({"bank.response_loss": 1.0, "gateway.timeout": "6s", "gateway.bank_query_schedule": ["30s", "30s"]})
    order = new_order(s)["order"]
    pay = http.post(start_payment(s, order)["pay_url"])
    assert pay.json()["state"] == "unknown"
    wait_for(lambda: order_state(s, order) == "paid", timeout=10, what="order paid after the query")
    types = [e["type"] for e in events_of(s, order)]
    assert types.index("ledger.txn") < types.index("trade.unknown") < types.index("trade.succeeded")


def test_sweep_close_mode(services):
    """close_mode = sweep: expired orders close at the next multiple of sweep_interval."""
    s = services
    s.set_faults({"order_service.close_mode": "sweep", "order_service.sweep_interval": "30s",
                  "order_service.order_ttl": "10s"})
    order = new_order(s)["order"]
    wait_for(lambda: order_state(s, order) == "closed", timeout=10, what="sweep closed the order")
    created, closed = [e for e in events_of(s, order) if e["type"] in ("order.created", "order.closed")]
    # Not at its own expiry but at the sweep after it (multiples of 30 s); a loaded machine may make
    # that sweep late, never early.
    boundary = math.ceil(created["expires_at"] / 30) * 30
    assert boundary - 1 <= closed["t"] <= boundary + 30 + 10, (created["expires_at"], closed["t"])


BNPL = {"merchant.ship_time": "0s", "merchant.delivery_time": "20s", "merchant.bnpl_finish_delay": "20s", "merchant.bnpl_finish_failure": 0.0,
        "bnpl.sync_lag": "10s", "bnpl.deduction_failure": 0.0}


def _merchant_credits(s, order: str) -> dict[str, int]:
    """What the order's own ledger movements credited to merchant accounts (the shared services' merchant
    ``m1`` is every order's merchant: its balance mixes every test's orders)."""
    out: dict[str, int] = {}
    for e in events_of(s, order):
        if e["type"] == "ledger.txn":
            for p in e["postings"]:
                if p["account"].startswith("merchant:"):
                    out[p["account"]] = out.get(p["account"], 0) + p["amount"]
    return out


def test_bnpl_pay_after_use_settles(services):
    """Authorize -> paid -> delivered -> merchant finish -> deduction -> credit side synced -> settled."""
    s = services
    s.set_faults(BNPL)
    buyer = uid("b")
    order = new_order(s, amount=5000, method="bnpl", user=buyer, merchant="m1")["order"]
    auth = start_payment(s, order)
    assert auth["state"] == "authorized"
    agreement = auth["agreement"]
    wait_for(lambda: http.get(f"{s.provider_url}/bnpl/agreements/{agreement}").json()["state"] == "settled",
             timeout=10, what="agreement settled")
    wait_for(lambda: order_state(s, order) == "completed", timeout=5, what="order completed")
    types = [e["type"] for e in events_of(s, order)]
    for t in ("bnpl.authorized", "order.paid", "order.delivered", "bnpl.finish_sent", "bnpl.finish_requested",
              "bnpl.deduction", "bnpl.synced", "bnpl.settled", "order.completed"):
        assert t in types, t
    assert balance(s, f"user:{buyer}") == -5000 and _merchant_credits(s, order) == {"merchant:m1": 5000}


def test_bnpl_credit_limit_and_compensation(services):
    """Over the credit limit: declined. Deductions that keep failing: the merchant is compensated and the
    buyer marked overdue; a later repayment clears the mark once the credit side syncs."""
    s = services
    s.set_faults({**BNPL, "bnpl.deduction_failure": 1.0, "bnpl.compensation_after": "60s",
                  "bnpl.user_repay_delay": "100s", "bnpl.credit_limit": 100.0})
    buyer = uid("b")
    big = new_order(s, amount=20000, method="bnpl", user=buyer)["order"]
    assert start_payment(s, big)["state"] == "declined"
    order = new_order(s, amount=5000, method="bnpl", user=buyer)["order"]
    agreement = start_payment(s, order)["agreement"]
    get = lambda: http.get(f"{s.provider_url}/bnpl/agreements/{agreement}").json()  # noqa: E731
    wait_for(lambda: get()["state"] == "overdue", timeout=10, what="overdue after compensation")
    wait_for(lambda: get()["state"] == "settled", timeout=10, what="settled after repayment")
    types = [e["type"] for e in events_of(s, order)]
    assert types.index("bnpl.compensated") < types.index("bnpl.overdue") < types.index("bnpl.repaid")
    assert "bnpl.overdue_cleared" in types
    kinds = [e["kind"] for e in events_of(s, order) if e["type"] == "ledger.txn"]
    assert kinds == ["bnpl_compensation", "bnpl_repayment"]  # the merchant was paid once, by compensation
    assert _merchant_credits(s, order) == {"merchant:m1": 5000} and balance(s, f"user:{buyer}") == -5000


def test_risk_control_hold_releases_the_debit_later(services):
    """A held debit outlives the gateway's timeout: 'unknown', then released, found by a query, paid."""
    s = services
    s.set_faults({"bank.risk_hold_probability": 1.0, "bank.risk_hold_duration": "40s", "gateway.timeout": "6s",
                  "gateway.bank_query_schedule": ["30s", "30s", "30s"]})
    order = new_order(s)["order"]
    assert http.post(start_payment(s, order)["pay_url"]).json()["state"] == "unknown"
    wait_for(lambda: order_state(s, order) == "paid", timeout=10, what="order paid after the hold")
    types = [e["type"] for e in events_of(s, order)]
    assert types.index("trade.unknown") < types.index("ledger.txn") < types.index("trade.succeeded")
