"""After-sales live (seed 003, ``sim.domain.after_sales``): ``POST /orders/{id}/after-sales`` is routed by
the order's state — a paid, unshipped order goes to its merchant, who may cancel and refund it; a shipped
one is refunded only for a defect; a completed one gets a complaint and no money moves. The answer comes
``answer_time`` later, and the shipment does not wait for it: a merchant that answers on the state it
read at request time (``cancel_check = "at_request"``) refunds goods that have already left, which the
checker finds in the history (end state ``refunded_and_shipped``); one that reads the order when it
answers refuses instead."""

from __future__ import annotations

from sim.check import CheckConfig, check_events

from .helpers import events_of, http, new_order, order_state, start_payment, wait_for

QUICK = {"merchant.ship_time": "1m", "merchant.delivery_time": "1h", "gateway.refund_latency": "0s"}


def _merchant(name: str = "m1", share: float = 1.0, **profile) -> dict:
    return {"name": name, "share": share, **profile}


def _paid(s, merchant: str = "m1", method: str = "wallet") -> str:
    order = new_order(s, amount=4100, method=method, merchant=merchant)["order"]
    assert http.post(start_payment(s, order)["pay_url"]).json()["state"] == "succeeded"
    wait_for(lambda: order_state(s, order) == "paid", timeout=10, what="the payment notification")
    return order


def _ask(s, order: str) -> dict:
    r = http.post(f"{s.checkout_url}/orders/{order}/after-sales")
    assert r.status_code == 202, r.text
    return r.json()


def _answer(s, order: str) -> dict:
    return wait_for(lambda: next((e for e in events_of(s, order) if e["type"] in ("after_sales.accepted",
                                                                               "after_sales.refused")), None),
                    timeout=15, what="the after-sales answer")


def _end_states(s, order: str) -> dict:
    now = s.admin("checkout", "GET", "/admin/stats").json()["now"]
    return check_events((e for e in s.history() if e.get("order") == order), CheckConfig(end=now)).end_states


def test_a_cancel_that_races_the_shipment_is_refunded_and_shipped_on_a_stale_check(start):
    """Asked while paid, answered 2 min later, shipped after 1 min: checked at request time the merchant
    accepts (it read 'paid'), and the order is refunded although it shipped."""
    s = start({**QUICK, "merchant.population": [_merchant(answer_time="2m", cancel_check="at_request")]})
    order = _paid(s)
    assert _ask(s, order) == {"order": order, "route": "ask_merchant", "state": "paid", "answer": "pending"}
    ans = _answer(s, order)
    assert ans["type"] == "after_sales.accepted" and ans["checked"] == "paid" and ans["state"] == "shipped"
    assert ans["shipped"] is True
    wait_for(lambda: order_state(s, order) == "refunded", timeout=10, what="the refund")
    types = [e["type"] for e in events_of(s, order)]
    assert types.index("order.shipped") < types.index("after_sales.accepted") < types.index("order.refunded")
    assert "order.delivered" not in types  # the refunded order is not delivered
    assert _end_states(s, order) == {"refunded_and_shipped": 1}


def test_the_same_race_checked_at_the_answer_is_refused(start):
    s = start({**QUICK, "merchant.population": [_merchant(answer_time="2m", cancel_check="at_answer")]})
    order = _paid(s)
    _ask(s, order)
    ans = _answer(s, order)
    assert ans["type"] == "after_sales.refused" and ans["reason"] == "refused_shipped" and ans["checked"] == "shipped"
    assert order_state(s, order) == "shipped"
    assert not [e for e in events_of(s, order) if e["type"].startswith("order.refund")]


def test_routes_by_state_defects_and_complaints(start):
    """An unshipped cancel answered before the shipment is refunded and never ships; a shipped order is
    refunded for a defect (m1: every item defective) and refused without one (m2); a completed order gets
    a complaint; a BNPL order is not taken."""
    s = start({**QUICK, "merchant.ship_time": "10s", "merchant.delivery_time": "20s", "merchant.population": [
        _merchant("m1", 0.5, answer_time="1s", defect_rate=1.0), _merchant("m2", 0.5, answer_time="1s")]})
    # answered before it ships: accepted, refunded, never shipped
    s.set_faults({"merchant.ship_time": "10m"})
    early = _paid(s)
    _ask(s, early)
    assert _answer(s, early)["type"] == "after_sales.accepted"
    wait_for(lambda: order_state(s, early) == "refunded", timeout=10, what="the refund")
    s.set_faults({})
    shipped = {m: _paid(s, merchant=m) for m in ("m1", "m2")}
    for order in shipped.values():
        wait_for(lambda o=order: order_state(s, o) == "shipped", timeout=10, what="shipped")
        assert _ask(s, order)["route"] == "defect_only"
    defect, fine = _answer(s, shipped["m1"]), _answer(s, shipped["m2"])
    assert defect["type"] == "after_sales.accepted" and defect["route"] == "defect_only"
    assert fine["type"] == "after_sales.refused" and fine["reason"] == "refused_no_defect"
    wait_for(lambda: order_state(s, shipped["m1"]) == "refunded", timeout=10, what="the defect refund")
    wait_for(lambda: order_state(s, shipped["m2"]) == "completed", timeout=10, what="the other one completed")
    done = _ask(s, shipped["m2"])
    assert done["route"] == "complaint" and done["answer"] == "nothing"
    assert "user.complaint" in [e["type"] for e in events_of(s, shipped["m2"])]
    assert order_state(s, shipped["m2"]) == "completed"  # a complaint moves no money
    bnpl = new_order(s, amount=900, method="bnpl")["order"]
    r = http.post(f"{s.checkout_url}/orders/{bnpl}/after-sales")
    assert r.status_code == 409 and r.json()["code"] == "AFTER_SALES_NOT_SUPPORTED", r.text
    assert http.post(f"{s.checkout_url}/orders/no-such-order/after-sales").status_code == 404
    assert s.admin("provider", "GET", "/admin/ledger").json()["balanced"]
